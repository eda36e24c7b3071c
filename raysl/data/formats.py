"""Array-shaped image formats: IDX (MNIST, Fashion-MNIST), .npz/.npy, CIFAR-10/100.

Each loader takes a :class:`~raysl.data.storage.Store` and a path (local or URI) and returns
:class:`Arrays`, read whole. These files hold already-decoded pixels, so a bad one is a
:class:`DataError` naming the file and what was expected, not a skipped image.

IDX, .npz and .npy can also be opened as :class:`ArraySlices`: their headers read and checked,
their rows then read in order a slice at a time (``idx_slices``, ``npy_slices``,
``npz_slices``). The readers use them to size an array before reading it whole, ``raysl
shards`` to convert an array too large for that with memory bounded by a slice. CIFAR has no
sliced form: its format bounds a split at 150 MB.

A file's header says how big its array is; nothing is allocated on its word alone. A gzipped
IDX file is decompressed only up to the size its header gives (and one byte more, to tell a
file that runs on), an ``.npz`` member must be stored or deflated (zipfile inflates bzip2 and
LZMA members without a bound) and a ``.npy`` array (alone or in an ``.npz``) must fit in the
bytes that follow its header, so what a file inflates is what its header declares, which the
readers hold to ``data.source.max_array_bytes`` before reading a row. A CIFAR pickle (256 MiB
at most) is walked before it is unpickled (every length inside the file, memo slots in order)
and may build only plain numeric arrays over the bytes it holds: a small hostile file cannot
make raysl allocate gigabytes. Read a slice at a time, no more than a slice is allocated, and
a file that ends before its header's rows (or, IDX, goes on after them) is a DataError when
its reading gets there.

The shard readers (tar, parquet) take their bounds from here too: :func:`encoded_bound`, the
most bytes an encoded image within ``data.max_image_pixels`` takes, and :func:`sample_label`,
a label's class index or the reason it is a bad sample.
"""

from __future__ import annotations

import contextlib
import io
import math
import operator
import pickle
import pickletools
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raysl.config import DataConfig
from raysl.data.storage import Store
from raysl.errors import DataError

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]


@dataclass
class Arrays:
    """Images (N, H, W[, C]) uint8, labels (N,) or None, class names, one-line description."""

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str]
    description: str


# ---------------------------------------------------------------------------------------------
# Shards (tar, parquet): what one member or cell may hold, and what its label means
# ---------------------------------------------------------------------------------------------

BYTES_PER_PIXEL = 8  # the most an image file Pillow decodes stores a pixel: 16-bit RGBA, raw
ENCODED_SLACK = 2**20  # headers and metadata beside the pixels (EXIF, ICC profile, text)
MAX_LABEL_BYTES = 2**16  # a label member or cell: a class name or an integer, never this long
BAD_LABEL = "\x00"  # stands for a label that cannot be text (too long, not UTF-8, not JSON)


def encoded_bound(max_pixels: int) -> int:
    """The most bytes an encoded image of at most ``max_pixels`` pixels takes: 8 per pixel + 1 MiB.

    A shard member or cell above it cannot be an image that ``data.max_image_pixels`` lets
    through, so the readers skip it (``too_large``) before reading or inflating it.
    """
    return BYTES_PER_PIXEL * max_pixels + ENCODED_SLACK


# At the default data.max_image_pixels (100 M): 801 MB.
MAX_ENCODED_BYTES = encoded_bound(DataConfig.max_image_pixels)
_DIGITS = re.compile(r"[0-9]+")


def sample_label(text: str | None, index: Mapping[str, int]) -> int | str:
    """A sample's label text -> its class index, or why it has none ("no_label", "bad_label").

    ``index`` maps the source's class names to their indices (``labels_of`` names integer
    labels by their decimal text). A label is good if it names a class or, failing that, is a
    class index (``raysl shards`` and WebDataset write ``.cls`` so): malformed text, an unknown
    class, a negative or out-of-range integer is "bad_label", a missing label (None)
    "no_label". Text is stripped first.
    """
    if text is None:
        return "no_label"
    text = text.strip()
    if text in index:
        return index[text]
    if _DIGITS.fullmatch(text) and len(text) <= 18 and int(text) < len(index):
        return int(text)
    return "bad_label"


# ---------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------------------------

IDX_SPLITS = {"train": "train", "test": "t10k", "t10k": "t10k"}


