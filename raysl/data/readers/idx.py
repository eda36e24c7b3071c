"""IDX files (MNIST, Fashion-MNIST): ``<split>-images-idx3-ubyte[.gz]`` and the labels beside.

Read whole (:func:`load_idx`) or opened to be read a slice of rows at a time
(:func:`idx_slices`). A header says how big its array is, and nothing is allocated on its word
alone: a gzipped file is decompressed only up to the size its header gives (and one byte more,
to tell a file that runs on), and a file that ends before its header's rows, or goes on after
them, is a DataError.
"""

from __future__ import annotations

import contextlib
import io
import math
import posixpath
import zlib

import numpy as np

from raysl.catalog import register
from raysl.config import SourceConfig
from raysl.data.readers.arrays import (
    ArrayReader,
    ArraySlices,
    ReadBytes,
    RowStream,
    base_name,
    check_image_header,
    class_names_of,
    open_file,
    read_exactly,
)
from raysl.data.readers.base import Arrays, Target
from raysl.data.storage import Store
from raysl.errors import DataError

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
IDX_SPLITS = {"train": "train", "test": "t10k", "t10k": "t10k"}
# The largest array a header may announce: far above any image set, far below what a
# corrupted or hostile 32-bit size field can claim (2^32 per dimension).
MAX_ARRAY_BYTES = 2**40
_GZIP_INPUT = 2**16  # compressed bytes handed to zlib at a time (and copied as its tail)


@register("reader", "idx")
class IDX(ArrayReader):
    """A directory of IDX files; ``data.source.split`` picks ``train`` or ``t10k``."""

    name = "idx"
    summary = "IDX files (MNIST, Fashion-MNIST) in a directory; split train or t10k"
    reads = "dir"
    detect_order = 10

    @classmethod
    def detect(cls, target: Target, store: Store) -> bool:
        """A directory holding ``*-images-idx3-ubyte*``."""
        return target.kind == "dir" and any("-images-idx3-ubyte" in n for n in target.top_names)

    def slices(self, cfg: SourceConfig, target: Target, store: Store,
               field_name: str) -> ArraySlices:
        """Images and labels of the split, opened to be read a slice at a time."""
        return idx_slices(store, cfg.path, _top(target), cfg.split, field_name)

    def read_whole(self, cfg: SourceConfig, target: Target, store: Store,
                   field_name: str) -> Arrays:
        """Images and labels of the split, read whole."""
        return load_idx(store, cfg.path, _top(target), cfg.split, field_name)


def _top(target: Target) -> list[str]:
    """The files and folders directly in the directory."""
    return [posixpath.join(target.path.rstrip("/"), n) for n in target.top_names]


def load_idx(store: Store, root: str, files: list[str], split: str, field_name: str) -> Arrays:
    """``<prefix>-images-idx3-ubyte[.gz]`` (+ labels) of ``split`` among ``files`` in ``root``."""
    img_file, lbl = _idx_files(root, files, split, field_name)
    images = parse_idx(store.read(img_file), img_file)
    labels = parse_idx(store.read(lbl), lbl) if lbl else None
    if labels is not None and len(labels) != len(images):
        raise DataError(f"{lbl}: {len(labels)} labels for {len(images)} images")
    n_classes = int(labels.max()) + 1 if labels is not None else 0
    classes = class_names_of(_idx_names(root), n_classes)
    kind = "Fashion-MNIST" if _idx_names(root) else "IDX"
    return Arrays(images, labels, classes, f"{kind} {split} ({len(images)} images, {root})")


def idx_slices(store: Store, root: str, files: list[str], split: str,
               field_name: str) -> ArraySlices:
    """:func:`load_idx`'s images and labels, opened to be read a slice of rows at a time."""
    img_file, lbl = _idx_files(root, files, split, field_name)
    with contextlib.ExitStack() as stack:
        streams = []
        for name in (img_file, lbl) if lbl else (img_file,):
            read = _byte_reader(stack.enter_context(open_file(store, name)).read, name)
            dims = tuple(_idx_dims(read, name))
            streams.append(RowStream(name, dims, np.dtype(np.uint8), read, exact=True))
        check_image_header(streams[0].dtype, streams[0].shape, img_file)
        labels = streams[1] if lbl else None
        if labels is not None and labels.shape != (streams[0].shape[0],):
            raise DataError(f"{lbl}: {labels.shape[0] if labels.shape else 0} labels for "
                            f"{streams[0].shape[0]} images")
        return ArraySlices(streams[0], labels, _idx_names(root), stack.pop_all())


