"""The reader interface: a source listed once in, a description of what to read out. No Ray here.

A reader is registered by name (``data.source.format``) and turns a :class:`Target` (the path,
listed once) into either

- :class:`Arrays`: already-decoded pixels read whole (IDX, .npz, .npy, CIFAR, generated), or
- :class:`Encoded`: encoded images in :class:`Unit` s, each one read task's share (a chunk of
  image files, or one shard). :meth:`Reader.read_unit` yields a unit's images as bytes; the Ray
  side (:mod:`raysl.data.source`) decodes them, streaming or once, and counts the bad ones.

``format: auto`` asks every reader, in ``detect_order``, whether the target is its kind.
"""

from __future__ import annotations

import functools
import posixpath
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raysl.config import SourceConfig
from raysl.data.outputs import MANIFEST
from raysl.data.readers.encoded import MAX_ENCODED_BYTES
from raysl.data.storage import FileTooLarge, Store, expand_braces, has_braces, paths_array
from raysl.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
FILES_PER_UNIT = 256  # image-file sources: one read task per this many files
BAD_LABEL = -1  # a listed label that can be no class: the sample is skipped as bad_label


@dataclass
class Arrays:
    """Images (N, H, W[, C]) uint8, labels (N,) or None, class names, one-line description."""

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str]
    description: str


@dataclass(frozen=True)
class Target:
    """What a source's path names, listed once; every reader detects and reads from this.

    Attributes:
        path: the path or URI as written (a brace pattern is kept as it is).
        kind: ``"file"``, ``"dir"`` or ``"pattern"`` (a brace pattern of files).
        files: ``dir``: every visible regular file below it, recursively, sorted; ``pattern``:
            the files it expands to; ``file``: the file itself. An Arrow ``large_string``
            array: a folder of a million images is one buffer, not a million Python strings.
    """

    path: str
    kind: str
    files: pa.Array

    @classmethod
    def of(cls, path: str, kind: str, files: Sequence[str] = ()) -> Target:
        """A target whose files are given as strings."""
        return cls(path, kind, paths_array(list(files)))

    @property
    def suffix(self) -> str:
        """Lower-case extension of the path (of the pattern's files for a pattern)."""
        name = str(self.files[0]) if self.kind == "pattern" and len(self.files) else self.path
        return posixpath.splitext(name.rstrip("/"))[1].lower()

    @functools.cached_property
    def top_names(self) -> list[str]:
        """Names directly in the directory (files and sub-folders), sorted.

        An output's manifest (:data:`~raysl.data.outputs.MANIFEST`) is not one of them: a folder
        of shards written by raysl is detected by its shards.
        """
        root = self.path.rstrip("/") + "/"
        inside = self.files.filter(pc.starts_with(self.files, root))
        rel = pc.utf8_slice_codeunits(inside, len(root))
        first = pc.list_element(pc.split_pattern(rel, "/", max_splits=1), 0)
        return sorted(n for n in pc.unique(first).to_pylist() if n != MANIFEST)

    def files_ending(self, extensions: tuple[str, ...]) -> pa.Array:
        """The files whose names end with one of ``extensions`` (any case), in order."""
        lower = pc.utf8_lower(self.files)
        keep = functools.reduce(pc.or_, (pc.ends_with(lower, e) for e in extensions))
        return self.files.filter(keep)

    @property
    def name(self) -> str:
        """The last part of the path, for descriptions."""
        return posixpath.basename(self.path.rstrip("/")) or self.path


def list_target(path: str, store: Store, field_name: str) -> Target:
    """List ``path`` once: a file, a directory (recursively) or a brace pattern of files.

    Raises:
        DataError: it does not exist, cannot be reached, or is neither a file nor a directory.
    """
    where = f"{field_name}.path={path!r}"
    try:
        if has_braces(path):
            try:
                files = expand_braces(path)
            except ValueError as e:
                raise DataError(f"{where}: {e}") from None
            missing = [f for f in files if store.kind(f) != "file"]
            if missing:
                raise DataError(f"{where}: {len(missing)} of the {len(files)} files of the "
                                f"pattern do not exist, e.g. {missing[0]}")
            return Target.of(path, "pattern", files)
        kind = store.kind(path)
        if kind == "missing":
            raise DataError(f"{where}: does not exist")
        if kind == "other":
            raise DataError(f"{where}: is neither a regular file nor a directory")
        if kind == "file":
            return Target.of(path, kind, [path])
        return Target(path, kind, store.list_files(path))
    except (OSError, pa.ArrowInvalid) as e:  # unreachable, no credentials, no such bucket,
        # or a URI pyarrow cannot take (s3://key:secret@bucket: keys go in AWS_* variables)
        raise DataError(f"{where}: cannot be reached ({e})") from None