def load_idx(store: Store, root: str, files: list[str], split: str, field_name: str) -> Arrays:
    """``<prefix>-images-idx3-ubyte[.gz]`` (+ labels) of ``split`` among ``files`` in ``root``."""
    img_file, lbl = _idx_files(root, files, split, field_name)
    images = parse_idx(store.read(img_file), img_file)
    labels = parse_idx(store.read(lbl), lbl) if lbl else None
    if labels is not None and len(labels) != len(images):
        raise DataError(f"{lbl}: {len(labels)} labels for {len(images)} images")
    n_classes = int(labels.max()) + 1 if labels is not None else 0
    classes = _class_names(_idx_names(root), n_classes)
    kind = "Fashion-MNIST" if _idx_names(root) else "IDX"
    return Arrays(images, labels, classes, f"{kind} {split} ({len(images)} images, {root})")


def idx_slices(store: Store, root: str, files: list[str], split: str,
               field_name: str) -> ArraySlices:
    """:func:`load_idx`'s images and labels, opened to be read a slice of rows at a time."""
    img_file, lbl = _idx_files(root, files, split, field_name)
    with contextlib.ExitStack() as stack:
        streams = []
        for name in (img_file, lbl) if lbl else (img_file,):
            read = _byte_reader(stack.enter_context(_open_file(store, name)).read, name)
            dims = tuple(_idx_dims(read, name))
            streams.append(RowStream(name, dims, np.dtype(np.uint8), read, exact=True))
        _check_image_header(streams[0].dtype, streams[0].shape, img_file)
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
    img_file = next((f for f in names if _base(f).startswith(f"{prefix}-images-idx3-ubyte")), None)
    if img_file is None:
        raise DataError(f"{field_name}.path={root!r}: no {prefix}-images-idx3-ubyte[.gz] file "
                        "there")
    lbl = next((f for f in names if _base(f).startswith(f"{prefix}-labels-idx1-ubyte")), "")
    return img_file, lbl


def _idx_names(root: str) -> list[str]:
    """The class names an IDX directory's name implies (Fashion-MNIST's), or none."""
    return FASHION_MNIST_CLASSES if "fashion" in root.lower() else []


def _class_names(named: list[str], n_classes: int) -> list[str]:
    """``named`` if it names ``n_classes`` classes, else their indices as names."""
    return named if len(named) == n_classes else [str(i) for i in range(n_classes)]


# read(n): the next bytes of a file, at most n; b"" only at its end.
ReadBytes = Callable[[int], bytes]
_GZIP_INPUT = 2**16  # compressed bytes handed to zlib at a time (and copied as its tail)


# The largest array a header may announce: far above any image set, far below what a
# corrupted or hostile 32-bit size field can claim (2^32 per dimension).
MAX_ARRAY_BYTES = 2**40


