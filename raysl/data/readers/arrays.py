"""What the array readers (IDX, npz, npy) share: read whole up to a size, or a slice at a time.

An array source is read whole by the driver (:class:`~raysl.data.readers.base.Arrays`), so its
size is checked first, from its headers: above ``data.source.max_array_bytes`` the read is
refused with the ``raysl shards`` command that converts it into shards, which stream. That
command opens the same :meth:`ArrayReader.slices` and reads them a slice of rows at a time
(:mod:`raysl.data.shards`): an :class:`ArraySlices` of :class:`RowStream` s, whose headers are
read and checked before any row.

A file's header says how big its array is; nothing is allocated on its word alone. Read a slice
at a time, no more than a slice is allocated, and a file that ends before its header's rows
(or, IDX, goes on after them) is a DataError when its reading gets there. The checks every
array format makes (uint8 images, integer labels) are here too.
"""

from __future__ import annotations

import contextlib
import math
import posixpath
import shlex
import zipfile
import zlib
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raysl.config import SourceConfig
from raysl.data.readers.base import Arrays, Reader, Target
from raysl.data.storage import Store
from raysl.errors import DataError


class ArrayReader(Reader):
    """A reader of arrays: :meth:`slices` opens them, :meth:`read_whole` reads them."""

    @abstractmethod
    def slices(self, cfg: SourceConfig, target: Target, store: Store,
               field_name: str) -> ArraySlices:
        """The source's arrays with their headers read and checked, no row read yet."""

    @abstractmethod
    def read_whole(self, cfg: SourceConfig, target: Target, store: Store,
                   field_name: str) -> Arrays:
        """The source's arrays, read whole."""

    def open(self, cfg: SourceConfig, target: Target, store: Store, seed: int,
             field_name: str) -> Arrays:
        """The arrays, read whole if they fit ``max_array_bytes``.

        Raises:
            DataError: they are larger (naming the command that converts them), or unreadable.
        """
        with self.slices(cfg, target, store, field_name) as sliced:
            check_size(sliced, cfg, target, field_name)
        return self.read_whole(cfg, target, store, field_name)


def check_size(sliced: ArraySlices, cfg: SourceConfig, target: Target, field_name: str) -> None:
    """Refuse ``sliced`` if it is larger than ``cfg.max_array_bytes``, naming ``raysl shards``.

    Raises:
        DataError: naming the path, the arrays' shape and size, the limit's field and value,
            and the commands that convert the source and then train on the shards.
    """
    if sliced.nbytes <= cfg.max_array_bytes:
        return
    stem = cfg.path.rstrip("/")
    if target.kind == "dir":
        stem += f"-{cfg.split}"
    else:
        stem = posixpath.splitext(stem)[0]
    out = f"{stem}-shards"
    flags = "" if target.kind != "dir" or cfg.split == "train" else f" --split {cfg.split}"
    flags += f" --source-format {cfg.format}" if cfg.format != "auto" else ""
    use = (f"{field_name} {shlex.quote(out)}" if field_name.startswith("-")
           else f"--set {field_name}.path={shlex.quote(out)}")
    raise DataError(
        f"{field_name}.path={cfg.path!r}: {sliced.describe()} take {_gb(sliced.nbytes)}, more "
        f"than {field_name}.max_array_bytes={cfg.max_array_bytes} ({_gb(cfg.max_array_bytes)}), "
        "the most an array source is read whole on the driver. Convert it once into shards, "
        f"which stream: `raysl shards {shlex.quote(cfg.path)} {shlex.quote(out)}{flags}`, then "
        f"`{use}` (or raise {field_name}.max_array_bytes if the driver has the memory)")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 10**7 else f"{n} bytes"


# read(n): the next bytes of a file, at most n; b"" only at its end.
ReadBytes = Callable[[int], bytes]


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
            data = read_exactly(self.read, n * row)
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
        return class_names_of(self.named, self.top_label + 1) if self.labels is not None else []

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
                check_labels(labels, self.labels.name)
                self.top_label = max(self.top_label, int(labels.max()) if len(labels) else -1)
            yield images, labels

    def close(self) -> None:
        """Close the files."""
        self.files.close()

    def __enter__(self) -> ArraySlices:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def read_exactly(read: ReadBytes, n: int) -> bytes:
    """``n`` bytes of ``read`` (fewer only at the end), gathered as they arrive."""
    parts, got = [], 0
    while got < n and (chunk := read(n - got)):
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def check_image_header(dtype: np.dtype[Any], shape: tuple[int, ...], name: str) -> None:
    """Refuse an image array that is not uint8 (N, H, W) or (N, H, W, C) with C in 1, 3, 4."""
    if dtype != np.uint8 or len(shape) not in (3, 4) or (
            len(shape) == 4 and shape[-1] not in (1, 3, 4)):
        raise DataError(f"{name}: expected uint8 (N, H, W) or (N, H, W, C) with C in 1/3/4, got "
                        f"{dtype} {shape}")


def check_label_header(dtype: np.dtype[Any], shape: tuple[int, ...], n: int, name: str) -> None:
    """Refuse labels that are not ``n`` integers, (n,)."""
    if shape != (n,) or not np.issubdtype(dtype, np.integer):
        raise DataError(f"{name}: expected ({n},) integer labels, got {dtype} {shape}")


def check_labels(labels: np.ndarray, name: str) -> None:
    """Refuse a negative label: array sources are read whole, not skipped by row."""
    if len(labels) and labels.min() < 0:
        raise DataError(f"{name}: labels must be >= 0, found {labels.min()}")


def class_names_of(named: list[str], n_classes: int) -> list[str]:
    """``named`` if it names ``n_classes`` classes, else their indices as names."""
    return named if len(named) == n_classes else [str(i) for i in range(n_classes)]


def open_file(store: Store, path: str) -> Any:
    """The file's bytes as stored, seekable (an object store's reads are range requests)."""
    fs, inner = store.resolve(path)
    return fs.open_input_file(inner)


def base_name(path: str) -> str:
    """The last part of ``path``, for descriptions and file matching."""
    return path.rstrip("/").rsplit("/", 1)[-1]
