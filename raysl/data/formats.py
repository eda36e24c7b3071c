"""Array-shaped image formats, read whole: IDX (MNIST, Fashion-MNIST), .npz/.npy, CIFAR-10/100.

Each loader takes a :class:`~raysl.data.storage.Store` and a path (local or URI) and returns
:class:`Arrays`. These files hold already-decoded pixels, so a bad one is a :class:`DataError`
naming the file and what was expected, not a skipped image.
"""

from __future__ import annotations

import gzip
import io
import pickle
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


def parse_idx(data: bytes, name: str) -> np.ndarray:
    """IDX bytes (optionally gzipped) of unsigned bytes -> an array of the header's shape."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{name}: not an IDX file of unsigned bytes (magic {data[:4]!r})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise DataError(f"{name}: header says {dims} ({expected} bytes), file has "
                        f"{len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


# ---------------------------------------------------------------------------------------------
# .npz / .npy
# ---------------------------------------------------------------------------------------------

_NPZ_IMAGE_KEYS = ("images", "image", "x", "x_train", "data")
_NPZ_LABEL_KEYS = ("labels", "label", "y", "y_train", "targets")


def load_npz(store: Store, path: str) -> Arrays:
    """Images under one of the usual keys (``images``, ``x``, ...) and optional labels."""
    with np.load(io.BytesIO(store.read(path)), allow_pickle=False) as z:
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
    images = np.load(io.BytesIO(store.read(path)), allow_pickle=False)
    _check_images(images, path)
    return Arrays(images, None, [], f"{_base(path)} ({len(images)} images)")


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
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
        except (KeyError, ValueError) as e:
            raise DataError(f"{folder}/{name}: not a {layout} batch ({e})") from None
    classes = [n.decode() for n in _unpickle(store, f"{folder}/{meta}").get(names_key, [])]
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

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(store: Store, path: str) -> dict[bytes, Any]:
    try:
        data = store.read(path)
    except FileNotFoundError:
        raise DataError(f"{path}: missing from the CIFAR folder") from None
    try:
        out = _ArraysOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:
        raise DataError(f"{path}: not a CIFAR python batch ({e})") from None
    if not isinstance(out, dict):
        raise DataError(f"{path}: not a CIFAR python batch (a {type(out).__name__})")
    return {(k.encode() if isinstance(k, str) else k): v for k, v in out.items()}


def _base(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]