def parse_idx(data: bytes, name: str) -> np.ndarray:
    """IDX bytes (optionally gzipped) of unsigned bytes -> an array of the header's shape.

    Gzipped data is decompressed in steps: the magic number, the dimensions, then at most one
    byte more than they announce (to tell a file with extra data), never the whole stream
    first.
    """
    read = _byte_reader(io.BytesIO(data).read, name, chunk=len(data))  # one piece, as held
    dims = _idx_dims(read, name)
    expected = math.prod(dims)
    body = _read_exactly(read, expected + 1)
    if len(body) != expected:
        has = f"{len(body)}" if len(body) <= expected else "more"
        raise DataError(f"{name}: header says {dims} ({expected} bytes), file has {has}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _idx_dims(read: ReadBytes, name: str) -> list[int]:
    """The dimensions in the IDX header ``read`` starts with (checked: uint8, at most 2^40)."""
    head = _read_exactly(read, 4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
        raise DataError(f"{name}: not an IDX file of unsigned bytes (magic {head[:4]!r})")
    ndim = head[3]
    raw_dims = _read_exactly(read, 4 * ndim)
    dims = [int.from_bytes(raw_dims[4 * i: 4 * i + 4], "big") for i in range(ndim)]
    expected = math.prod(dims)
    if expected > MAX_ARRAY_BYTES:
        raise DataError(f"{name}: header says {dims} ({expected} bytes), more than the "
                        f"{MAX_ARRAY_BYTES} bytes an image file may hold")
    return dims


def _read_exactly(read: ReadBytes, n: int) -> bytes:
    """``n`` bytes of ``read`` (fewer only at the end), gathered as they arrive."""
    parts, got = [], 0
    while got < n and (chunk := read(n - got)):
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _byte_reader(raw: ReadBytes, name: str, chunk: int = _GZIP_INPUT) -> ReadBytes:
    """``read(n)`` of the file ``raw`` reads, gunzipped as it goes (``chunk`` in at a time)."""
    head = _read_exactly(raw, 2)

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


# ---------------------------------------------------------------------------------------------
# .npz / .npy
# ---------------------------------------------------------------------------------------------

_NPZ_IMAGE_KEYS = ("images", "image", "x", "x_train", "data")
_NPZ_LABEL_KEYS = ("labels", "label", "y", "y_train", "targets")


def load_npz(store: Store, path: str) -> Arrays:
    """Images under one of the usual keys (``images``, ``x``, ...) and optional labels."""
    data = store.read(path)
    _check_npz_headers(data, path)
    with _as_data_error(path), np.load(io.BytesIO(data), allow_pickle=False) as z:
        img_key, lbl_key = _npz_keys(list(z.keys()), path)
        images = z[img_key]
        labels = z[lbl_key] if lbl_key else None
    _check_image_header(images.dtype, images.shape, f"{path}[{img_key!r}]")
    if labels is not None:
        _check_label_header(labels.dtype, labels.shape, len(images), f"{path}[{lbl_key!r}]")
        _check_labels(labels, f"{path}[{lbl_key!r}]")
    names = [str(i) for i in range(int(labels.max()) + 1)] if labels is not None else []
    return Arrays(images, labels, names, f"{_base(path)} ({len(images)} images)")


def npz_slices(store: Store, path: str) -> ArraySlices:
    """:func:`load_npz`'s arrays, opened to be read a slice of rows at a time.

    The archive is read at random (its directory, then each member's start): an object
    store serves these as range requests.
    """
    try:
        with contextlib.ExitStack() as stack:
            archive = zipfile.ZipFile(stack.enter_context(_open_file(store, path)))
            stack.callback(archive.close)
            members = {i.filename.removesuffix(".npy"): i for i in archive.infolist()}
            streams = []
            for key in _npz_keys(list(members), path):
                if not key:
                    continue
                member_name = f"{path}[{members[key].filename!r}]"
                _check_codec(members[key], member_name)
                member = stack.enter_context(archive.open(members[key]))
                shape, dtype, fortran = _check_npy_header(member, members[key].file_size,
                                                          member_name)
                streams.append(RowStream(f"{path}[{key!r}]", shape, dtype, member.read,
                                         fortran=fortran))
            _check_image_header(streams[0].dtype, streams[0].shape, streams[0].name)
            labels = streams[1] if len(streams) > 1 else None
            if labels is not None:
                _check_label_header(labels.dtype, labels.shape, streams[0].shape[0], labels.name)
            return ArraySlices(streams[0], labels, [], stack.pop_all())
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, OSError,
            zlib.error) as e:
        raise DataError(f"{path}: not a readable .npz archive ({type(e).__name__}: "
                        f"{e})") from None


def _npz_keys(keys: list[str], path: str) -> tuple[str, str]:
    """(images key, labels key or "") among an archive's ``keys``."""
    img_key = next((k for k in _NPZ_IMAGE_KEYS if k in keys), None)
    if img_key is None:
        raise DataError(f"{path}: no image array; expected one of {list(_NPZ_IMAGE_KEYS)}, "
                        f"found {keys}")
    return img_key, next((k for k in _NPZ_LABEL_KEYS if k in keys), "")


def load_npy(store: Store, path: str) -> Arrays:
    """One unlabeled image array (N, H, W) or (N, H, W, C)."""
    data = store.read(path)
    _check_npy_header(io.BytesIO(data), len(data), path)
    with _as_data_error(path):
        images = np.load(io.BytesIO(data), allow_pickle=False)
    _check_image_header(images.dtype, images.shape, path)
    return Arrays(images, None, [], f"{_base(path)} ({len(images)} images)")


def npy_slices(store: Store, path: str) -> ArraySlices:
    """:func:`load_npy`'s array, opened to be read a slice of rows at a time."""
    with contextlib.ExitStack() as stack:
        stream = stack.enter_context(_open_file(store, path))
        shape, dtype, fortran = _check_npy_header(stream, stream.size(), path)
        _check_image_header(dtype, shape, path)
        return ArraySlices(RowStream(path, shape, dtype, stream.read, fortran=fortran), None, [],
                           stack.pop_all())


@contextlib.contextmanager
def _as_data_error(name: str) -> Iterator[None]:
    """NumPy's errors on a damaged array file, as a DataError naming the file."""
    try:
        yield
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{name}: not a readable array file ({type(e).__name__}: {e})") from None


def _check_npy_header(stream: Any, size: int, name: str
                      ) -> tuple[tuple[int, ...], np.dtype[Any], bool]:
    """(shape, dtype, Fortran order) of the ``.npy`` array in ``stream``, which must fit in it.

    ``size`` is the stream's bytes; it is left at the array's first byte. NumPy allocates the
    whole array its header describes before reading the data, so a 100-byte file announcing a
    terabyte would be a terabyte of allocation.
    """
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        shape, fortran, dtype = (fmt.read_array_header_1_0(stream) if version == (1, 0)
                                 else fmt.read_array_header_2_0(stream))
    except (ValueError, OSError) as e:
        raise DataError(f"{name}: not a .npy array ({e})") from None
    needed = math.prod(shape) * dtype.itemsize
    has = size - stream.tell()
    if needed > has:
        raise DataError(f"{name}: header says {dtype} {tuple(shape)} ({needed} bytes), the "
                        f"file holds {has}")
    return tuple(shape), dtype, bool(fortran)


def _check_npz_headers(data: bytes, name: str) -> None:
    """:func:`_check_npy_header` for every array of an ``.npz``, against the bytes it holds.

    The sizes a zip's directory gives are the archive's word: each member is inflated (1 MiB
    at a time, then dropped) to count the bytes it really holds before NumPy allocates.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                member_name = f"{name}[{info.filename!r}]"
                _check_codec(info, member_name)
                with archive.open(info) as member:
                    _check_npy_header(member, info.file_size, member_name)
                    needed = info.file_size - member.tell()
                    while needed > 0 and (chunk := member.read(min(needed, 2**20))):
                        needed -= len(chunk)
                if needed > 0:
                    raise DataError(f"{member_name}: holds {needed} bytes fewer than its "
                                    "header and the archive announce")
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, OSError,
            zlib.error) as e:
        raise DataError(f"{name}: not a readable .npz archive ({type(e).__name__}: "
                        f"{e})") from None


def _check_codec(info: zipfile.ZipInfo, name: str) -> None:
    """Refuse a member that is neither stored nor deflated.

    zipfile inflates a deflated member no further than a read asks, but a bzip2 or LZMA one
    without an output bound at every read: a few KiB of bzip2 can be gigabytes.
    """
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise DataError(f"{name}: compressed with zip method {info.compress_type} (bzip2 or "
                        "LZMA); only stored or deflated members are read, what np.savez and "
                        "np.savez_compressed write")


def _check_image_header(dtype: np.dtype[Any], shape: tuple[int, ...], name: str) -> None:
    if dtype != np.uint8 or len(shape) not in (3, 4) or (
            len(shape) == 4 and shape[-1] not in (1, 3, 4)):
        raise DataError(f"{name}: expected uint8 (N, H, W) or (N, H, W, C) with C in 1/3/4, got "
                        f"{dtype} {shape}")


def _check_label_header(dtype: np.dtype[Any], shape: tuple[int, ...], n: int, name: str) -> None:
    if shape != (n,) or not np.issubdtype(dtype, np.integer):
        raise DataError(f"{name}: expected ({n},) integer labels, got {dtype} {shape}")


def _check_labels(labels: np.ndarray, name: str) -> None:
    if len(labels) and labels.min() < 0:
        raise DataError(f"{name}: labels must be >= 0, found {labels.min()}")


# ---------------------------------------------------------------------------------------------
# Slices: an array read in order, a slice of rows at a time
# ---------------------------------------------------------------------------------------------


@dataclass
class RowStream:
    """The rows of one array file, read in order; its header is read and checked.

    Attributes:
        name: the file (``archive['key']`` in an ``.npz``), for errors.
        shape: the whole array's, (N, ...), as the header gives it.
        dtype: the array's element type.
        read: the next bytes of the array's data, at most ``n``.
        exact: the file must end with the last row (IDX; a ``.npy`` may carry more).
        fortran: the data is in Fortran order (a ``.npy`` NumPy saved so): not readable by rows.
        done: rows read so far.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    read: ReadBytes
    exact: bool = False
    fortran: bool = False
    done: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the whole array."""
        return math.prod(self.shape) * self.dtype.itemsize

    def rows(self, n: int) -> np.ndarray:
        """The next ``n`` rows (fewer at the end): only they are allocated.

        Raises:
            DataError: the data ends before the header's rows (or, ``exact``, goes on after),
                is damaged, or is in Fortran order.
        """
        if self.fortran and len(self.shape) > 1:
            raise DataError(f"{self.name}: a Fortran-ordered array cannot be read a slice of "
                            "rows at a time; save it C-ordered (np.ascontiguousarray)")
        n = min(n, self.shape[0] - self.done)
        row = math.prod(self.shape[1:]) * self.dtype.itemsize
        try:
            data = _read_exactly(self.read, n * row)
            last = self.done + n == self.shape[0]
            extra = self.exact and last and len(self.read(1)) > 0
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:
            raise DataError(f"{self.name}: not a readable array file ({type(e).__name__}: "
                            f"{e})") from None
        if len(data) < n * row or extra:
            has = "more" if extra else self.done * row + len(data)
            raise DataError(f"{self.name}: header says {self.dtype} {self.shape} "
                            f"({self.nbytes} bytes), file has {has}")
        self.done += n
        return np.frombuffer(data, self.dtype).reshape(n, *self.shape[1:])


@dataclass
class ArraySlices:
    """An array source (images, optional labels) read in order, a slice of rows at a time.

    Opened by :func:`idx_slices`, :func:`npy_slices` or :func:`npz_slices`: the headers are
    read and checked, no row yet. Close it (or use it as a context manager) when done.

    Attributes:
        images: (N, H, W[, C]) uint8.
        labels: (N,) integers, or None.
        named: class names the source gives (Fashion-MNIST's), used if there are as many
            classes.
        files: the open files.
        top_label: the largest label read so far (-1: none yet).
    """

    images: RowStream
    labels: RowStream | None
    named: list[str]
    files: contextlib.ExitStack = field(repr=False)
    top_label: int = -1

    @property
    def nbytes(self) -> int:
        """Bytes of the whole source, read whole: images and labels."""
        return self.images.nbytes + (self.labels.nbytes if self.labels is not None else 0)

    @property
    def class_names(self) -> list[str]:
        """Label index -> name, for the labels read so far (all of them, once read)."""
        return _class_names(self.named, self.top_label + 1) if self.labels is not None else []

    def describe(self) -> str:
        """What the source holds, e.g. ``uint8 images (60000, 28, 28) and their labels``."""
        labels = " and their labels" if self.labels is not None else ""
        return f"{self.images.dtype} images {self.images.shape}{labels}"

    def read(self, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(images, labels or None) of the next ``rows`` rows, then the next, to the end."""
        while self.images.done < self.images.shape[0]:
            images, labels = self.images.rows(rows), None
            if self.labels is not None:
                labels = self.labels.rows(rows)
                _check_labels(labels, self.labels.name)
                self.top_label = max(self.top_label, int(labels.max()) if len(labels) else -1)
            yield images, labels

    def close(self) -> None:
        """Close the files."""
        self.files.close()

    def __enter__(self) -> ArraySlices:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (torchvision's python folders, read from disk, never downloaded)
# ---------------------------------------------------------------------------------------------

CIFAR_LAYOUTS = {
    # folder name: (train files, test files, meta file, label key, class-names key)
    "cifar-10-batches-py": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                            "batches.meta", b"labels", b"label_names"),
    "cifar-100-python": (["train"], ["test"], "meta", b"fine_labels", b"fine_label_names"),
}


def cifar_folder(files: list[str], root: str) -> tuple[str, str] | None:
    """(folder, layout name) of the CIFAR python folder at or right below ``root``, if any."""
    for name, (train, _, meta, _, _) in CIFAR_LAYOUTS.items():
        for folder in (root.rstrip("/"), f"{root.rstrip('/')}/{name}"):
            present = {f[len(folder) + 1:] for f in files if f.startswith(folder + "/")}
            if meta in present and train[0] in present:
                return folder, name
    return None


def load_cifar(store: Store, folder: str, layout: str, split: str, field_name: str) -> Arrays:
    """CIFAR-10/100 batches of ``split`` ("train" or "test") as (N, 32, 32, 3) + labels.

    The batches are Python pickles; they are read with an unpickler that only builds the
    NumPy arrays, lists and dicts they contain, so a tampered file cannot run code, and no
    more than a few times its size (:func:`_unpickle`). A label that is negative or names no
    class of the meta file is a DataError: array sources are read whole, not skipped by row.
    """
    train, test, meta, label_key, names_key = CIFAR_LAYOUTS[layout]
    if split not in ("train", "test"):
        raise DataError(f"{field_name}.split={split!r}: CIFAR splits are 'train' and 'test'")
    images, labels = [], []
    for name in train if split == "train" else test:
        batch = _unpickle(store, f"{folder}/{name}")
        try:
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[label_key], dtype=np.int64).reshape(-1))
        except (KeyError, ValueError, TypeError, OverflowError) as e:
            raise DataError(f"{folder}/{name}: not a {layout} batch ({type(e).__name__}: "
                            f"{e})") from None
        if len(labels[-1]) != len(images[-1]):
            raise DataError(f"{folder}/{name}: {len(labels[-1])} labels for "
                            f"{len(images[-1])} images")
    try:
        classes = [n.decode() for n in
                   _unpickle(store, f"{folder}/{meta}").get(names_key, [])]
    except (AttributeError, TypeError, UnicodeDecodeError) as e:
        raise DataError(f"{folder}/{meta}: class names are not a list of byte strings "
                        f"({e})") from None
    x, y = np.concatenate(images), np.concatenate(labels)
    top = int(y.max()) if len(y) else -1
    if len(y) and y.min() < 0:
        raise DataError(f"{folder}: label {y.min()} is negative")
    if classes and top >= len(classes):
        raise DataError(f"{folder}: label {top} is not one of the {len(classes)} classes of "
                        f"{folder}/{meta}")
    return Arrays(x, y, classes or [str(i) for i in range(top + 1)],
                  f"{layout.split('-')[0].upper()}-{layout.split('-')[1]} {split} "
                  f"({len(x)} images, {folder})")


