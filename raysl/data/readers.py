"""Readers: image stores -> Ray Datasets with ``image`` (uint8 H, W, C) and optional ``label``.

Formats: Fashion-MNIST/MNIST IDX files, a directory tree of image files (class sub-folders become
labels), ``.npz`` arrays, and a generated shapes dataset (the fallback when no data is installed).
Bad image files are skipped, counted per reason and reported, never fatal on their own.
"""

from __future__ import annotations

import gzip
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray.data
from ray.data.extensions import ArrowTensorArray

from raysl.config import SourceConfig
from raysl.data import generated

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
_ROWS_PER_BLOCK = 2048  # blocks of ~2-6 MB: enough of them to shuffle block order and parallelise
_MIN_SIDE = 8  # images smaller than this on either side are skipped as "too_small"


class DataError(ValueError):
    """The data a config points at is missing or unusable (names the field and the path)."""


@dataclass
class ImageSource:
    """A readable image collection.

    Attributes:
        dataset: Ray Dataset with columns ``image`` (H, W, C) uint8 and, if labeled, ``label``.
        num_images: rows in ``dataset`` (after skipping bad files and applying ``limit``).
        class_names: label index -> name; empty when unlabeled.
        description: one line for logs and model descriptions.
        skipped: bad files per reason, e.g. ``{"corrupt": 3}``.
        skipped_examples: a few offending paths with their reason.
    """

    dataset: ray.data.Dataset
    num_images: int
    class_names: list[str]
    description: str
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[str] = field(default_factory=list)

    @property
    def labeled(self) -> bool:
        """Whether rows carry a ``label``."""
        return bool(self.class_names)


def read_source(cfg: SourceConfig, channels: int, decode_size: int, seed: int = 0,
                field_name: str = "data.source") -> ImageSource:
    """Open the images ``cfg`` points at.

    Args:
        cfg: format, path, split and limit.
        channels: 1 or 3; images are converted to this.
        decode_size: image files are resized so the shorter side is this, then centre-cropped
            square (so batches stack); arrays keep their size.
        seed: seeds the subset drawn when ``cfg.limit`` is set.
        field_name: config path of ``cfg``, used in error messages.

    Raises:
        DataError: missing path, unknown layout, no images at all.
    """
    fmt = resolve_format(cfg, field_name)
    if fmt == "folder":
        return _read_folder(cfg, channels, decode_size, seed, field_name)
    if fmt == "idx":
        images, labels, names, desc = _load_idx(Path(cfg.path), cfg.split, field_name)
    elif fmt == "npz":
        images, labels, names, desc = _load_npz(Path(cfg.path), field_name)
    else:
        images, labels = generated.shapes(n=cfg.limit or 2000, size=32, seed=seed)
        names, desc = list(generated.CLASSES), "generated shapes (32x32, 8 classes)"
    images = to_channels(images, channels)
    if cfg.limit and cfg.limit < len(images):
        keep = np.sort(np.random.default_rng(seed).permutation(len(images))[: cfg.limit])
        images, labels = images[keep], (labels[keep] if labels is not None else None)
        desc += f", {cfg.limit} drawn with seed {seed}"
    return ImageSource(arrays_to_dataset(images, labels), len(images),
                       names if labels is not None else [], desc)


def resolve_format(cfg: SourceConfig, field_name: str) -> str:
    """The concrete reader for ``cfg`` (``auto`` inspects the path)."""
    if cfg.format == "generated":
        return "generated"
    path = Path(cfg.path)
    if not path.exists():
        raise DataError(f"{field_name}.path={cfg.path!r}: does not exist")
    if cfg.format != "auto":
        return cfg.format
    if path.is_file() and path.suffix == ".npz":
        return "npz"
    if path.is_dir() and any(path.glob("*-images-idx3-ubyte*")):
        return "idx"
    if path.is_dir():
        return "folder"
    raise DataError(f"{field_name}.path={cfg.path!r}: expected a .npz file, a directory of IDX "
                    "files or a directory of images; set format to say which")