@dataclass(frozen=True)
class Unit:
    """One read task's share of an encoded source.

    Either image files read one by one (``paths``, with ``labels`` when labeled), or one shard
    (a tar or parquet file) read from the start, of which ``take`` images are kept.
    """

    items: int  # images it yields (before bad ones are dropped)
    paths: tuple[str, ...] = ()
    labels: tuple[int, ...] = ()
    shard: str = ""
    take: int = 0  # shards: keep only the first `take` images (0 = all), for data.source.limit


class FileUnits(Sequence[Unit]):
    """Image files in units of :data:`FILES_PER_UNIT`, held as one Arrow array of paths.

    A unit (its paths as a tuple of strings, what one read task carries) is built only when
    asked for, so a million files cost ~60 MB of Arrow, not a million Python strings, and
    each read task's payload is its own 256 paths: planning is linear in the files.
    """

    def __init__(self, paths: pa.Array, labels: np.ndarray | None,
                 per_unit: int = FILES_PER_UNIT) -> None:
        self.paths, self.labels, self.per_unit = paths, labels, per_unit

    def __len__(self) -> int:
        return -(-len(self.paths) // self.per_unit)

    @overload
    def __getitem__(self, i: int) -> Unit: ...

    @overload
    def __getitem__(self, i: slice) -> list[Unit]: ...

    def __getitem__(self, i: int | slice) -> Unit | list[Unit]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"unit {i} of {len(self)}")
        start = (i % len(self)) * self.per_unit
        paths = tuple(self.paths.slice(start, self.per_unit).to_pylist())
        labels = (tuple(self.labels[start:start + self.per_unit].tolist())
                  if self.labels is not None else ())
        return Unit(len(paths), paths, labels)

    @property
    def sizes(self) -> np.ndarray:
        """Items per unit, (units,) int64."""
        sizes = np.full(len(self), self.per_unit, np.int64)
        if len(sizes):
            sizes[-1] = len(self.paths) - self.per_unit * (len(self) - 1)
        return sizes


def unit_sizes(units: Sequence[Unit]) -> np.ndarray:
    """Items per unit, (units,) int64, without building file units' path tuples."""
    if isinstance(units, FileUnits):
        return units.sizes
    return np.array([u.items for u in units], np.int64)


@dataclass
class Encoded:
    """An encoded-image source, ready to be read unit by unit.

    Attributes:
        units: in a seeded random order (so every block mixes classes and folders).
        class_names: label index -> name; empty when unlabeled.
        description: one line; ``{n}`` stands for the number of images.
        reader: the reader that reads the units (configured by its ``open``; it travels to
            the read tasks).
        notes: things worth a line in the log (e.g. shards without an index were counted).
    """

    units: Sequence[Unit]  # FileUnits for image files, a list of shard units
    class_names: list[str]
    description: str
    reader: Reader
    notes: list[str] = field(default_factory=list)

    @property
    def num_items(self) -> int:
        """Images listed (before bad ones are dropped)."""
        return int(unit_sizes(self.units).sum())


# What read_unit yields per image: (name, encoded bytes or the reason it could not be read,
# label index or None). Names are file paths or ``shard/key`` for shard members.
Item = tuple[str, bytes | str, int | None]


class Reader(ABC):
    """A registered source format (``data.source.format``)."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for `raysl readers`
    reads: ClassVar[str] = "any"  # "file", "dir" or "any": what kind of path it takes
    detect_order: ClassVar[int] = 50  # `auto` asks readers in this order (the folder last)

    @classmethod
    @abstractmethod
    def detect(cls, target: Target, store: Store) -> bool:
        """Whether ``target`` is this reader's kind of data (``format: auto``)."""

    @abstractmethod
    def open(self, cfg: SourceConfig, target: Target, store: Store, seed: int,
             field_name: str) -> Arrays | Encoded:
        """What to read: arrays read whole, or the units of an encoded source.

        ``seed`` orders the rows (and draws the subset when ``cfg.limit`` is set).

        Raises:
            DataError: naming ``field_name``'s path and what is wrong with it.
        """

    def read_unit(self, unit: Unit, store: Store, class_names: Sequence[str]) -> Iterator[Item]:
        """The images of one unit, in order (encoded readers only)."""
        raise NotImplementedError(f"{self.name} reads arrays, not units")