# What a CIFAR batch pickle may name (NumPy 1 and 2 module names); find_class hands out a
# checked stand-in for each NumPy name and for the codec, never the real callable.
_PICKLE_ALLOWED = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"), ("builtins", "object"),
    ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2 (re-saved batches)
})
# CIFAR-100's train batch, the largest, has 200,000 opcodes (500,000 re-saved at protocol 2 by
# Python 3); each builds at most ~100 bytes of objects (not a set: 216 for one byte, refused).
_MAX_PICKLE_OPS = 2**20
_MAX_CIFAR_BYTES = 2**28  # a batch file is read whole: at most this
_UNUSED_OPS = ("EMPTY_SET", "ADDITEMS", "FROZENSET")
_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")


def _opcode_table() -> list[tuple[str, int, int] | None]:
    """Per opcode byte: (name, how its argument is sized, n), for :func:`_walk_pickle`.

    0: n bytes; 1: an n-byte little-endian length, then that many bytes; 2: n lines.
    """
    table: list[tuple[str, int, int] | None] = [None] * 256
    widths = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
              pickletools.TAKEN_FROM_ARGUMENT4U: 4, pickletools.TAKEN_FROM_ARGUMENT8U: 8}
    for op in pickletools.opcodes:
        arg = op.arg
        if op.name in _UNUSED_OPS:
            continue
        if arg is None or arg.n >= 0:
            spec = (0, arg.n if arg is not None else 0)
        elif arg.n == pickletools.UP_TO_NEWLINE:  # GLOBAL and INST take two lines
            spec = (2, 2 if arg.name == "stringnl_noescape_pair" else 1)
        else:  # a signed length read unsigned: a negative one is too large for the file
            spec = (1, widths[arg.n])
        table[ord(op.code)] = (op.name, *spec)
    return table


