"""``raysl shards``: convert any source raysl reads into tar (WebDataset) or parquet shards.

Large datasets stream best as shards: one sequential read per few hundred images instead of one
request per file, listed in one request, shuffled shard by shard. The items are put in a seeded
random order (so every shard mixes classes), cut into shards of ``shard_size``, and each shard is
written by its own Ray task straight to the destination (a local folder or an object store).
Encoded images are copied as they are (no re-encoding); array formats are written as PNG. Tar
shards get a ``shards.json`` index (sample counts and class names), so reading them needs no
counting pass.

An array source larger than ``max_array_bytes`` (IDX, npz, npy) is not read whole: the driver
reads it in order, a slice of rows at a time, and the seeded order is drawn within windows of
shards rather than over the whole array (:func:`_sliced_jobs`).
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from PIL import Image

from raysl.config import SourceConfig
from raysl.data.outputs import Output, check_apart, open_output
from raysl.data.readers.arrays import ArrayReader, ArraySlices
from raysl.data.readers.base import (
    IMAGE_EXTENSIONS,
    Arrays,
    Encoded,
    Item,
    Reader,
    Target,
    Unit,
    list_target,
    unit_sizes,
)
from raysl.data.readers.tar import INDEX_FILE, INDEX_FORMAT
from raysl.data.source import pick_reader, seeded_order
from raysl.data.storage import Store, is_uri
from raysl.errors import DataError
from raysl.redact import redact

SHARD_NAME = "shard-{:06d}"


@dataclass
class ShardsResult:
    """What was written."""

    out: str
    shards: dict[str, int]  # shard file name -> samples
    class_names: list[str]
    skipped: dict[str, int] = field(default_factory=dict)  # unreadable inputs, per reason
    seconds: float = 0.0

    @property
    def samples(self) -> int:
        """Samples written in all shards."""
        return sum(self.shards.values())


def write_shards(cfg: SourceConfig, out: str, shard_size: int = 1000, fmt: str = "tar",
                 seed: int = 0, log: Callable[[str], None] = print,
                 overwrite: bool = False, rows: np.ndarray | None = None) -> ShardsResult:
    """Write the images of ``cfg`` as shards of ``shard_size`` into the folder ``out``.

    ``rows`` (int64, each written once), when given, are the only images written: by the ``index``
    :func:`~raysl.data.source.read_source` gives them with the same ``seed`` (what ``raysl
    embed`` writes, with seed 0), i.e. an array row's place in the seeded order, an encoded
    image's place among the items of the units in their listed order (bad ones keep theirs).
    ``raysl curate`` writes its selection of a source that is not made of files this way.

    An array source larger than ``cfg.max_array_bytes`` is read a slice at a time
    (:func:`_sliced_jobs`), not whole. The folder is written whole or not at all
    (:mod:`raysl.data.outputs`): an existing one is refused unless ``overwrite``, and its
    ``_manifest.json`` names the shards that belong to it.

    Raises:
        DataError: the source cannot be read; ``out`` exists (without ``overwrite``) or
            overlaps the source.
        ValueError: an unknown ``fmt`` or a ``shard_size`` < 1.
    """
    if fmt not in ("tar", "parquet"):
        raise ValueError(f"--format={fmt!r}: must be 'tar' or 'parquet'")
    if shard_size < 1:
        raise ValueError(f"--shard-size={shard_size}: must be >= 1")
    if rows is not None:  # sorted and each once, whatever the caller gave
        rows = np.unique(np.asarray(rows, np.int64))
    t0 = time.perf_counter()
    store = Store.from_env(cfg.endpoint)
    if not is_uri(out):  # the writing tasks run elsewhere, in their own working directory
        out = store.resolve(out)[1]
    check_apart("" if cfg.is_made else cfg.path, out, store)
    output = open_output(out, store, overwrite, folder=True)
    try:
        result = _write_all(cfg, output, shard_size, fmt, seed, log, rows)
    except BaseException:
        output.abandon()
        raise
    output.commit({**result.shards, **({INDEX_FILE: len(result.shards)} if fmt == "tar"
                                       else {})}, f"{fmt} shards")
    result.seconds = time.perf_counter() - t0
    return result


def _write_all(cfg: SourceConfig, output: Output, shard_size: int, fmt: str, seed: int,
               log: Callable[[str], None], rows: np.ndarray | None) -> ShardsResult:
    """Every shard (and a tar set's index) into ``output``'s staging folder."""
    store, out = output.store, output.final
    target = (Target.of("", "none") if cfg.is_made
              else list_target(cfg.path, store, "source"))
    reader = pick_reader(cfg, target, store, "source")
    sliced = _too_large(reader, cfg, target, store)
    jobs: Iterable[ShardJob]
    if sliced is None:
        opened = reader.open(cfg, target, store, seed, "source")
        jobs = (_array_jobs(opened, cfg.limit, seed, shard_size, rows)
                if isinstance(opened, Arrays) else _unit_jobs(opened, shard_size, rows))
        count, names = len(jobs), opened.class_names
    else:  # parquet labels are then integers: the class names are known once all are read
        n = sliced.images.shape[0]
        keep = None if rows is None else np.sort(seeded_order(n, cfg.limit, seed)[rows])
        total = min(cfg.limit or n, n) if keep is None else len(keep)
        count, names = -(-total // shard_size), []
        log(f"[raysl] source.path={cfg.path!r}: {sliced.describe()} are more than "
            f"source.max_array_bytes={cfg.max_array_bytes}: read {SLICE_BYTES // 2**20} MiB at "
            f"a time, rows mixed within windows of up to {MIX_SHARDS} shards "
            f"({MIX_BYTES // 2**20} MiB)")
        jobs = _sliced_jobs(sliced, cfg.limit, seed, shard_size, keep)
    log(f"[raysl] writing {count} {fmt} shard(s) of up to {shard_size} images to {out}")
    refs = _submit(jobs, store, output.staging, fmt, names)
    result = ShardsResult(out, {}, sliced.class_names if sliced is not None else list(names))
    for i, ref in enumerate(refs):
        written, skipped = ray.get(ref)
        result.shards[f"{SHARD_NAME.format(i)}.{fmt}"] = written
        for reason, n in skipped.items():
            result.skipped[reason] = result.skipped.get(reason, 0) + n
    if not result.samples:
        raise DataError(f"source.path={cfg.path!r}: no image could be read ({result.skipped})")
    if fmt == "tar":
        index = {"format": INDEX_FORMAT, "shards": result.shards,
                 "class_names": result.class_names, "source": redact(cfg.path)}
        with store.open_output(output.path(INDEX_FILE)) as f:
            f.write(json.dumps(index, indent=1).encode())
    return result


def _submit(jobs: Iterable[ShardJob], store: Store, out: str, fmt: str,
            names: list[str]) -> list[Any]:
    """A writing task per job, in order, with at most 2 per cluster CPU unfinished at once.

    Jobs are taken from ``jobs`` only as tasks finish: a sliced array's rows wait in the object
    store a window ahead of the writers, not the whole array.
    """
    task = ray.remote(num_cpus=1)(_write_shard)
    in_flight = max(4, 2 * int(ray.cluster_resources().get("CPU", 1)))  # type: ignore[no-untyped-call]
    refs: list[Any] = []
    pending: list[Any] = []
    for i, job in enumerate(jobs):
        if len(pending) >= in_flight:
            _, pending = ray.wait(pending, num_returns=len(pending) - in_flight + 1,
                                  fetch_local=False)
        refs.append(task.remote(job, store, f"{out.rstrip('/')}/{SHARD_NAME.format(i)}.{fmt}",
                                fmt, names))
        pending.append(refs[-1])
    return refs


@dataclass
class Rows:
    """Array rows of one shard: images (n, H, W[, C]) uint8, labels (n,) or None, places (n,).

    ``places`` are the rows' positions in the shard (it may be written from several Rows).
    """

    images: np.ndarray
    labels: np.ndarray | None
    places: np.ndarray


@dataclass
class ShardJob:
    """The inputs of one shard: encoded units to copy, or array rows to encode as PNG."""

    reader: Reader | None = None
    units: list[Unit] = field(default_factory=list)
    rows: list[Any] = field(default_factory=list)  # ObjectRefs of Rows (array sources)
    # Per unit, the places of its items to write (sorted), or None for all of them.
    keep: list[np.ndarray | None] = field(default_factory=list)


# A job writing a selection from a shard source reads at most this many source shards: picking
# 1% of ImageNet's 1,281 shards would otherwise make 13 tasks reading ~100 shards each.
MAX_SHARDS_READ = 16


def _unit_jobs(encoded: Encoded, shard_size: int, rows: np.ndarray | None = None
               ) -> list[ShardJob]:
    """Image files regrouped into shards of ``shard_size`` (a shard source's: one per shard).

    With ``rows`` (see :func:`write_shards`), only those items: the files among them
    regrouped alike, and the shard units holding some of them grouped until a job has
    ``shard_size`` of them or more, or reads :data:`MAX_SHARDS_READ` shards (a shard's few
    selected images make no shard of their own, a unit is never split: its shard is read
    once, and no task reads a long run of shards for a few images each).
    """
    jobs: list[ShardJob] = []
    batch: list[Unit] = []
    keeps: list[np.ndarray | None] = []
    held = 0
    offsets = np.concatenate([[0], np.cumsum(unit_sizes(encoded.units))])
    for u, unit in enumerate(encoded.units):
        places = None if rows is None else _places(rows, int(offsets[u]), unit.items)
        if places is not None and not len(places):
            continue
        if unit.shard and places is None:
            jobs.append(ShardJob(encoded.reader, [unit], keep=[None]))
            continue
        if unit.shard:
            batch.append(unit)
            keeps.append(places)
            held += len(places) if places is not None else unit.items
        else:
            for i in (range(len(unit.paths)) if places is None else places.tolist()):
                batch.append(Unit(1, unit.paths[i:i + 1], unit.labels[i:i + 1]))
                keeps.append(None)
                held += 1
                if held == shard_size:
                    jobs.append(ShardJob(encoded.reader, batch, keep=keeps))
                    batch, keeps, held = [], [], 0
        if held >= shard_size or (unit.shard and len(batch) >= MAX_SHARDS_READ):
            jobs.append(ShardJob(encoded.reader, batch, keep=keeps))
            batch, keeps, held = [], [], 0
    if batch:
        jobs.append(ShardJob(encoded.reader, batch, keep=keeps))
    return jobs


def _places(rows: np.ndarray, first: int, items: int) -> np.ndarray:
    """The places within a unit (its items ``first`` ... ``first + items - 1``) of ``rows``."""
    lo, hi = np.searchsorted(rows, [first, first + items])
    return rows[lo:hi] - first


def _array_jobs(arrays: Arrays, limit: int, seed: int, shard_size: int,
                rows: np.ndarray | None = None) -> list[ShardJob]:
    """Array rows in a seeded random order (``limit`` of them if set), ``shard_size`` a shard.

    With ``rows`` (see :func:`write_shards`), only those places of that order.
    """
    order = seeded_order(len(arrays.images), limit, seed)
    if rows is not None:
        order = order[rows]
    jobs = []
    for i in range(0, len(order), shard_size):
        idx = order[i:i + shard_size]
        labels = arrays.labels[idx] if arrays.labels is not None else None
        jobs.append(ShardJob(rows=[ray.put(Rows(arrays.images[idx], labels,
                                                np.arange(len(idx))))]))
    return jobs


# An array larger than source.max_array_bytes: the driver reads SLICE_BYTES of rows at a time
# (one row at least), and mixes rows within windows of MIX_SHARDS shards, or fewer so that a
# window, which waits in the object store until it is read, holds at most MIX_BYTES.
SLICE_BYTES = 16 * 2**20
MIX_SHARDS = 64
MIX_BYTES = 512 * 2**20


def _too_large(reader: Reader, cfg: SourceConfig, target: Target,
               store: Store) -> ArraySlices | None:
    """The array source opened to be read a slice at a time, if larger than read whole."""
    if not isinstance(reader, ArrayReader):
        return None
    sliced = reader.slices(cfg, target, store, "source")
    if sliced.nbytes > cfg.max_array_bytes:
        return sliced
    sliced.close()
    return None


def _sliced_jobs(sliced: ArraySlices, limit: int, seed: int, shard_size: int,
                 only: np.ndarray | None = None) -> Iterator[ShardJob]:
    """Shard jobs of an array read in order, :data:`SLICE_BYTES` at a time; closes it.

    The rows kept (all, or a seeded random subset of ``limit``) are cut, in order, into
    windows of shards; a seeded random permutation of each window's rows gives every row its
    shard and its place there. Each slice's rows are put in the object store grouped by shard,
    and a window's shards are handed out once it is read: every shard mixes rows from the whole
    window (:data:`MIX_SHARDS` shards or :data:`MIX_BYTES`), in a random order, while the
    driver holds one slice. The tar reader then reads the shards in a new order every epoch.
    """
    n = sliced.images.shape[0]
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(n, limit, replace=False)) if 0 < limit < n else None
    if only is not None:  # these rows (sorted), not a draw
        keep = only
    total = n if keep is None else len(keep)
    row_bytes = max(1, sliced.images.nbytes // max(1, n))
    step = max(1, SLICE_BYTES // row_bytes)
    window = shard_size * max(1, min(MIX_SHARDS, MIX_BYTES // (shard_size * row_bytes)))
    start = placed = 0
    places = np.empty(0, np.int64)
    parts: list[list[Any]] = []
    with sliced:
        for images, labels in sliced.read(step):
            if keep is not None:  # the kept rows of this slice
                lo, hi = np.searchsorted(keep, [start, start + len(images)])
                pick = keep[lo:hi] - start
                start += len(images)
                images, labels = images[pick], labels[pick] if labels is not None else None
            done = 0
            while done < len(images):
                if placed % window == 0:  # a new window: its rows' places, its shards' parts
                    places = rng.permutation(min(window, total - placed))
                    parts = [[] for _ in range(-(-len(places) // shard_size))]
                at = placed % window
                m = min(len(images) - done, len(places) - at)
                here = places[at:at + m]
                shards = here // shard_size
                for shard in np.unique(shards):
                    rows = np.flatnonzero(shards == shard)
                    parts[shard].append(ray.put(Rows(
                        images[done + rows], labels[done + rows] if labels is not None else None,
                        here[rows] % shard_size)))
                done, placed = done + m, placed + m
                if placed % window == 0 or placed == total:
                    yield from (ShardJob(rows=p) for p in parts)


def _items(job: ShardJob, store: Store, class_names: list[str]) -> Iterator[Item]:
    """(name, bytes or skip reason, label) of a job, in order."""
    if job.reader is None:
        parts: list[Rows] = ray.get(job.rows)
        images = np.concatenate([p.images for p in parts])
        labels = (np.concatenate([p.labels for p in parts if p.labels is not None])
                  if parts[0].labels is not None else None)
        for i, row in enumerate(np.argsort(np.concatenate([p.places for p in parts]))):
            image, buf = images[row], io.BytesIO()
            Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buf, "PNG")
            yield f"{i}.png", buf.getvalue(), int(labels[row]) if labels is not None else None
        return
    for unit, keep in zip(job.units, job.keep or [None] * len(job.units), strict=True):
        items = job.reader.read_unit(unit, store, class_names)
        if keep is None:
            yield from items
            continue
        wanted = set(keep.tolist())
        for place, item in enumerate(items):
            if place in wanted:
                yield item
            if place >= keep[-1]:
                break


def _write_shard(job: ShardJob, store: Store, path: str, fmt: str, class_names: list[str]
                 ) -> tuple[int, dict[str, int]]:
    """Write one shard; returns (samples written, inputs skipped per reason)."""
    skipped: dict[str, int] = {}
    rows: list[tuple[str, bytes, int | None]] = []
    for name, payload, label in _items(job, store, class_names):
        if isinstance(payload, str):
            skipped[payload] = skipped.get(payload, 0) + 1
            continue
        rows.append((name, payload, label))
    with store.open_output(path) as out:
        if fmt == "tar":
            _write_tar(out, rows)
        else:
            _write_parquet(out, rows, class_names)
    return len(rows), skipped


def _write_tar(out: Any, rows: list[tuple[str, bytes, int | None]]) -> None:
    with tarfile.open(fileobj=out, mode="w|") as tar:
        for i, (name, data, label) in enumerate(rows):
            key = f"{i:06d}"
            ext = _image_extension(name, data)
            members = [(f"{key}.{ext}", data),
                       (f"{key}.json", json.dumps({"source": redact(name)}).encode())]
            if label is not None:
                members.append((f"{key}.cls", str(label).encode()))
            for member, payload in members:
                info = tarfile.TarInfo(member)
                info.size, info.mtime = len(payload), 0  # reproducible bytes
                tar.addfile(info, io.BytesIO(payload))


# What an encoded image starts with, for the names of shard members whose source gave none.
_MAGIC = ((b"\x89PNG", "png"), (b"\xff\xd8", "jpg"), (b"GIF8", "gif"), (b"BM", "bmp"),
          (b"II*\x00", "tif"), (b"MM\x00*", "tif"))


def _image_extension(name: str, data: bytes) -> str:
    """The member extension of an image: its source name's, else what its bytes start with.

    A parquet row's name (``shard.parquet#7``) or a tar member's key has no image extension,
    and the tar reader takes members by their extension: such an image named ``.parquet``
    would be written but never read.
    """
    ext = posixpath.splitext(name.split("#")[0])[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return ext.lstrip(".")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((e for magic, e in _MAGIC if data.startswith(magic)), "jpg")


def _write_parquet(out: Any, rows: list[tuple[str, bytes, int | None]],
                   class_names: list[str]) -> None:
    """Images, their source names and labels (class names when the source has them).

    Names, not indices: a parquet shard has no index, and sorted names give back the indices.
    """
    columns: dict[str, Any] = {"image": pa.array([r[1] for r in rows], pa.binary()),
                               "source": pa.array([redact(r[0]) for r in rows], pa.string())}
    if rows and rows[0][2] is not None:
        labels = [int(r[2]) for r in rows if r[2] is not None]
        columns["label"] = (pa.array([class_names[i] for i in labels], pa.string())
                            if class_names else pa.array(labels, pa.int64()))
    pq.write_table(pa.table(columns), out)
