"""``raysl shards``: convert any source raysl reads into tar (WebDataset) or parquet shards.

Large datasets stream best as shards: one sequential read per few hundred images instead of one
request per file, listed in one request, shuffled shard by shard. The items are put in a seeded
random order (so every shard mixes classes), cut into shards of ``shard_size``, and each shard is
written by its own Ray task straight to the destination (a local folder or an object store).
Encoded images are copied as they are (no re-encoding); array formats are written as PNG. Tar
shards get a ``shards.json`` index (sample counts and class names), so reading them needs no
counting pass.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from PIL import Image

from raysl.config import SourceConfig
from raysl.data.formats import Arrays, DataError
from raysl.data.readers.base import Encoded, Item, Reader, Target, Unit, list_target
from raysl.data.readers.tar import INDEX_FILE, INDEX_FORMAT
from raysl.data.source import pick_reader
from raysl.data.storage import Store

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
                 seed: int = 0, log: Callable[[str], None] = print) -> ShardsResult:
    """Write the images of ``cfg`` as shards of ``shard_size`` into the folder ``out``.

    Raises:
        DataError: the source cannot be read.
        ValueError: an unknown ``fmt`` or a ``shard_size`` < 1.
    """
    if fmt not in ("tar", "parquet"):
        raise ValueError(f"--format={fmt!r}: must be 'tar' or 'parquet'")
    if shard_size < 1:
        raise ValueError(f"--shard-size={shard_size}: must be >= 1")
    t0 = time.perf_counter()
    store = Store.from_env(cfg.endpoint)
    target = (Target("", "none", ()) if cfg.is_made
              else list_target(cfg.path, store, "source"))
    opened = pick_reader(cfg, target, store, "source").open(cfg, target, store, seed, "source")
    jobs = (_array_jobs(opened, cfg.limit, seed, shard_size) if isinstance(opened, Arrays)
            else _unit_jobs(opened, shard_size))
    names = opened.class_names
    log(f"[raysl] writing {len(jobs)} {fmt} shard(s) of up to {shard_size} images to {out}")
    task = ray.remote(num_cpus=1)(_write_shard)
    refs = [task.remote(job, store, f"{out.rstrip('/')}/{SHARD_NAME.format(i)}.{fmt}", fmt,
                        names)
            for i, job in enumerate(jobs)]
    result = ShardsResult(out, {}, list(names))
    for i, ref in enumerate(refs):
        written, skipped = ray.get(ref)
        result.shards[f"{SHARD_NAME.format(i)}.{fmt}"] = written
        for reason, n in skipped.items():
            result.skipped[reason] = result.skipped.get(reason, 0) + n
    if not result.samples:
        raise DataError(f"source.path={cfg.path!r}: no image could be read ({result.skipped})")
    if fmt == "tar":
        index = {"format": INDEX_FORMAT, "shards": result.shards, "class_names": list(names),
                 "source": cfg.path}
        with store.open_output(f"{out.rstrip('/')}/{INDEX_FILE}") as f:
            f.write(json.dumps(index, indent=1).encode())
    result.seconds = time.perf_counter() - t0
    return result


@dataclass
class ShardJob:
    """The inputs of one shard: encoded units to copy, or array rows to encode as PNG."""

    reader: Reader | None = None
    units: list[Unit] = field(default_factory=list)
    images: Any = None  # ObjectRef of (n, H, W, C) uint8 (array sources)
    labels: Any = None  # ObjectRef of (n,) int64, or None


def _unit_jobs(encoded: Encoded, shard_size: int) -> list[ShardJob]:
    """Image files regrouped into shards of ``shard_size`` (a shard source's: one per shard)."""
    jobs, batch = [], []
    for unit in encoded.units:
        if unit.shard:
            jobs.append(ShardJob(encoded.reader, [unit]))
            continue
        for i in range(len(unit.paths)):
            batch.append(Unit(1, unit.paths[i:i + 1], unit.labels[i:i + 1]))
            if len(batch) == shard_size:
                jobs.append(ShardJob(encoded.reader, batch))
                batch = []
    if batch:
        jobs.append(ShardJob(encoded.reader, batch))
    return jobs


def _array_jobs(arrays: Arrays, limit: int, seed: int, shard_size: int) -> list[ShardJob]:
    """Array rows in a seeded random order (``limit`` of them if set), ``shard_size`` a shard."""
    order = np.random.default_rng(seed).permutation(len(arrays.images))[: limit or None]
    jobs = []
    for i in range(0, len(order), shard_size):
        idx = order[i:i + shard_size]
        labels = arrays.labels[idx] if arrays.labels is not None else None
        jobs.append(ShardJob(images=ray.put(arrays.images[idx]),
                             labels=ray.put(labels) if labels is not None else None))
    return jobs


def _items(job: ShardJob, store: Store, class_names: list[str]) -> Iterator[Item]:
    """(name, bytes or skip reason, label) of a job, in order."""
    if job.reader is None:
        images = ray.get(job.images)
        labels = ray.get(job.labels) if job.labels is not None else None
        for i, image in enumerate(images):
            buf = io.BytesIO()
            Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buf, "PNG")
            yield f"{i}.png", buf.getvalue(), int(labels[i]) if labels is not None else None
        return
    for unit in job.units:
        yield from job.reader.read_unit(unit, store, class_names)


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
            ext = posixpath.splitext(name.split("#")[0])[1].lower().lstrip(".") or "jpg"
            members = [(f"{key}.{ext}", data),
                       (f"{key}.json", json.dumps({"source": name}).encode())]
            if label is not None:
                members.append((f"{key}.cls", str(label).encode()))
            for member, payload in members:
                info = tarfile.TarInfo(member)
                info.size, info.mtime = len(payload), 0  # reproducible bytes
                tar.addfile(info, io.BytesIO(payload))


def _write_parquet(out: Any, rows: list[tuple[str, bytes, int | None]],
                   class_names: list[str]) -> None:
    """Images, their source names and labels (class names when the source has them).

    Names, not indices: a parquet shard has no index, and sorted names give back the indices.
    """
    columns: dict[str, Any] = {"image": pa.array([r[1] for r in rows], pa.binary()),
                               "source": pa.array([r[0] for r in rows], pa.string())}
    if rows and rows[0][2] is not None:
        labels = [int(r[2]) for r in rows if r[2] is not None]
        columns["label"] = (pa.array([class_names[i] for i in labels], pa.string())
                            if class_names else pa.array(labels, pa.int64()))
    pq.write_table(pa.table(columns), out)
