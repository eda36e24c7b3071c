"""Image sources as Ray Datasets of ``image`` (uint8 H, W, C), ``label`` and ``path``.

A source (``data.source``, see :class:`~raysl.config.SourceConfig`) is listed once, its reader
picked by name or detected (:mod:`raysl.data.readers`), then read by Ray:

- **Arrays** (IDX, .npz, .npy, CIFAR, generated) are read whole by the driver and put in the
  object store as blocks, in a seeded random order; one larger than
  ``data.source.max_array_bytes`` is refused with the ``raysl shards`` command that converts it.
- **Encoded images** (folders, file lists, parquet, tar shards) are read and decoded by Ray Data
  read tasks, one per unit (256 files, or one shard; each task carries only its unit, so
  planning is linear in the files), bad images skipped and counted in a
  :class:`~raysl.data.ledger.DecodeLedger`. ``data.cache`` says whether the decoded images are
  kept in the object store (``memory``: decoded once, the exact bad-file counts checked before
  training) or decoded again every epoch as a stream (``none``: the object store holds a
  bounded window, the units come in a new seeded order every epoch); ``auto`` keeps them when
  they fit :data:`CACHE_FRACTION` of the cluster's object store.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from ray.data.extensions import ArrowTensorArray

from raysl import catalog
from raysl.config import DataConfig, SourceConfig
from raysl.data.decode import BadImage, decode_image
from raysl.data.ledger import (
    DEFAULT_POLICY,
    DecodeLedger,
    DecodePolicy,
    check_bad_files,
)
from raysl.data.readers.base import (
    Arrays,
    Encoded,
    Reader,
    Target,
    Unit,
    list_target,
    unit_sizes,
)
from raysl.data.readers.encoded import encoded_bound
from raysl.data.storage import Store, has_braces
from raysl.errors import DataError
from raysl.redact import redact

__all__ = ["DEFAULT_POLICY", "DataError", "DecodePolicy", "ImageSource", "Reading",
           "arrays_to_dataset", "check_source", "detect_format", "read_source", "seeded_order",
           "to_channels", "to_numpy"]

# data.cache=auto keeps the decoded images in the object store when they need at most this
# fraction of it: Ray Data keeps half of the store for the blocks in flight (its default).
CACHE_FRACTION = 0.4
_BLOCK_BYTES = 4 * 2**20  # array sources: ~4 MB blocks, many to shuffle and spread over tasks
_BLOCK_ROWS = (64, 4096)  # ... but at least one augmentation batch, at most this many rows
_MIN_BLOCKS = 8  # ... and, data allowing, this many: a small set still spreads over tasks/nodes
_DECODED_BLOCK_ROWS = 64  # decoded images per output block of a read task


@dataclass
class ImageSource:
    """A readable image collection.

    Attributes:
        dataset: Ray Dataset with columns ``image`` (H, W, C) uint8, ``label`` if labeled,
            ``index`` (a row's fixed position in the source's seeded order) and ``path`` for
            encoded images.
        num_images: rows per pass; streaming, the images listed (bad ones are only found, and
            dropped, as the stream decodes them).
        class_names: label index -> name; empty when unlabeled.
        description: one line for logs and model descriptions.
        cache: ``arrays`` (read whole), ``memory`` (decoded once) or ``none`` (streamed).
        cache_reason: why, for the log (``data.cache: auto`` explains its choice).
        skipped: bad files per reason, e.g. ``{"corrupt": 3}`` (streaming: see :meth:`tally`).
        skipped_examples: a few offending paths with their reason.
        notes: lines worth logging (e.g. shards counted for want of an index).
        ledger: the bad-file ledger of an encoded source.
        units: the datasource of an encoded source, to read parts of it again.
        fingerprint: identifies the images selected (reader, files or shards and their
            counts, or the arrays' bytes; the subset and order drawn): a model's lineage.
    """

    dataset: ray.data.Dataset
    num_images: int
    class_names: list[str]
    description: str
    cache: str = "arrays"
    cache_reason: str = ""
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ledger: Any = None
    fingerprint: str = ""
    units: UnitSource | None = None  # the encoded source's read tasks (None for arrays)
    seconds: dict[str, float] = field(default_factory=dict)  # list, open, decode: wall clock

    @property
    def timing(self) -> str:
        """Where opening the source took its time, for the ``[raysl] data:`` line."""
        names = {"list": "listed", "open": "opened", "decode": "decoded once"}
        return ", ".join(f"{names[k]} in {v:.1f} s" for k, v in self.seconds.items())

    @property
    def labeled(self) -> bool:
        """Whether rows carry a ``label``."""
        return bool(self.class_names)

    def tally(self) -> None:
        """Refresh ``skipped`` from the ledger (a stream counts as it decodes)."""
        if self.ledger is not None:
            self.skipped, self.skipped_examples, _ = ray.get(self.ledger.totals.remote())

    def stream_failure(self) -> str:
        """Why the stream stopped the run (too many bad images), or ""."""
        return str(ray.get(self.ledger.verdict.remote())) if self.ledger is not None else ""


@dataclass(frozen=True)
class Reading:
    """How a source's images are read: what :func:`read_source` takes beside the source.

    Attributes:
        channels: 1 or 3; images are converted to this.
        decode_size: image files are resized so the shorter side is this, then centre-cropped
            square (so batches stack); arrays keep their size.
        policy: what to do with bad image files.
        cache: ``memory``, ``none`` or ``auto`` (``data.cache``).
        resources: custom resources each decode task asks for (pins it to data nodes).
        decode_cpus: logical CPUs each decode task reserves.
    """

    channels: int
    decode_size: int
    policy: DecodePolicy = DEFAULT_POLICY
    cache: str = "memory"
    resources: dict[str, float] | None = None
    decode_cpus: float = 1.0

    @classmethod
    def of(cls, data: DataConfig, cache: str = "memory") -> Reading:
        """``data``'s channels, decode size and bad-file policy, kept as ``cache`` says."""
        return cls(data.channels, data.effective_decode_size, DecodePolicy.of(data), cache)

    @classmethod
    def training(cls, data: DataConfig, resources: dict[str, float] | None) -> Reading:
        """How pretraining reads ``data.source``: cached as ``data.cache`` says.

        Decoded by tasks of ``data.augment_cpus`` CPUs each, on the nodes ``resources`` marks
        (any node if None), as the augmentation tasks are.
        """
        return dataclasses.replace(cls.of(data, data.cache), resources=resources,
                                   decode_cpus=data.augment_cpus)


def read_source(cfg: SourceConfig, reading: Reading, seed: int = 0,
                field_name: str = "data.source") -> ImageSource:
    """Open the images ``cfg`` points at.

    Args:
        cfg: format, path or URI, split, limit, endpoint, columns.
        reading: channels, decode size, bad-file policy, caching and decode tasks.
        seed: seeds the row order, the subset drawn when ``cfg.limit`` is set, and (streaming)
            each epoch's unit order.
        field_name: config path of ``cfg``, used in error messages.

    Raises:
        DataError: missing path, unknown layout, no images, too many bad files.
    """
    source = _read(cfg, reading, seed, field_name)
    if not cfg.labels and source.labeled:
        source.dataset = source.dataset.drop_columns(["label"])
        source.class_names = []
        source.description += f" (labels not used: {field_name}.labels=false)"
    # Shown, logged, and written into registered models' descriptions and tags.
    source.description = redact(source.description)
    return source


def _read(cfg: SourceConfig, reading: Reading, seed: int, field_name: str) -> ImageSource:
    """:func:`read_source`, labels included."""
    channels, decode_size, policy = reading.channels, reading.decode_size, reading.policy
    store = Store.from_env(cfg.endpoint)
    clock = time.perf_counter()
    target = Target.of("", "none") if cfg.is_made else \
        list_target(cfg.path, store, field_name)
    seconds = {"list": time.perf_counter() - clock}
    reader = pick_reader(cfg, target, store, field_name)
    if hasattr(reader, "max_encoded_bytes"):  # the shard readers bound what they inflate
        reader.max_encoded_bytes = encoded_bound(policy.max_pixels)
    opened = reader.open(cfg, target, store, seed, field_name)
    seconds["open"] = time.perf_counter() - clock - seconds["list"]
    if isinstance(opened, Arrays):
        arrays = _from_arrays(opened, cfg, channels, seed)
        arrays.seconds = seconds
        return arrays
    mode, reason = _cache_mode(reading.cache, opened.num_items * decode_size ** 2 * channels)
    ledger = DecodeLedger.remote(opened.num_items, policy, field_name, cfg.path,  # type: ignore[attr-defined]
                                 mode == "none")
    source = UnitSource(opened, store, channels, decode_size, policy, ledger, seed, cfg.path,
                        shuffle=mode == "none")
    dataset = ray.data.read_datasource(source, num_cpus=reading.decode_cpus,
                                       resources=reading.resources or None)
    out = ImageSource(dataset, opened.num_items, opened.class_names, "", mode, reason,
                      notes=list(opened.notes), ledger=ledger,
                      fingerprint=_fingerprint(reader.name, cfg, opened), units=source,
                      seconds=seconds)
    if mode == "memory":
        clock = time.perf_counter()
        out.dataset = dataset.materialize()
        seconds["decode"] = time.perf_counter() - clock
        out.tally()
        check_bad_files(out.skipped, opened.num_items, policy, field_name, cfg.path,
                        out.skipped_examples)
        out.num_images = opened.num_items - sum(out.skipped.values())
    out.description = opened.description.replace("{n}", str(out.num_images))
    return out


def pick_reader(cfg: SourceConfig, target: Target, store: Store, field_name: str) -> Reader:
    """The reader ``cfg.format`` names (checked against the path), or the one that detects it.

    Raises:
        DataError: the named reader reads another kind of path, or nothing detects it.
    """
    where = f"{field_name}.path={cfg.path!r}"
    if cfg.format != "auto":
        reader: Reader = catalog.get("reader", cfg.format)()
        kind = "file" if target.kind == "pattern" else target.kind
        if reader.reads in ("file", "dir") and kind != reader.reads:
            needs = "directory" if reader.reads == "dir" else "file"
            has = "directory" if kind == "dir" else "file"
            raise DataError(f"{where}: format {cfg.format!r} reads a {needs}, this is a {has}")
        return reader
    readers = sorted(catalog.entries("reader").values(), key=lambda r: r.detect_order)
    for cls in readers:
        if cls.detect(target, store):
            found: Reader = cls()
            return found
    raise DataError(f"{where}: a file of unknown kind; expected .npz, .npy, .parquet, .tar, a "
                    "list of image paths (.txt, .lst, .csv, .tsv) or a directory; set "
                    f"{field_name}.format to say which")


def check_source(cfg: SourceConfig, field_name: str) -> None:
    """Fail fast, without listing: the path exists and fits a named format.

    Raises:
        DataError: naming the field.
    """
    if cfg.is_made:
        return
    store = Store.from_env(cfg.endpoint)
    where = f"{field_name}.path={cfg.path!r}"
    probe = cfg.path if not has_braces(cfg.path) else None
    try:
        kind = store.kind(probe) if probe else "pattern"
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"{where}: cannot be reached ({e})") from None
    if kind == "missing":
        raise DataError(f"{where}: does not exist")
    if kind == "other":
        raise DataError(f"{where}: is neither a regular file nor a directory")
    if cfg.format != "auto" and kind != "pattern":
        pick_reader(cfg, Target.of(cfg.path, kind), store, field_name)


