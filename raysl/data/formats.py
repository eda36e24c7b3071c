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
IDX file is decompressed only up to the size its header gives, a ``.npy`` array (alone or in
an ``.npz``) must fit in the bytes that follow its header, and an array a CIFAR pickle builds
must fit in the pickle: a small hostile file cannot make raysl allocate gigabytes. Read a slice
at a time, no more than a slice is allocated, and a file that ends before its header's rows
(or, IDX, goes on after them) is a DataError when its reading gets there.
"""

from __future__ import annotations

import contextlib
import io
import math
import pickle
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raysl.data.storage import Store

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]


class DataError(ValueError):
    """The data a config points at is missing or unusable (names the field and the path)."""


@dataclass
class Arrays:
    """Images (N, H, W[, C]) uint8, labels (N,) or None, class names, one-line description."""

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str]
    description: str


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
                member = stack.enter_context(archive.open(members[key]))
                shape, dtype, fortran = _check_npy_header(
                    member, members[key].file_size, f"{path}[{members[key].filename!r}]")
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
    NumPy arrays, lists and dicts they contain, so a tampered file cannot run code.
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
        except (KeyError, ValueError, TypeError) as e:
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
    return Arrays(x, y, classes or [str(i) for i in range(int(y.max()) + 1)],
                  f"{layout.split('-')[0].upper()}-{layout.split('-')[1]} {split} "
                  f"({len(x)} images, {folder})")


# What a CIFAR batch pickle may build: arrays (NumPy 1 and 2 module names) and plain objects.
_PICKLE_ALLOWED = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"), ("builtins", "object"),
    ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2 (re-saved batches)
})


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Builds only :data:`_PICKLE_ALLOWED`, and no array larger than the pickle itself.

    A pickled array is made empty by ``_reconstruct(ndarray, shape, dtype)`` and then given its
    data, which is in the pickle: a ``shape`` beyond the pickle's size only allocates.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.limit = len(data)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if (module, name) == ("numpy", "ndarray"):
            # A token, not the class: called directly, ndarray(shape, dtype) would allocate
            # any shape; only the bounded _reconstruct below turns the token into ndarrays.
            return _NdarrayToken
        found = super().find_class(module, name)
        if name == "_reconstruct":
            return self._bounded(found)
        return found

    def _bounded(self, reconstruct: Any) -> Any:
        def build(cls: Any, shape: Any, dtype: Any) -> Any:
            if cls is not _NdarrayToken:
                raise pickle.UnpicklingError(f"_reconstruct of {cls!r}, not of numpy.ndarray")
            dims = (shape,) if isinstance(shape, int) else tuple(shape)
            # int(): a pickled numpy scalar dimension would wrap around, not grow
            if math.prod(int(d) for d in dims) * np.dtype(dtype).itemsize > self.limit:
                raise pickle.UnpicklingError(f"an array of shape {dims} is larger than the "
                                             f"{self.limit}-byte file")
            return reconstruct(np.ndarray, shape, dtype)
        return build


class _NdarrayToken:
    """What the CIFAR unpickler hands out for ``numpy.ndarray`` (calling it builds nothing)."""

    def __init__(self, *_: Any) -> None:
        raise pickle.UnpicklingError("numpy.ndarray may only be rebuilt by _reconstruct")


def _unpickle(store: Store, path: str) -> dict[bytes, Any]:
    try:
        data = store.read(path)
    except FileNotFoundError:
        raise DataError(f"{path}: missing from the CIFAR folder") from None
    try:
        out = _ArraysOnlyUnpickler(data).load()
    except Exception as e:
        raise DataError(f"{path}: not a CIFAR python batch ({e})") from None
    if not isinstance(out, dict):
        raise DataError(f"{path}: not a CIFAR python batch (a {type(out).__name__})")
    return {(k.encode() if isinstance(k, str) else k): v for k, v in out.items()}


def _open_file(store: Store, path: str) -> Any:
    """The file's bytes as stored, seekable (an object store's reads are range requests)."""
    fs, inner = store.resolve(path)
    return fs.open_input_file(inner)


def _base(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]