_OPCODES = _opcode_table()


def _walk_pickle(data: bytes) -> None:
    """Check a pickle's opcodes before the C unpickler runs them.

    The unpickler allocates a ``BINBYTES`` object at the size its prefix gives before reading
    it, and grows its memo table to any index a ``LONG_BINPUT`` names (zero-filled): a
    10-byte pickle can cost gigabytes. Here every length must lie inside the file, memo slots
    are numbered in order as picklers number them, and the opcodes are at most
    :data:`_MAX_PICKLE_OPS` and no set's (so the objects they build, beyond the bytes and
    text the file holds, take at most about 100 MB).

    Raises:
        pickle.UnpicklingError: naming the opcode and its byte offset.
    """
    pos, puts, end = 0, 0, len(data)
    for _ in range(_MAX_PICKLE_OPS):
        spec = _OPCODES[data[pos]] if pos < end else None
        if spec is None:
            raise pickle.UnpicklingError(
                f"opcode {data[pos]:#04x} at byte {pos} is not one a CIFAR batch uses"
                if pos < end else "the pickle ends without a STOP opcode")
        name, kind, n = spec
        at, pos = pos, pos + 1
        if kind == 0:
            size = n
        elif kind == 1:
            size = int.from_bytes(data[pos: pos + n], "little")
            pos += n
        else:
            line = pos
            for _ in range(n):
                line = data.find(b"\n", line) + 1 or end + 1
            size = line - pos
        if pos + size > end:
            raise pickle.UnpicklingError(f"{name} at byte {at} claims {size} bytes, the file "
                                         f"has {end - pos} after it")
        if name in _PUTS:
            raw = data[pos: pos + size]
            slot = int(raw) if name == "PUT" else int.from_bytes(raw, "little")
            if slot > puts:
                raise pickle.UnpicklingError(f"{name} at byte {at} stores memo slot {slot} "
                                             f"after {puts} slots")
            puts += 1
        elif name == "MEMOIZE":
            puts += 1
        elif name == "STOP":
            return
        pos += size
    raise pickle.UnpicklingError(f"more than {_MAX_PICKLE_OPS} opcodes, no CIFAR batch has "
                                 "that many")


