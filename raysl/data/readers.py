"""Readers: image stores -> Ray Datasets of ``image`` (uint8 H, W, C) and ``label``/``path``.

Sources (``data.source``, see :class:`~raysl.config.SourceConfig`) live on local disk or in an
object store (:mod:`raysl.data.storage`). Two kinds:

- **Encoded images** (a folder tree, a file list, parquet bytes): listed on the driver, read and
  decoded once by Ray Data tasks spread over the cluster, and kept decoded at the decode size.
  A bad file is skipped with a reason (:data:`raysl.data.decode.REASONS`), counted, and
  reported; ``on_error="fail"`` or too many bad files stop the run with the counts and examples.
- **Arrays** (IDX, .npz, .npy, CIFAR): read whole by the driver (:mod:`raysl.data.formats`).

Rows are put in a seeded random order (file order), so every block mixes classes and folders;
training then shuffles block order every epoch and rows in a local buffer on each worker.
"""

from __future__ import annotations

import csv
import io
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
from ray.data.extensions import ArrowTensorArray

from raysl.config import DataConfig, SourceConfig
from raysl.data import generated
from raysl.data.decode import BadImage, decode_image, read_and_decode
from raysl.data.formats import (
    Arrays,
    DataError,
    cifar_folder,
    load_cifar,
    load_idx,
    load_npy,
    load_npz,
)
from raysl.data.storage import Store

