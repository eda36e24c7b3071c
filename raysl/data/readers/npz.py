"""A ``.npz`` archive: images under a usual key (``images``, ``x``...) and optional labels.

Read whole (:func:`load_npz`) or opened to be read a slice of rows at a time
(:func:`npz_slices`). Every member must be stored or deflated (zipfile inflates bzip2 and LZMA
members without a bound) and hold a ``.npy`` array that fits in the bytes after its header
(:func:`~raysl.data.readers.npy.check_npy_header`), counted by inflating it, not taken from the
archive's directory: what an archive inflates is what its headers declare.
"""

from __future__ import annotations

import contextlib
import io
import zipfile
import zlib

import numpy as np

from raysl.catalog import register
from raysl.config import SourceConfig
from raysl.data.readers.arrays import (
    ArrayReader,
    ArraySlices,
    RowStream,
    base_name,
    check_image_header,
    check_label_header,
    check_labels,
    open_file,
)
from raysl.data.readers.base import Arrays, Target
from raysl.data.readers.npy import as_data_error, check_npy_header
from raysl.data.storage import Store
from raysl.errors import DataError

_NPZ_IMAGE_KEYS = ("images", "image", "x", "x_train", "data")
_NPZ_LABEL_KEYS = ("labels", "label", "y", "y_train", "targets")


@register("reader", "npz")
class NPZ(ArrayReader):
    """uint8 images (N, H, W[, C]) and integer labels (N,) in one archive."""

    name = "npz"
    summary = "a .npz of uint8 images (images/x/data...) and optional labels (labels/y...)"
    reads = "file"
    detect_order = 10

    @classmethod
    def detect(cls, target: Target, store: Store) -> bool:
        """A ``.npz`` file."""
        return target.kind == "file" and target.suffix == ".npz"

    def slices(self, cfg: SourceConfig, target: Target, store: Store,
               field_name: str) -> ArraySlices:
        """The arrays, opened to be read a slice at a time."""
        return npz_slices(store, cfg.path)

    def read_whole(self, cfg: SourceConfig, target: Target, store: Store,
                   field_name: str) -> Arrays:
        """The arrays, read whole."""
        return load_npz(store, cfg.path)


def load_npz(store: Store, path: str) -> Arrays:
    """Images under one of the usual keys (``images``, ``x``, ...) and optional labels."""
    data = store.read(path)
    _check_npz_headers(data, path)
    with as_data_error(path), np.load(io.BytesIO(data), allow_pickle=False) as z:
        img_key, lbl_key = _npz_keys(list(z.keys()), path)
        images = z[img_key]
        labels = z[lbl_key] if lbl_key else None
    check_image_header(images.dtype, images.shape, f"{path}[{img_key!r}]")
    if labels is not None:
        check_label_header(labels.dtype, labels.shape, len(images), f"{path}[{lbl_key!r}]")
        check_labels(labels, f"{path}[{lbl_key!r}]")
    names = [str(i) for i in range(int(labels.max()) + 1)] if labels is not None else []
    return Arrays(images, labels, names, f"{base_name(path)} ({len(images)} images)")


def npz_slices(store: Store, path: str) -> ArraySlices:
    """:func:`load_npz`'s arrays, opened to be read a slice of rows at a time.

    The archive is read at random (its directory, then each member's start): an object
    store serves these as range requests.
    """
    try:
        with contextlib.ExitStack() as stack:
            archive = zipfile.ZipFile(stack.enter_context(open_file(store, path)))
            stack.callback(archive.close)
            members = {i.filename.removesuffix(".npy"): i for i in archive.infolist()}
            streams = []
            for key in _npz_keys(list(members), path):
                if not key:
                    continue
                member_name = f"{path}[{members[key].filename!r}]"
                _check_codec(members[key], member_name)
                member = stack.enter_context(archive.open(members[key]))
                shape, dtype, fortran = check_npy_header(member, members[key].file_size,
                                                         member_name)
                streams.append(RowStream(f"{path}[{key!r}]", shape, dtype, member.read,
                                         fortran=fortran))
            check_image_header(streams[0].dtype, streams[0].shape, streams[0].name)
            labels = streams[1] if len(streams) > 1 else None
            if labels is not None:
                check_label_header(labels.dtype, labels.shape, streams[0].shape[0], labels.name)
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


def _check_npz_headers(data: bytes, name: str) -> None:
    """:func:`check_npy_header` for every array of an ``.npz``, against the bytes it holds.

    The sizes a zip's directory gives are the archive's word: each member is inflated (1 MiB
    at a time, then dropped) to count the bytes it really holds before NumPy allocates.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist():
                member_name = f"{name}[{info.filename!r}]"
                _check_codec(info, member_name)
                with archive.open(info) as member:
                    check_npy_header(member, info.file_size, member_name)
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