def _plain_dtype(spec: Any, order: str = "=") -> np.dtype[Any]:
    """The numeric dtype ``spec`` names; object, structured, sub-array and text are refused.

    An object array's data is pointers, which a pickle's bytes must never become; a structured
    or sub-array dtype's layout is the pickle's word.
    """
    if isinstance(spec, _DtypeToken):
        spec, order = spec.spec, spec.order
    if isinstance(spec, bytes):
        spec = spec.decode("latin-1")
    try:
        dtype = np.dtype(spec) if isinstance(spec, str) else None
    except TypeError:
        dtype = None
    if (dtype is None or dtype.kind not in "biufc" or dtype.names is not None
            or dtype.subdtype is not None or dtype.hasobject):
        raise pickle.UnpicklingError(f"dtype {spec!r}: only plain numeric arrays are read")
    if order in ("<", ">"):
        return dtype.newbyteorder("<" if order == "<" else ">")
    return dtype


def _dims(shape: Any) -> tuple[int, ...]:
    """A pickled shape as non-negative ints (a numpy scalar dimension must not wrap around)."""
    try:
        dims = (operator.index(shape),) if not isinstance(shape, tuple | list) else \
            tuple(operator.index(d) for d in shape)
    except TypeError:
        raise pickle.UnpicklingError(f"an array shape of {shape!r}") from None
    if len(dims) > 32 or any(d < 0 for d in dims):
        raise pickle.UnpicklingError(f"an array shape of {dims}")
    return dims