__all__ = ["DEFAULT_POLICY", "DataError", "DecodePolicy", "ImageSource", "arrays_to_dataset",
           "read_source", "resolve_format", "to_channels", "to_numpy"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
LIST_EXTENSIONS = (".txt", ".lst", ".csv", ".tsv")
PARQUET_EXTENSIONS = (".parquet", ".pq")
_IMAGE_COLUMNS = ("image", "img", "image_bytes", "bytes", "jpeg", "png", "content", "data")
_PATH_COLUMNS = ("path", "file", "filename", "filepath", "uri", "url", "image_path")
_BLOCK_BYTES = 4 * 2**20  # array sources: ~4 MB blocks, many to shuffle and spread over tasks
_BLOCK_ROWS = (64, 4096)  # ... but at least one augmentation batch, at most this many rows
_MIN_BLOCKS = 8  # ... and, data allowing, this many: a small set still spreads over tasks/nodes
_FILES_PER_BLOCK = 256  # encoded sources: one decode task per this many files
_EXAMPLES = 10  # offending paths kept for the report


@dataclass(frozen=True)
class DecodePolicy:
    """How image files are decoded and what happens to the bad ones (from ``data.*``)."""

    on_error: str = "skip"
    max_bad_fraction: float = 0.1
    max_pixels: int = 100_000_000
    min_side: int = 8

    @classmethod
    def of(cls, data: DataConfig) -> DecodePolicy:
        """The policy ``data`` asks for."""
        return cls(data.on_error, data.max_bad_fraction, data.max_image_pixels,
                   data.min_image_side)


DEFAULT_POLICY = DecodePolicy()


@dataclass
class ImageSource:
    """A readable image collection.

    Attributes:
        dataset: Ray Dataset with columns ``image`` (H, W, C) uint8, ``label`` if labeled, and
            ``path`` for image files.
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
                field_name: str = "data.source", policy: DecodePolicy = DEFAULT_POLICY
                ) -> ImageSource:
    """Open the images ``cfg`` points at.

    Args:
        cfg: format, path or URI, split, limit, endpoint, columns.
        channels: 1 or 3; images are converted to this.
        decode_size: image files are resized so the shorter side is this, then centre-cropped
            square (so batches stack); arrays keep their size.
        seed: seeds the row order and the subset drawn when ``cfg.limit`` is set.
        field_name: config path of ``cfg``, used in error messages.
        policy: what to do with bad image files.

    Raises:
        DataError: missing path, unknown layout, no images, too many bad files.
    """
    store = Store.from_env(cfg.endpoint)
    fmt = resolve_format(cfg, field_name, store)
    rng = np.random.default_rng(seed)
    if fmt in ("folder", "files"):
        paths, labels, classes, desc = (_list_folder(store, cfg, field_name) if fmt == "folder"
                                        else _read_file_list(store, cfg, field_name))
        order = rng.permutation(len(paths))[: cfg.limit or None]
        items = {"path": np.asarray(paths, dtype=object)[order]}
        if labels is not None:
            items["label"] = labels[order]
        tables = [pa.table({k: v[i: i + _FILES_PER_BLOCK] for k, v in items.items()})
                  for i in range(0, len(order), _FILES_PER_BLOCK)]
        return _decode_source(ray.data.from_arrow(tables), len(order), store, "path", channels,
                              decode_size, policy, classes, desc, cfg, field_name)
    if fmt == "parquet":
        return _read_parquet(store, cfg, channels, decode_size, seed, policy, field_name)
    arrays = _load_arrays(store, cfg, fmt, seed, field_name)
    images, labels = to_channels(arrays.images, channels), arrays.labels
    order = rng.permutation(len(images))[: cfg.limit or None]
    if cfg.limit and cfg.limit < len(images):
        arrays.description += f", {cfg.limit} drawn with seed {seed}"
    images, labels = images[order], (labels[order] if labels is not None else None)
    return ImageSource(arrays_to_dataset(images, labels), len(images),
                       arrays.class_names if labels is not None else [], arrays.description)


def resolve_format(cfg: SourceConfig, field_name: str, store: Store | None = None) -> str:
    """The concrete reader for ``cfg`` (``auto`` inspects the path, not the files below it).

    Raises:
        DataError: the path does not exist, or is not what the format needs.
    """
    if cfg.format == "generated":
        return "generated"
    store = store or Store.from_env(cfg.endpoint)
    where = f"{field_name}.path={cfg.path!r}"
    try:
        kind = store.kind(cfg.path)
    except OSError as e:  # unreachable endpoint, no credentials, no such bucket
        raise DataError(f"{where}: cannot be reached ({e})") from None
    if kind == "missing":
        raise DataError(f"{where}: does not exist")
    if kind == "other":
        raise DataError(f"{where}: is neither a regular file nor a directory")
    suffix = posixpath.splitext(cfg.path.rstrip("/"))[1].lower()
    if cfg.format != "auto":
        needs = {"folder": "dir", "cifar": "dir", "idx": "dir", "files": "file", "npz": "file",
                 "npy": "file"}.get(cfg.format)
        if needs and needs != kind:
            raise DataError(f"{where}: format {cfg.format!r} reads a "
                            f"{'directory' if needs == 'dir' else 'file'}, this is a "
                            f"{'directory' if kind == 'dir' else 'file'}")
        return cfg.format
    if kind == "file":
        if suffix in (".npz", ".npy"):
            return suffix[1:]
        if suffix in LIST_EXTENSIONS:
            return "files"
        if suffix in PARQUET_EXTENSIONS:
            return "files" if _parquet_is_file_list(store, cfg) else "parquet"
        raise DataError(f"{where}: a file of unknown kind; expected .npz, .npy, .parquet, a list "
                        f"of image paths ({', '.join(LIST_EXTENSIONS)}) or a directory; set "
                        f"{field_name}.format to say which")
    top = store.list_top(cfg.path)
    names = [posixpath.basename(p) for p in top]
    if any("-images-idx3-ubyte" in n for n in names):
        return "idx"
    if cifar_folder(store.list_files(cfg.path) if _may_hold_cifar(names) else [], cfg.path):
        return "cifar"
    if names and all(n.lower().endswith(PARQUET_EXTENSIONS) for n in names):
        return "parquet"
    return "folder"


# ---------------------------------------------------------------------------------------------
# Encoded images: folders, file lists, parquet
# ---------------------------------------------------------------------------------------------


def _list_folder(store: Store, cfg: SourceConfig, field_name: str
                 ) -> tuple[list[str], np.ndarray | None, list[str], str]:
    """Image files below ``cfg.path`` with labels from first-level sub-folders when all have one.

    Class indices follow the sorted folder names (torchvision's ``ImageFolder``).
    """
    root = cfg.path.rstrip("/")
    files = [f for f in store.list_files(root) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise DataError(f"{field_name}.path={cfg.path!r}: no image files "
                        f"({', '.join(IMAGE_EXTENSIONS)}) below it")
    rel = [f[len(root) + 1:].split("/") for f in files]
    name = posixpath.basename(root) or root
    if all(len(parts) >= 2 for parts in rel):
        classes = sorted({parts[0] for parts in rel})
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[parts[0]] for parts in rel], np.int64)
        return files, labels, classes, f"{name} ({{n}} images, {len(classes)} classes)"
    return files, None, [], f"{name} ({{n}} images)"


def _read_file_list(store: Store, cfg: SourceConfig, field_name: str
                    ) -> tuple[list[str], np.ndarray | None, list[str], str]:
    """Paths (relative to the list's folder) and optional labels (ints or class names)."""
    where = f"{field_name}.path={cfg.path!r}"
    base = posixpath.dirname(cfg.path.rstrip("/"))
    suffix = posixpath.splitext(cfg.path)[1].lower()
    if suffix in PARQUET_EXTENSIONS:
        fs, inner = store.resolve(cfg.path)
        table = pq.read_table(inner, filesystem=fs)
        columns = {n: table.column(n).to_pylist() for n in table.column_names}
    elif suffix in (".csv", ".tsv"):
        text = store.read(cfg.path).decode("utf-8-sig")
        rows = list(csv.DictReader(io.StringIO(text),
                                   delimiter="\t" if suffix == ".tsv" else ","))
        columns = {k: [r[k] for r in rows] for k in (rows[0].keys() if rows else [])}
    else:  # one path per line; blank lines and # comments ignored
        lines = store.read(cfg.path).decode("utf-8-sig").splitlines()
        columns = {"path": [ln.strip() for ln in lines
                            if ln.strip() and not ln.lstrip().startswith("#")]}
    path_col = next((c for c in _PATH_COLUMNS if c in columns), None)
    if path_col is None:
        raise DataError(f"{where}: no column of paths; expected one of {list(_PATH_COLUMNS)}, "
                        f"found {sorted(columns)}")
    paths = [store.join(base, str(p)) for p in columns[path_col] if p not in (None, "")]
    if not paths:
        raise DataError(f"{where}: lists no image paths")
    label_col = cfg.label_column or ("label" if "label" in columns else "")
    if label_col and label_col not in columns:
        raise DataError(f"{field_name}.label_column={label_col!r}: not a column of {cfg.path} "
                        f"(columns: {sorted(columns)})")
    labels, classes = (_labels_of(columns[label_col], f"{where}[{label_col!r}]") if label_col
                       else (None, []))
    if labels is not None and len(labels) != len(paths):
        raise DataError(f"{where}: {len(paths)} paths but {len(labels)} labels (empty paths?)")
    n_classes = f", {len(classes)} classes" if classes else ""
    return paths, labels, classes, f"{posixpath.basename(cfg.path)} ({{n}} images{n_classes})"


def _labels_of(values: list[Any], where: str) -> tuple[np.ndarray, list[str]]:
    """Integer labels as they are; class names -> indices of their sorted order."""
    text = [str(v).strip() for v in values]
    if all(t.lstrip("-").isdigit() for t in text):
        ints = np.array([int(t) for t in text], np.int64)
        if ints.min() < 0:
            raise DataError(f"{where}: labels must be >= 0, found {ints.min()}")
        return ints, [str(i) for i in range(int(ints.max()) + 1)]
    classes = sorted(set(text))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[t] for t in text], np.int64), classes


def _read_parquet(store: Store, cfg: SourceConfig, channels: int, size: int, seed: int,
                  policy: DecodePolicy, field_name: str) -> ImageSource:
    fs, inner = store.resolve(cfg.path)
    schema = _parquet_schema(store, cfg)
    where = f"{field_name}.path={cfg.path!r}"
    image_col = cfg.image_column or next(
        (c for c in _IMAGE_COLUMNS if c in schema.names and _is_image_column(schema.field(c))),
        next((f.name for f in schema if _is_image_column(f)), ""))
    if not image_col or image_col not in schema.names:
        raise DataError(f"{field_name}.image_column={cfg.image_column!r}: {cfg.path} has no "
                        f"encoded-image column (binary, or a struct with 'bytes'); columns: "
                        f"{schema.names}")
    label_col = cfg.label_column or ("label" if "label" in schema.names else "")
    if label_col and label_col not in schema.names:
        raise DataError(f"{field_name}.label_column={label_col!r}: not a column of {cfg.path} "
                        f"(columns: {schema.names})")
    columns = [image_col, *([label_col] if label_col else [])]
    ds = ray.data.read_parquet(inner, filesystem=fs, columns=columns, include_paths=True,
                               shuffle="files")
    rows = ds.count()
    if rows == 0:
        raise DataError(f"{where}: the parquet data has no rows")
    if cfg.limit and cfg.limit < rows:
        ds, rows = ds.randomize_block_order(seed=seed).limit(cfg.limit), cfg.limit
    ds = ds.rename_columns({image_col: "bytes", **({label_col: "label"} if label_col else {})})
    classes: list[str] = []
    if label_col:  # the class names of the whole table, from its (small) label column alone
        values = pq.read_table(inner, filesystem=fs, columns=[label_col]).column(0).to_pylist()
        _, classes = _labels_of(values, f"{where}[{label_col!r}]")
    desc = f"{posixpath.basename(cfg.path.rstrip('/'))} ({{n}} images" + (
        f", {len(classes)} classes)" if classes else ")")
    return _decode_source(ds, rows, store, "bytes", channels, size, policy, classes, desc, cfg,
                          field_name)


def _decode_source(items: ray.data.Dataset, total: int, store: Store, column: str,
                   channels: int, size: int, policy: DecodePolicy, classes: list[str],
                   description: str, cfg: SourceConfig, field_name: str) -> ImageSource:
    """Decode every row once (Ray tasks), count the bad ones, apply ``policy``, keep the rest."""
    decoded = items.map_batches(
        _decode_batch,  # type: ignore[arg-type]  # Ray's stub expects a one-argument callable
        fn_kwargs={"store": store, "column": column, "channels": channels, "size": size,
                   "policy": policy, "class_names": classes},
        batch_size=64, batch_format="numpy").materialize()
    errors = Counter[str]()
    for batch in decoded.select_columns(["error"]).iter_batches(batch_format="numpy",
                                                               batch_size=None):
        errors.update(e for e in batch["error"].tolist() if e)
    examples = [f"{_short(r['path'], cfg.path)}: {r['error']}" for r in
                decoded.map_batches(_bad_rows, batch_format="numpy").take(_EXAMPLES)]
    check_bad_files(dict(errors), total, policy, field_name, cfg.path, examples)
    good = decoded.map_batches(_good_rows, batch_format="numpy").materialize()
    num = total - sum(errors.values())
    return ImageSource(good, num, classes, description.replace("{n}", str(num)), dict(errors),
                       examples)


def check_bad_files(skipped: dict[str, int], total: int, policy: DecodePolicy,
                    field_name: str, path: str, examples: list[str]) -> None:
    """Stop the run when ``policy`` says so: any bad file under "fail", or too many of them.

    Raises:
        DataError: naming the policy field, the counts per reason and example files.
    """
    bad = sum(skipped.values())
    sample = "; ".join(examples[:5])
    if bad and policy.on_error == "fail":
        raise DataError(f"data.on_error='fail': {bad} of the {total} image files in {path} are "
                        f"bad {skipped}, e.g. {sample}. Set data.on_error=skip to skip them")
    if bad == total:
        raise DataError(f"{field_name}.path={path!r}: none of the {total} image files could be "
                        f"decoded {skipped}, e.g. {sample}")
    if bad > policy.max_bad_fraction * total:
        raise DataError(f"data.max_bad_fraction={policy.max_bad_fraction:g}: {bad} of the "
                        f"{total} image files in {path} ({100 * bad / total:.1f}%) are bad "
                        f"{skipped}, e.g. {sample}. Is {field_name}.path the right data? Raise "
                        "data.max_bad_fraction to train on the rest")


def _decode_batch(batch: dict[str, np.ndarray], store: Store, column: str, channels: int,
                  size: int, policy: DecodePolicy, class_names: list[str]
                  ) -> dict[str, np.ndarray]:
    """Rows of paths or bytes -> ``image`` (zeros where bad) and ``error`` ("" where good)."""
    n = len(batch[column])
    images = np.zeros((n, size, size, channels), np.uint8)
    errors = np.full(n, "", dtype=object)
    for i, item in enumerate(batch[column]):
        try:
            if column == "path":
                images[i] = read_and_decode(store.read, str(item), channels, size,
                                            policy.max_pixels, policy.min_side)
            else:
                images[i] = decode_image(_as_bytes(item), channels, size, policy.max_pixels,
                                         policy.min_side)
        except BadImage as e:
            errors[i] = e.reason
    out: dict[str, np.ndarray] = {"image": images, "error": errors.astype(str),
                                  "path": np.asarray(batch["path"]).astype(str)}
    if "label" in batch:
        out["label"] = _label_indices(batch["label"], class_names)
    return out


def _as_bytes(item: Any) -> bytes:
    """A parquet image cell: bytes, or a ``{"bytes": ..., "path": ...}`` struct (HF datasets)."""
    if isinstance(item, dict):
        item = item.get("bytes")
    return bytes(item) if item is not None else b""


def _label_indices(labels: np.ndarray, class_names: list[str]) -> np.ndarray:
    if np.issubdtype(labels.dtype, np.integer):
        return labels.astype(np.int64)
    index = {c: i for i, c in enumerate(class_names)}
    return np.array([index[str(v).strip()] for v in labels], np.int64)


def _bad_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    bad = batch["error"] != ""
    return {"path": batch["path"][bad], "error": batch["error"][bad]}


def _good_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    good = batch["error"] == ""
    return {k: v[good] for k, v in batch.items() if k != "error"}


def _short(path: str, root: str) -> str:
    return path[len(root.rstrip("/")) + 1:] if path.startswith(root.rstrip("/") + "/") else path


def _parquet_schema(store: Store, cfg: SourceConfig) -> pa.Schema:
    fs, inner = store.resolve(cfg.path)
    if store.kind(cfg.path) == "dir":
        first = next((p for p in store.list_files(cfg.path)
                      if p.lower().endswith(PARQUET_EXTENSIONS)), None)
        if first is None:
            raise DataError(f"{cfg.path}: no .parquet files in it")
        fs, inner = store.resolve(first)
    return pq.read_schema(inner, filesystem=fs)


def _is_image_column(f: pa.Field) -> bool:
    t = f.type
    if pa.types.is_struct(t):
        return any(t.field(i).name == "bytes" and _is_binary(t.field(i).type)
                   for i in range(t.num_fields))
    return _is_binary(t)


def _is_binary(t: pa.DataType) -> bool:
    return bool(pa.types.is_binary(t) or pa.types.is_large_binary(t))


def _parquet_is_file_list(store: Store, cfg: SourceConfig) -> bool:
    """A parquet file with a path column and no image column lists files; otherwise images."""
    schema = _parquet_schema(store, cfg)
    return (not any(_is_image_column(f) for f in schema)
            and any(c in schema.names for c in _PATH_COLUMNS))


def _may_hold_cifar(names: list[str]) -> bool:
    return bool({"batches.meta", "meta", "cifar-10-batches-py", "cifar-100-python"} & set(names))


# ---------------------------------------------------------------------------------------------
# Arrays: IDX, npz, npy, CIFAR, generated
# ---------------------------------------------------------------------------------------------


def _load_arrays(store: Store, cfg: SourceConfig, fmt: str, seed: int, field_name: str
                 ) -> Arrays:
    if fmt == "idx":
        return load_idx(store, cfg.path, store.list_top(cfg.path), cfg.split, field_name)
    if fmt == "npz":
        return load_npz(store, cfg.path)
    if fmt == "npy":
        return load_npy(store, cfg.path)
    if fmt == "cifar":
        found = cifar_folder(store.list_files(cfg.path), cfg.path)
        if found is None:
            raise DataError(f"{field_name}.path={cfg.path!r}: no cifar-10-batches-py or "
                            "cifar-100-python folder (torchvision's layout) there")
        return load_cifar(store, *found, cfg.split, field_name)
    images, labels = generated.shapes(n=cfg.limit or 2000, size=32, seed=seed)
    return Arrays(images, labels, list(generated.CLASSES), "generated shapes (32x32, 8 classes)")


def arrays_to_dataset(images: np.ndarray, labels: np.ndarray | None,
                      rows_per_block: int = 0, with_index: bool = False) -> ray.data.Dataset:
    """(N, H, W, C) uint8 (+ (N,) labels) -> Ray Dataset with ``image`` (+ ``label``) columns.

    Blocks hold ``rows_per_block`` rows; 0 = about 4 MB each (2048-row blocks of 224 px images
    were 300 MB: one block, one task, for a whole small epoch), and at least 8 blocks when every
    block can still hold 64 rows. ``with_index`` adds each row's
    position as ``index``, so results computed out of order can be put back in place.
    """
    if not rows_per_block:
        row_bytes = max(1, int(np.prod(images.shape[1:])))
        by_size = min(_BLOCK_BYTES // row_bytes, -(-len(images) // _MIN_BLOCKS))
        rows_per_block = int(np.clip(by_size, *_BLOCK_ROWS))
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