def arrays_to_dataset(images: np.ndarray, labels: np.ndarray | None,
                      rows_per_block: int = _ROWS_PER_BLOCK, with_index: bool = False
                      ) -> ray.data.Dataset:
    """(N, H, W, C) uint8 (+ (N,) labels) -> Ray Dataset with ``image`` (+ ``label``) columns.

    ``with_index`` adds each row's position as ``index``, so results computed out of order can be
    put back in place.
    """
    tables = []
    for start in range(0, len(images), rows_per_block):
        end = min(start + rows_per_block, len(images))
        cols: dict[str, Any] = {"image": ArrowTensorArray.from_numpy(images[start:end])}
        if labels is not None:
            cols["label"] = pa.array(labels[start:end].astype(np.int64))
        if with_index:
            cols["index"] = pa.array(np.arange(start, end))
        tables.append(pa.table(cols))
    return ray.data.from_arrow(tables)


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """(N, H, W[, C]) uint8 -> (N, H, W, channels): gray is repeated, colour is made luminance."""
    if images.ndim == 3:
        images = images[..., None]
    c = images.shape[-1]
    if c == channels:
        return images
    if c == 4:  # RGBA: drop alpha
        images, c = images[..., :3], 3
        if channels == 3:
            return images
    if c == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    if c == 3 and channels == 1:
        lum = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.rint(lum), 0, 255).astype(np.uint8)[..., None]
    raise DataError(f"cannot convert images with {c} channels to {channels}")


def to_numpy(source: ImageSource) -> tuple[np.ndarray, np.ndarray | None]:
    """Pull a (small) source to the driver: images (N, H, W, C) and labels (N,) or None."""
    images, labels = [], []
    for batch in source.dataset.iter_batches(batch_size=4096, batch_format="numpy"):
        images.append(batch["image"])
        if "label" in batch:
            labels.append(batch["label"])
    return np.concatenate(images), (np.concatenate(labels) if labels else None)


# ---------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# ---------------------------------------------------------------------------------------------

_IDX_SPLITS = {"train": "train", "test": "t10k", "t10k": "t10k"}


def _load_idx(path: Path, split: str, field_name: str
              ) -> tuple[np.ndarray, np.ndarray | None, list[str], str]:
    prefix = _IDX_SPLITS.get(split)
    if prefix is None:
        raise DataError(f"{field_name}.split={split!r}: IDX splits are 'train' and 't10k' (or "
                        "'test')")
    img_file = _find_one(path, f"{prefix}-images-idx3-ubyte", field_name)
    images = read_idx(img_file)
    lbl = next(iter(sorted(path.glob(f"{prefix}-labels-idx1-ubyte*"))), None)
    labels = read_idx(lbl) if lbl else None
    if labels is not None and len(labels) != len(images):
        raise DataError(f"{lbl}: {len(labels)} labels for {len(images)} images")
    n_classes = int(labels.max()) + 1 if labels is not None else 0
    names = (FASHION_MNIST_CLASSES if "fashion" in str(path).lower() and n_classes == 10
             else [str(i) for i in range(n_classes)])
    kind = "Fashion-MNIST" if "fashion" in str(path).lower() else "IDX"
    return images, labels, names, f"{kind} {split} ({len(images)} images, {path})"


def _find_one(path: Path, stem: str, field_name: str) -> Path:
    found = sorted(path.glob(stem + "*"))
    if not found:
        raise DataError(f"{field_name}.path={str(path)!r}: no {stem}[.gz] file there")
    return found[0]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) of unsigned bytes into an array of its shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (magic {data[:4]!r})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise DataError(f"{path}: header says {dims} ({expected} bytes), file has "
                        f"{len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


# ---------------------------------------------------------------------------------------------
# .npz
# ---------------------------------------------------------------------------------------------

_NPZ_IMAGE_KEYS = ("images", "image", "x", "x_train", "data")
_NPZ_LABEL_KEYS = ("labels", "label", "y", "y_train", "targets")


def _load_npz(path: Path, field_name: str
              ) -> tuple[np.ndarray, np.ndarray | None, list[str], str]:
    with np.load(path, allow_pickle=False) as z:
        keys = list(z.keys())
        img_key = next((k for k in _NPZ_IMAGE_KEYS if k in z), None)
        if img_key is None:
            raise DataError(f"{field_name}.path={str(path)!r}: no image array; expected one of "
                            f"{list(_NPZ_IMAGE_KEYS)}, found {keys}")
        images = z[img_key]
        lbl_key = next((k for k in _NPZ_LABEL_KEYS if k in z), None)
        labels = z[lbl_key] if lbl_key else None
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (
            images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
        raise DataError(f"{path}[{img_key!r}]: expected uint8 (N, H, W) or (N, H, W, C) with C in "
                        f"1/3/4, got {images.dtype} {images.shape}")
    if labels is not None:
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}[{lbl_key!r}]: expected ({len(images)},) integer labels, got "
                            f"{labels.dtype} {labels.shape}")
        if labels.min() < 0:
            raise DataError(f"{path}[{lbl_key!r}]: labels must be >= 0, found {labels.min()}")
    names = [str(i) for i in range(int(labels.max()) + 1)] if labels is not None else []
    return images, labels, names, f"{path.name} ({len(images)} images)"