def detect_format(cfg: SourceConfig, field_name: str) -> str:
    """The reader name ``cfg`` resolves to (lists the path).

    Raises:
        DataError: as :func:`read_source`.
    """
    if cfg.format != "auto":
        check_source(cfg, field_name)
        return cfg.format
    store = Store.from_env(cfg.endpoint)
    return pick_reader(cfg, list_target(cfg.path, store, field_name), store, field_name).name


def _fingerprint(reader: str, cfg: SourceConfig, encoded: Encoded) -> str:
    """A short hash of what an encoded source selects: its files or shards, in their order."""
    digest = hashlib.sha256(f"{reader}|{cfg.split}|{cfg.limit}".encode())
    for unit in encoded.units:
        digest.update(f"{unit.shard}:{unit.take}:{unit.items}|".encode())
        digest.update("\n".join(unit.paths).encode())
    digest.update("\n".join(encoded.class_names).encode())
    return f"sha256:{digest.hexdigest()[:16]}"


def _cache_mode(cache: str, decoded_bytes: int) -> tuple[str, str]:
    """``(memory | none, why)`` for ``data.cache``."""
    if cache != "auto":
        return cache, f"data.cache={cache}"
    store_bytes = float(ray.cluster_resources().get("object_store_memory", 0))  # type: ignore[no-untyped-call]
    size = f"{decoded_bytes / 1e9:.2f} GB decoded"
    budget = f"{CACHE_FRACTION:.0%} of the {store_bytes / 1e9:.2f} GB object store"
    if decoded_bytes <= CACHE_FRACTION * store_bytes:
        return "memory", f"data.cache=auto: {size} fit {budget}, decoded once"
    return "none", f"data.cache=auto: {size} exceed {budget}, decoded every epoch as a stream"