class _NdarrayToken:
    """What the CIFAR unpickler hands out for ``numpy.ndarray`` (calling it builds nothing)."""

    def __init__(self, *_: Any) -> None:
        raise pickle.UnpicklingError("numpy.ndarray may only be rebuilt by _reconstruct")


class _DtypeToken:
    """What the CIFAR unpickler hands out for ``numpy.dtype``: its spec and byte order, checked.

    ``numpy.dtype.__setstate__`` would take the pickle's fields, sub-array and item size;
    this takes only the byte order and refuses a state that has any of the others.
    """

    spec: Any = None
    order = "="

    def __init__(self, spec: Any = None, *_: Any) -> None:
        self.spec = spec
        _plain_dtype(spec)

    def __setstate__(self, state: Any) -> None:
        # (version, byte order, sub-array, names, fields, item size, alignment, flags[, meta]);
        # a Python 2 pickle's byte order is bytes (read with encoding="bytes")
        order = state[1] if isinstance(state, tuple) and len(state) >= 5 else None
        order = order.decode("latin-1") if isinstance(order, bytes) else order
        if order not in ("<", ">", "|", "=") or state[2:5] != (None, None, None):
            raise pickle.UnpicklingError("a structured or sub-array dtype")
        self.order = order


class _PendingArray:
    """What ``_reconstruct`` returns: no array yet, until its state brings the data.

    ``__setstate__`` (the pickle's BUILD) checks the state's dtype and that its shape needs
    exactly the bytes it brings, then makes the array over those bytes: nothing is allocated
    on a shape's word, and an array can only be as large as bytes already in memory.
    """

    array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # (version, shape, dtype, Fortran order, data), or without the version
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("an array state that is not (shape, dtype, order, data)")
        shape, spec, fortran, data = state[-4:]
        dims, dtype = _dims(shape), _plain_dtype(spec)
        if not isinstance(data, bytes):
            raise pickle.UnpicklingError(f"array data as {type(data).__name__}, not bytes")
        if math.prod(dims) * dtype.itemsize != len(data):
            raise pickle.UnpicklingError(f"an array of {dtype} {dims} needs "
                                         f"{math.prod(dims) * dtype.itemsize} bytes, its data "
                                         f"has {len(data)}")
        self.array = np.frombuffer(data, dtype).reshape(dims, order="F" if fortran else "C")


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Builds only :data:`_PICKLE_ALLOWED`, through checked stand-ins, within the file's size.

    An array is ``_reconstruct(ndarray, shape, dtype)`` (here a :class:`_PendingArray`) given
    its state by BUILD; ``_codecs.encode`` is latin-1 only (how protocol 2 stores bytes) and
    may make at most the file's size of bytes in all; ``scalar`` reads one plain value.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.limit = len(data)
        self.encoded = 0  # bytes made by _codecs.encode so far

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        stand_ins = {"ndarray": _NdarrayToken, "dtype": _DtypeToken,
                     "_reconstruct": self._reconstruct, "scalar": _scalar,
                     "encode": self._latin1}
        return stand_ins.get(name) or super().find_class(module, name)

    def _reconstruct(self, cls: Any, shape: Any, spec: Any) -> _PendingArray:
        if cls is not _NdarrayToken:
            raise pickle.UnpicklingError(f"_reconstruct of {cls!r}, not of numpy.ndarray")
        dims, dtype = _dims(shape), _plain_dtype(spec)
        if math.prod(dims) * dtype.itemsize > self.limit:
            raise pickle.UnpicklingError(f"an array of shape {dims} is larger than the "
                                         f"{self.limit}-byte file")
        return _PendingArray()

    def _latin1(self, text: Any, encoding: Any = "utf-8", *_: Any) -> bytes:
        if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
            raise pickle.UnpicklingError(f"_codecs.encode of a {type(text).__name__} to "
                                         f"{encoding!r}: only text to 'latin1' is read")
        self.encoded += len(text)
        if self.encoded > self.limit:
            raise pickle.UnpicklingError(f"_codecs.encode made more bytes than the "
                                         f"{self.limit}-byte file")
        return text.encode("latin-1")


