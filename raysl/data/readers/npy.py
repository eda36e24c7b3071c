"""A ``.npy`` array of unlabeled images, and the ``.npy`` header checks an ``.npz`` shares.

Read whole (:func:`load_npy`) or opened to be read a slice of rows at a time
(:func:`npy_slices`). The array must fit in the bytes that follow its header
(:func:`check_npy_header`), so what a file makes NumPy allocate is what it holds.
"""

from __future__ import annotations

import contextlib
import io
import math
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from raysl.catalog import register
from raysl.config import SourceConfig
from raysl.data.readers.arrays import (
    ArrayReader,
    ArraySlices,
    RowStream,
    base_name,
    check_image_header,
    open_file,
)
from raysl.data.readers.base import Arrays, Target
from raysl.data.storage import Store
from raysl.errors import DataError


@register("reader", "npy")
class NPY(ArrayReader):
    """uint8 images (N, H, W[, C]), no labels."""

    name = "npy"
    summary = "a .npy of uint8 images (N, H, W[, C]), unlabeled"
    reads = "file"
    detect_order = 10

    @classmethod
    def detect(cls, target: Target, store: Store) -> bool:
        """A ``.npy`` file."""
        return target.kind == "file" and target.suffix == ".npy"

    def slices(self, cfg: SourceConfig, target: Target, store: Store,
               field_name: str) -> ArraySlices:
        """The array, opened to be read a slice at a time."""
        return npy_slices(store, cfg.path)

    def read_whole(self, cfg: SourceConfig, target: Target, store: Store,
                   field_name: str) -> Arrays:
        """The array, read whole."""
        return load_npy(store, cfg.path)


def load_npy(store: Store, path: str) -> Arrays:
    """One unlabeled image array (N, H, W) or (N, H, W, C)."""
    data = store.read(path)
    check_npy_header(io.BytesIO(data), len(data), path)
    with as_data_error(path):
        images = np.load(io.BytesIO(data), allow_pickle=False)
    check_image_header(images.dtype, images.shape, path)
    return Arrays(images, None, [], f"{base_name(path)} ({len(images)} images)")


def npy_slices(store: Store, path: str) -> ArraySlices:
    """:func:`load_npy`'s array, opened to be read a slice of rows at a time."""
    with contextlib.ExitStack() as stack:
        stream = stack.enter_context(open_file(store, path))
        shape, dtype, fortran = check_npy_header(stream, stream.size(), path)
        check_image_header(dtype, shape, path)
        return ArraySlices(RowStream(path, shape, dtype, stream.read, fortran=fortran), None, [],
                           stack.pop_all())


@contextlib.contextmanager
def as_data_error(name: str) -> Iterator[None]:
    """NumPy's errors on a damaged array file, as a DataError naming the file."""
    try:
        yield
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{name}: not a readable array file ({type(e).__name__}: {e})") from None


def check_npy_header(stream: Any, size: int, name: str
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