# ---------------------------------------------------------------------------------------------
# Encoded images: a Ray Data datasource of units
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Decoding:
    """What every read task of a source shares: a few hundred bytes, never the units.

    ``class_names`` is an object-store reference (the shard readers map label names to
    indices; 21,843 ImageNet-22k names would be ~0.4 MB in every task otherwise).
    """

    reader: Reader
    store: Store
    channels: int
    size: int
    policy: DecodePolicy
    ledger: Any  # DecodeLedger actor, or None for a read that does not count bad files
    root: str
    labeled: bool
    class_names: Any  # ray.ObjectRef[list[str]]


@dataclass(frozen=True)
class _UnitRead:
    """One read task's function: its own unit and its first row index, and what all share.

    Pickled alone for each task, so a task's bytes grow with the files in its unit (256
    paths, ~12 kB), not with the source: planning an epoch of a million files is linear.
    """

    decoding: _Decoding
    unit: Unit
    first: int  # row index of the unit's first item (bad items skip theirs)
    execution: int

    # Ray Data names read tasks by their function's __name__ in its logs and warnings.
    __name__ = "read_unit"

    def __call__(self) -> Iterator[pa.Table]:
        """Decoded blocks of the unit; its skipped images go to the ledger (which may stop it)."""
        d = self.decoding
        class_names = ray.get(d.class_names) if self.unit.shard else []
        images: list[np.ndarray] = []
        labels: list[int] = []
        paths: list[str] = []
        index: list[int] = []
        skipped: Counter[str] = Counter()
        examples: list[str] = []
        seen = 0
        for name, payload, label in d.reader.read_unit(self.unit, d.store, class_names):
            seen += 1
            try:
                if isinstance(payload, str):
                    raise BadImage(payload)
                images.append(decode_image(payload, d.channels, d.size, d.policy.max_pixels,
                                           d.policy.min_side))
            except BadImage as e:
                skipped[e.reason] += 1
                examples.append(f"{_short(name, d.root)}: {e.reason}")
                continue
            labels.append(label if label is not None else 0)
            paths.append(name)
            index.append(self.first + seen - 1)
            if len(images) == _DECODED_BLOCK_ROWS:
                yield _block(images, labels, paths, index, d.labeled)
                images, labels, paths, index = [], [], [], []
        if images:
            yield _block(images, labels, paths, index, d.labeled)
        if d.ledger is None:  # a read beside training (first_images, evaluation)
            return
        verdict = ray.get(d.ledger.report.remote(self.execution, seen, dict(skipped),
                                                 examples[:10]))
        if verdict:
            raise DataError(verdict)