# ---------------------------------------------------------------------------------------------
# Directory trees of image files
# ---------------------------------------------------------------------------------------------


def list_image_files(root: Path) -> tuple[list[str], list[int] | None, list[str]]:
    """Image files under ``root`` (recursive, sorted), with labels from class sub-folders.

    Labels are given only when every file sits below a first-level sub-folder (ImageFolder
    layout); class indices follow the sorted folder names.
    """
    files = sorted(str(p) for p in root.rglob("*")
                   if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    rel_parts = [Path(f).relative_to(root).parts for f in files]
    if files and all(len(parts) >= 2 for parts in rel_parts):
        classes = sorted({parts[0] for parts in rel_parts})
        index = {c: i for i, c in enumerate(classes)}
        return files, [index[parts[0]] for parts in rel_parts], classes
    return files, None, []


def decode_image(data: bytes, channels: int, size: int) -> np.ndarray:
    """Encoded bytes -> (size, size, channels) uint8: EXIF-rotated, shorter side resized, centred.

    Raises:
        ValueError: with a short reason ("empty", "too_small", "too_large", "corrupt").
    """
    import io
    import warnings

    from PIL import Image, ImageOps

    if not data:
        raise ValueError("empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            img.draft("RGB" if channels == 3 else "L", (size, size))  # JPEG: decode at low res
            img = ImageOps.exif_transpose(img)
            img = img.convert("RGB" if channels == 3 else "L")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError("too_large") from None
    except Exception:  # PIL raises many types for undecodable input
        raise ValueError("corrupt") from None
    w, h = img.size
    if min(w, h) < _MIN_SIDE:
        raise ValueError("too_small")
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                     Image.Resampling.BILINEAR, reducing_gap=3.0)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return arr.reshape(size, size, channels)


def _decode_batch(batch: dict[str, np.ndarray], channels: int, size: int
                  ) -> dict[str, np.ndarray]:
    n = len(batch["path"])
    images = np.zeros((n, size, size, channels), np.uint8)
    errors = np.full(n, "", dtype=object)
    for i, path in enumerate(batch["path"]):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            errors[i] = "unreadable"
            continue
        try:
            images[i] = decode_image(data, channels, size)
        except ValueError as e:
            errors[i] = str(e)
    out = dict(batch)
    out["image"], out["error"] = images, errors.astype(str)
    return out


def _read_folder(cfg: SourceConfig, channels: int, size: int, seed: int,
                 field_name: str) -> ImageSource:
    root = Path(cfg.path)
    files, labels, classes = list_image_files(root)
    if not files:
        raise DataError(f"{field_name}.path={cfg.path!r}: no image files "
                        f"({', '.join(IMAGE_EXTENSIONS)}) below it")
    order = np.arange(len(files))
    if cfg.limit and cfg.limit < len(files):
        order = np.sort(np.random.default_rng(seed).permutation(len(files))[: cfg.limit])
    rows: dict[str, Any] = {"path": np.array([files[i] for i in order])}
    if labels is not None:
        rows["label"] = np.array([labels[i] for i in order], np.int64)
    listing = ray.data.from_arrow([pa.table(rows)]).repartition(
        max(1, min(len(order) // 256, 64)))
    decoded = listing.map_batches(
        _decode_batch,  # type: ignore[arg-type]  # Ray's stub expects a one-argument callable
        fn_kwargs={"channels": channels, "size": size}, batch_size=64, batch_format="numpy",
    ).materialize()
    bad = decoded.filter(lambda r: r["error"] != "").select_columns(["path", "error"]).take_all()
    good = decoded.filter(lambda r: r["error"] == "").drop_columns(["error", "path"])
    good = good.materialize()
    skipped = dict(Counter(r["error"] for r in bad))
    num = good.count()
    if num == 0:
        raise DataError(f"{field_name}.path={cfg.path!r}: none of the {len(order)} image files "
                        f"could be decoded ({skipped})")
    n_classes = f", {len(classes)} classes" if classes else ""
    desc = f"{root.name or root} ({num} images{n_classes})"
    return ImageSource(good, num, classes, desc, skipped,
                       [f"{os.path.relpath(r['path'], root)}: {r['error']}" for r in bad[:10]])
