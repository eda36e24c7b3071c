"""Array-shaped image formats, read whole: IDX (MNIST, Fashion-MNIST), .npz/.npy, CIFAR-10/100.

Each loader takes a :class:`~raysl.data.storage.Store` and a path (local or URI) and returns
:class:`Arrays`. These files hold already-decoded pixels, so a bad one is a :class:`DataError`
naming the file and what was expected, not a skipped image.

A file's header says how big its array is; nothing is allocated on its word alone. A gzipped
IDX file is decompressed only up to the size its header gives, a ``.npy`` array (alone or in
an ``.npz``) must fit in the bytes that follow its header, and an array a CIFAR pickle builds
must fit in the pickle: a small hostile file cannot make raysl allocate gigabytes.
"""

from __future__ import annotations

import contextlib
import io
import math
import pickle
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
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
    prefix = IDX_SPLITS.get(split)
    if prefix is None:
        raise DataError(f"{field_name}.split={split!r}: IDX splits are 'train' and 't10k' (or "
                        "'test')")
    names = sorted(files)
    img_file = next((f for f in names if _base(f).startswith(f"{prefix}-images-idx3-ubyte")), None)
    if img_file is None:
        raise DataError(f"{field_name}.path={root!r}: no {prefix}-images-idx3-ubyte[.gz] file "
                        "there")
    images = parse_idx(store.read(img_file), img_file)
    lbl = next((f for f in names if _base(f).startswith(f"{prefix}-labels-idx1-ubyte")), None)
    labels = parse_idx(store.read(lbl), lbl) if lbl else None
    if labels is not None and len(labels) != len(images):
        raise DataError(f"{lbl}: {len(labels)} labels for {len(images)} images")
    n_classes = int(labels.max()) + 1 if labels is not None else 0
    fashion = "fashion" in root.lower()
    classes = (FASHION_MNIST_CLASSES if fashion and n_classes == 10
               else [str(i) for i in range(n_classes)])
    kind = "Fashion-MNIST" if fashion else "IDX"
    return Arrays(images, labels, classes, f"{kind} {split} ({len(images)} images, {root})")


# The largest array a header may announce: far above any image set, far below what a
# corrupted or hostile 32-bit size field can claim (2^32 per dimension).
MAX_ARRAY_BYTES = 2**40


def parse_idx(data: bytes, name: str) -> np.ndarray:
    """IDX bytes (optionally gzipped) of unsigned bytes -> an array of the header's shape.

    Gzipped data is decompressed in steps: the magic number, the dimensions, then at most one
    byte more than they announce (to tell a file with extra data), never the whole stream
    first.
    """
    read = _gunzip_reader(data, name) if data[:2] == b"\x1f\x8b" else _plain_reader(data)
    head = read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
        raise DataError(f"{name}: not an IDX file of unsigned bytes (magic {head[:4]!r})")
    ndim = head[3]
    raw_dims = read(4 * ndim)
    dims = [int.from_bytes(raw_dims[4 * i: 4 * i + 4], "big") for i in range(ndim)]
    expected = math.prod(dims)
    if expected > MAX_ARRAY_BYTES:
        raise DataError(f"{name}: header says {dims} ({expected} bytes), more than the "
                        f"{MAX_ARRAY_BYTES} bytes an image file may hold")
    body = read(expected + 1)
    if len(body) != expected:
        has = f"{len(body)}" if len(body) <= expected else "more"
        raise DataError(f"{name}: header says {dims} ({expected} bytes), file has {has}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _plain_reader(data: bytes) -> Any:
    """``read(n)``: the next ``n`` bytes of ``data`` (fewer at its end)."""
    stream = io.BytesIO(data)
    return stream.read


def _gunzip_reader(data: bytes, name: str) -> Any:
    """``read(n)``: the next ``n`` decompressed bytes of the gzip stream ``data``, at most."""
    inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    pending = [data]

    def read(n: int) -> bytes:
        if n <= 0:
            return b""  # zlib reads a max_length of 0 as "no limit"
        try:
            out = inflate.decompress(pending[0], n)
        except zlib.error as e:
            raise DataError(f"{name}: not a valid gzip file ({e})") from None
        pending[0] = inflate.unconsumed_tail
        return out
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
        keys = list(z.keys())
        img_key = next((k for k in _NPZ_IMAGE_KEYS if k in z), None)
        if img_key is None:
            raise DataError(f"{path}: no image array; expected one of {list(_NPZ_IMAGE_KEYS)}, "
                            f"found {keys}")
        images = z[img_key]
        lbl_key = next((k for k in _NPZ_LABEL_KEYS if k in z), None)
        labels = z[lbl_key] if lbl_key else None
    _check_images(images, f"{path}[{img_key!r}]")
    if labels is not None:
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}[{lbl_key!r}]: expected ({len(images)},) integer labels, got "
                            f"{labels.dtype} {labels.shape}")
        if labels.min() < 0:
            raise DataError(f"{path}[{lbl_key!r}]: labels must be >= 0, found {labels.min()}")
    names = [str(i) for i in range(int(labels.max()) + 1)] if labels is not None else []
    return Arrays(images, labels, names, f"{_base(path)} ({len(images)} images)")


def load_npy(store: Store, path: str) -> Arrays:
    """One unlabeled image array (N, H, W) or (N, H, W, C)."""
    data = store.read(path)
    _check_npy_header(io.BytesIO(data), len(data), path)
    with _as_data_error(path):
        images = np.load(io.BytesIO(data), allow_pickle=False)
    _check_images(images, path)
    return Arrays(images, None, [], f"{_base(path)} ({len(images)} images)")


@contextlib.contextmanager
def _as_data_error(name: str) -> Iterator[None]:
    """NumPy's errors on a damaged array file, as a DataError naming the file."""
    try:
        yield
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{name}: not a readable array file ({type(e).__name__}: {e})") from None


def _check_npy_header(stream: Any, size: int, name: str) -> None:
    """Raise unless the ``.npy`` array in ``stream`` (``size`` bytes) fits in them.

    NumPy allocates the whole array its header describes before reading the data, so a
    100-byte file announcing a terabyte would be a terabyte of allocation.
    """
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        shape, _, dtype = (fmt.read_array_header_1_0(stream) if version == (1, 0)
                           else fmt.read_array_header_2_0(stream))
    except (ValueError, OSError) as e:
        raise DataError(f"{name}: not a .npy array ({e})") from None
    needed = math.prod(shape) * dtype.itemsize
    has = size - stream.tell()
    if needed > has:
        raise DataError(f"{name}: header says {dtype} {tuple(shape)} ({needed} bytes), the "
                        f"file holds {has}")


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


def _check_images(images: np.ndarray, name: str) -> None:
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (
            images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
        raise DataError(f"{name}: expected uint8 (N, H, W) or (N, H, W, C) with C in 1/3/4, got "
                        f"{images.dtype} {images.shape}")


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


def _base(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]