class UnitSource(Datasource):
    """Read tasks that read and decode one unit each; in a new seeded order per execution.

    Ray Data calls :meth:`get_read_tasks` at the start of every execution (every epoch), so
    with ``shuffle`` each epoch reads the units in its own order, drawn from ``(seed, epoch)``.
    Each task carries only its unit (:class:`_UnitRead`); the source itself, with every
    unit's paths, is pickled once, to the process that plans the executions.
    """

    def __init__(self, encoded: Encoded, store: Store, channels: int, size: int,
                 policy: DecodePolicy, ledger: Any, seed: int, root: str,
                 shuffle: bool) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.encoded, self.seed, self.shuffle = encoded, seed, shuffle
        self.decoding = _Decoding(encoded.reader, store, channels, size, policy, ledger, root,
                                  bool(encoded.class_names), ray.put(list(encoded.class_names)))
        self.executions = 0
        # Row indices: unit i's items are offsets[i], offsets[i] + 1, ... (bad ones skip theirs).
        self.sizes = unit_sizes(encoded.units)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])

    def uncounted(self) -> UnitSource:
        """The same units, read in their listed order, their bad files not counted."""
        units = copy.copy(self)
        units.decoding = dataclasses.replace(self.decoding, ledger=None)
        units.shuffle, units.executions = False, 0
        return units

    def estimate_inmemory_data_size(self) -> int:
        """Bytes of all decoded images."""
        return int(self.offsets[-1]) * self.decoding.size ** 2 * self.decoding.channels

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        """One task per unit, ordered for this execution."""
        execution, self.executions = self.executions, self.executions + 1
        units = self.encoded.units
        order = (np.random.default_rng([self.seed, execution]).permutation(len(units))
                 if self.shuffle else np.arange(len(units)))
        row_bytes = self.decoding.size ** 2 * self.decoding.channels
        return [ReadTask(_UnitRead(self.decoding, units[i], int(self.offsets[i]), execution),
                         BlockMetadata(num_rows=int(self.sizes[i]),
                                       size_bytes=int(self.sizes[i]) * row_bytes,
                                       exec_stats=None, input_files=None),
                         per_task_row_limit=per_task_row_limit)
                for i in order]