def _idx_files(root: str, files: list[str], split: str, field_name: str) -> tuple[str, str]:
    """(images file, labels file or "") of ``split`` among ``files``."""
    prefix = IDX_SPLITS.get(split)
    if prefix is None:
        raise DataError(f"{field_name}.split={split!r}: IDX splits are 'train' and 't10k' (or "
                        "'test')")
    names = sorted(files)
    img_file = next((f for f in names
                     if base_name(f).startswith(f"{prefix}-images-idx3-ubyte")), None)
    if img_file is None:
        raise DataError(f"{field_name}.path={root!r}: no {prefix}-images-idx3-ubyte[.gz] file "
                        "there")
    lbl = next((f for f in names if base_name(f).startswith(f"{prefix}-labels-idx1-ubyte")), "")
    return img_file, lbl


def _idx_names(root: str) -> list[str]:
    """The class names an IDX directory's name implies (Fashion-MNIST's), or none."""
    return FASHION_MNIST_CLASSES if "fashion" in root.lower() else []


def parse_idx(data: bytes, name: str) -> np.ndarray:
    """IDX bytes (optionally gzipped) of unsigned bytes -> an array of the header's shape.

    Gzipped data is decompressed in steps: the magic number, the dimensions, then at most one
    byte more than they announce (to tell a file with extra data), never the whole stream
    first.
    """
    read = _byte_reader(io.BytesIO(data).read, name, chunk=len(data))  # one piece, as held
    dims = _idx_dims(read, name)
    expected = math.prod(dims)
    body = read_exactly(read, expected + 1)
    if len(body) != expected:
        has = f"{len(body)}" if len(body) <= expected else "more"
        raise DataError(f"{name}: header says {dims} ({expected} bytes), file has {has}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _idx_dims(read: ReadBytes, name: str) -> list[int]:
    """The dimensions in the IDX header ``read`` starts with (checked: uint8, at most 2^40)."""
    head = read_exactly(read, 4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
        raise DataError(f"{name}: not an IDX file of unsigned bytes (magic {head[:4]!r})")
    ndim = head[3]
    raw_dims = read_exactly(read, 4 * ndim)
    dims = [int.from_bytes(raw_dims[4 * i: 4 * i + 4], "big") for i in range(ndim)]
    expected = math.prod(dims)
    if expected > MAX_ARRAY_BYTES:
        raise DataError(f"{name}: header says {dims} ({expected} bytes), more than the "
                        f"{MAX_ARRAY_BYTES} bytes an image file may hold")
    return dims


def _byte_reader(raw: ReadBytes, name: str, chunk: int = _GZIP_INPUT) -> ReadBytes:
    """``read(n)`` of the file ``raw`` reads, gunzipped as it goes (``chunk`` in at a time)."""
    head = read_exactly(raw, 2)

    def plain(n: int) -> bytes:
        nonlocal head
        if head:
            out, head = head[:n], head[n:]
            return out
        return raw(n)
    return _gunzip_reader(plain, name, chunk) if head == b"\x1f\x8b" else plain


def _gunzip_reader(raw: ReadBytes, name: str, chunk: int) -> ReadBytes:
    """``read(n)``: the next decompressed bytes of the gzip stream ``raw`` reads, at most ``n``.

    zlib is handed ``chunk`` bytes of input at a time and asked for ``n`` bytes of output at
    most, so a bomb is inflated no further than the reader asks.
    """
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    tail = b""

    def read(n: int) -> bytes:
        nonlocal tail
        while n > 0 and not inflate.eof:  # zlib reads a max_length of 0 as "no limit"
            more = tail or raw(chunk)
            try:
                out = inflate.decompress(more, n)
            except zlib.error as e:
                raise DataError(f"{name}: not a valid gzip file ({e})") from None
            tail = inflate.unconsumed_tail
            if out or not more:
                return out
        return b""
    return read