def _scalar(spec: Any, data: Any = None) -> Any:
    """``numpy.core.multiarray.scalar``: one plain value from exactly its bytes."""
    dtype = _plain_dtype(spec)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError(f"a {dtype} scalar from {type(data).__name__} data")
    return np.frombuffer(data, dtype)[0]


def _unpickle(store: Store, path: str) -> dict[bytes, Any]:
    """A CIFAR pickle's dict, its arrays built (:func:`_walk_pickle`, :class:`_PendingArray`).

    Raises:
        DataError: missing, larger than any CIFAR batch, refused, or not a dict.
    """
    try:
        with _open_file(store, path) as f:
            if f.size() > _MAX_CIFAR_BYTES:
                raise DataError(f"{path}: {f.size()} bytes, larger than any CIFAR batch "
                                f"(CIFAR-100's train split, the largest, is 155 MB)")
            data = bytes(f.read())
    except FileNotFoundError:
        raise DataError(f"{path}: missing from the CIFAR folder") from None
    try:
        _walk_pickle(data)
        out = _ArraysOnlyUnpickler(data).load()
    except Exception as e:
        raise DataError(f"{path}: not a CIFAR python batch ({e})") from None
    if not isinstance(out, dict):
        raise DataError(f"{path}: not a CIFAR python batch (a {type(out).__name__})")
    values = {(k.encode() if isinstance(k, str) else k): v for k, v in out.items()}
    for k, v in values.items():
        if isinstance(v, _PendingArray):
            if v.array is None:
                raise DataError(f"{path}: not a CIFAR python batch (array {k!r} has no data)")
            values[k] = v.array
    return values


def _open_file(store: Store, path: str) -> Any:
    """The file's bytes as stored, seekable (an object store's reads are range requests)."""
    fs, inner = store.resolve(path)
    return fs.open_input_file(inner)


def _base(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]