def uncounted_read(source: ImageSource, num_cpus: float = 1.0,
                   resources: dict[str, float] | None = None) -> ray.data.Dataset:
    """A second read of a source beside its training stream, which alone counts bad files.

    A streamed source decodes its units again in their listed order, skipping bad files
    without reporting them to the ledger: the training stream reports the same files, and two
    reports would double the counts (and the images subtracted from the total). Other sources
    are read from the object store, which holds no bad files.
    """
    if source.cache != "none" or source.units is None:
        return source.dataset
    dataset: ray.data.Dataset = ray.data.read_datasource(source.units.uncounted(),
                                                         num_cpus=num_cpus,
                                                         resources=resources or None)
    return dataset


def first_images(source: ImageSource, n: int) -> np.ndarray:
    """The first ``n`` images of ``source`` in its seeded order: (n, H, W, C) uint8.

    The same images for the same source and seed, in every run (the label-free monitors' fixed
    sample). A cached or array source is cut at ``n`` rows; a streamed one is read on its own,
    its units in their listed order, until ``n`` images are decoded: only its first units, bad
    files skipped without being counted (the training stream counts them) and no epoch of the
    training stream used up.
    """
    if source.cache == "none" and source.units is not None:
        dataset = uncounted_read(source)
    else:  # a copy with its own context: preserving order must not slow training down
        dataset = ray.data.Dataset.copy(source.dataset, _deep_copy=True)
    dataset.context.execution_options.preserve_order = True
    images, index = [], []
    for batch in dataset.select_columns(["image", "index"]).limit(n).iter_batches(
            batch_size=None, batch_format="numpy"):
        images.append(batch["image"])
        index.append(batch["index"])
    if not images:
        raise DataError(f"no images to sample from {source.description}")
    return np.concatenate(images)[np.argsort(np.concatenate(index), kind="stable")]


def _block(images: list[np.ndarray], labels: list[int], paths: list[str], index: list[int],
           labeled: bool) -> pa.Table:
    cols: dict[str, Any] = {"image": ArrowTensorArray.from_numpy(np.stack(images))}
    if labeled:
        cols["label"] = pa.array(labels, pa.int64())
    cols["path"] = pa.array(paths, pa.string())
    cols["index"] = pa.array(index, pa.int64())
    return pa.table(cols)


def _short(path: str, root: str) -> str:
    return path[len(root.rstrip("/")) + 1:] if path.startswith(root.rstrip("/") + "/") else path


# ---------------------------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------------------------


def _from_arrays(arrays: Arrays, cfg: SourceConfig, channels: int, seed: int) -> ImageSource:
    images, labels = to_channels(arrays.images, channels), arrays.labels
    order = seeded_order(len(images), cfg.limit, seed)
    description = arrays.description
    if cfg.limit and cfg.limit < len(images) and not cfg.is_made:
        description += f", {cfg.limit} drawn with seed {seed}"
    images, labels = images[order], (labels[order] if labels is not None else None)
    digest = hashlib.sha256(images.tobytes())
    if labels is not None:
        digest.update(labels.tobytes())
    return ImageSource(arrays_to_dataset(images, labels, with_index=True), len(images),
                       arrays.class_names if labels is not None else [], description,
                       cache_reason="arrays, read whole",
                       fingerprint=f"sha256:{digest.hexdigest()[:16]}")


def seeded_order(n: int, limit: int, seed: int) -> np.ndarray:
    """An array source's rows in their seeded order (``limit`` of them if set).

    Row ``index`` of a read is row ``seeded_order(...)[index]`` of the arrays (``raysl
    shards`` relies on it to write chosen rows).
    """
    return np.random.default_rng(seed).permutation(n)[: limit or None]


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
    if not images:
        raise DataError(f"{source.description}: no images could be read")
    return np.concatenate(images), (np.concatenate(labels) if labels else None)