def read_paths(unit: Unit, store: Store, limit: int = MAX_ENCODED_BYTES) -> Iterator[Item]:
    """Image files one by one; what makes one skipped is its reason.

    An I/O error, a bad label, or a file larger than ``limit`` bytes
    (:func:`~raysl.data.readers.encoded.encoded_bound` of the pixel cap: no image the cap lets
    through is larger), which is then not read.
    """
    labels: Sequence[int | None] = unit.labels or [None] * len(unit.paths)
    for path, label in zip(unit.paths, labels, strict=True):
        if label == BAD_LABEL:
            yield path, "bad_label", None
            continue
        try:
            yield path, store.read(path, limit), label
        except FileTooLarge:
            yield path, "too_large", label
        except FileNotFoundError:
            yield path, "missing", label
        except OSError:
            yield path, "unreadable", label


def file_units(paths: pa.Array, labels: np.ndarray | None, classes: list[str],
               description: str, reader: Reader, seed: int, limit: int) -> Encoded:
    """Image files in a seeded random order (``limit`` of them if set), in units of 256."""
    order = np.random.default_rng(seed).permutation(len(paths))[: limit or None]
    return Encoded(FileUnits(paths.take(order), labels[order] if labels is not None else None),
                   classes, description, reader)


def shard_units(shards: Sequence[str], counts: Sequence[int], seed: int, limit: int
                ) -> list[Unit]:
    """One unit per shard, in a seeded random order.

    With ``limit``, the first shards of that order up to ``limit`` images (the last one cut).
    """
    order = np.random.default_rng(seed).permutation(len(shards))
    units, total = [], 0
    for i in order:
        if limit and total >= limit:
            break
        take = min(counts[i], limit - total) if limit else 0
        units.append(Unit(take or counts[i], shard=shards[i], take=take))
        total += take or counts[i]
    return units


def labels_of(values: pa.Array | pa.ChunkedArray | Sequence[Any], where: str = ""
              ) -> tuple[np.ndarray, list[str]]:
    """Integer labels as they are; class names -> indices of their sorted order.

    Vectorised with Arrow: a million labels take milliseconds. Values are compared as text
    with surrounding white space stripped, so ``" 3"`` is 3 and ``"cat "`` is ``"cat"``. A
    label that can be no class (empty, null, or a negative integer) is :data:`BAD_LABEL`, and
    its sample is skipped and counted as ``bad_label`` (:func:`read_paths`), never read as a
    class nor failing the run; whether the labels are integers or names is decided by the
    others. ``where`` is kept for callers that name the column.
    """
    if not isinstance(values, pa.Array | pa.ChunkedArray):
        values = pa.array([None if v is None else str(v) for v in values], pa.large_string())
    text = pc.utf8_trim_whitespace(values.cast(pa.large_string()))
    present = pc.fill_null(pc.not_equal(text, ""), False)
    given = text.filter(present)
    labels = np.full(len(text), BAD_LABEL, np.int64)
    keep = present.to_numpy(zero_copy_only=False)
    if len(given) == 0:
        return labels, []
    if pc.all(pc.match_substring_regex(given, r"^-?[0-9]+$")).as_py():
        ints = given.cast(pa.int64()).to_numpy().astype(np.int64)
        labels[keep] = np.where(ints >= 0, ints, BAD_LABEL)
        top = int(labels.max())
        return labels, [str(i) for i in range(top + 1)] if top >= 0 else []
    classes = sorted(pc.unique(given).to_pylist())
    labels[keep] = pc.index_in(given, value_set=pa.array(classes, given.type)).to_numpy()
    return labels, classes


def label_index(value: Any, class_names: Sequence[str]) -> int:
    """One label as an index of ``class_names`` (integers are taken as they are)."""
    if isinstance(value, int | np.integer):
        return int(value)
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    return list(class_names).index(text)
