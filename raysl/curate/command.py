"""``raysl curate``: embed, deduplicate, cluster and draw a balanced selection, with Ray.

The stages (Vo et al. 2024 after DINOv2's deduplication), each a pass over blocks of rows:

1. **Embed** every image of the source with :func:`raysl.serving.embed.embed` (Ray Data
   tasks; bad files skipped and counted) into ``OUT/embeddings/``, with each image's pixel
   digest.
2. **Blocks**: the driver reads the parquet ``block_rows`` rows at a time and puts each block
   in the object store (which spills to disk); it never holds more than one.
3. **Deduplicate**: one Ray task per pair of blocks (:mod:`raysl.curate.dedup`); a row with a
   duplicate of smaller index is removed, ``exact`` (same digest) or ``near`` (cosine >=
   ``near``).
4. **Cluster** what is left with hierarchical k-means with resampling
   (:mod:`raysl.curate.hierarchy`): each pass over level 1's rows is one task per block,
   returning per-cluster sums; the upper levels cluster centroids, here.
5. **Select**: the paper's hierarchical balanced sampling gives each level-1 cluster its
   quota; each block's task offers its rows of smallest seeded key per cluster, the driver
   keeps the quota's best: a uniform draw within each cluster.
6. **Write** the selection, ``OUT/report.json`` and ``OUT/report.png``, and log the report to
   MLflow (experiment ``curate``). The selection is what ``raysl pretrain`` reads as
   ``data.source.path``: of image files, ``OUT/selection.txt``, a file list naming them where
   they are (nothing copied); of any other source (tar or parquet shards, IDX, npz, npy,
   CIFAR), or with ``--write tar|parquet``, shards in ``OUT/selection/`` written by
   :func:`raysl.data.shards.write_shards` from the source again, only the rows drawn (encoded
   images copied byte for byte, arrays as PNG).

Memory per process, whatever the number N of images: a task holds two blocks and a ``(4096,
block_rows)`` slice of their similarities with its masks (defaults: 2 x 8192 x D x 4 bytes +
~0.3 GiB); the driver holds one block, the level-1 centroids and resampled points (k_1 x (1 +
size) x D x 4 bytes), the indices of the rows removed as duplicates (a Python int and a reason
each), and the selection (``target`` paths and indices). Writing shards holds what ``raysl
shards`` holds: an array source read whole (as embedding it did), or an encoded source's list
of files or shards. N only appears as the number of blocks, i.e. as time: the deduplication
compares every pair of blocks, (N / block_rows)^2 / 2 tasks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import ray
import torch
from torch import Tensor

from raysl.clustering import nearest
from raysl.config import SourceConfig, TrackingConfig
from raysl.curate import NEAR_DEFAULT
from raysl.curate.dedup import Rows, block_pairs, counts, duplicates_between, merge, unit_rows
from raysl.curate.hierarchy import (
    BlockMap,
    Hierarchy,
    T,
    best_per_group,
    hierarchical_kmeans,
    leaf_quotas,
    row_keys,
)
from raysl.curate.report import CurateReport, report_png
from raysl.data.outputs import check_apart
from raysl.data.shards import write_shards
from raysl.data.source import detect_format
from raysl.data.storage import Store
from raysl.errors import ConfigError, DataError, check
from raysl.serving.embed import embed
from raysl.serving.models import LoadedModel, load_model

FILE_FORMATS = ("folder", "files")  # readers whose rows are files a file list can name
WRITE_CHOICES = ("auto", "list", "tar", "parquet")
SHARD_SIZE = 1000  # images per shard of a selection written as shards


@dataclass(frozen=True)
class CurateSettings:
    """How ``raysl curate`` curates (its flags).

    Attributes:
        target: images to select (all that are left when fewer).
        near: cosine at or above which two images are near duplicates. It depends on the
            encoder, which must be trained: with random weights half of all pairs of
            Fashion-MNIST images are above 0.98. raysl's pooled ResNet features sit close
            together: with the demo's encoder trained 4 epochs, copies with 4 pixels changed
            scored >= 0.9999 while each image's nearest distinct image scored 0.9916 (median)
            to 0.9994 (max, 2,000 images), hence the default. Check a few pairs with
            ``raysl neighbours``.
        clusters: clusters per level, level 1 first; empty = two levels of about sqrt(N) and
            N^(1/4) clusters for N images left (the paper: 4 levels of 10M, 500k, 50k, 10k
            for 743M images, about 70, 20, 5 per cluster).
        iters: Lloyd iterations per k-means run.
        steps: resampling-clustering steps per level (the paper's code: 10).
        size: points per cluster each resampling step takes, closest to its centroid.
        block_rows: rows per block (a task holds two).
        seed: seeds every draw.
        write: how the selection is written: ``list`` (a file list; image files only),
            ``tar`` or ``parquet`` shards, or ``auto``: a list for image files, tar shards
            for any other source.
    """

    target: int
    near: float = NEAR_DEFAULT
    clusters: tuple[int, ...] = ()
    iters: int = 20
    steps: int = 3
    size: int = 10
    block_rows: int = 8192
    seed: int = 0
    write: str = "auto"

    def __post_init__(self) -> None:
        check(self.target >= 1, "--target", self.target, "must be >= 1 (images to select)")
        check(0 < self.near < 1, "--near", self.near, "must be in (0, 1): a cosine "
              f"({NEAR_DEFAULT} suits raysl's ResNets; exact copies are found by their digest)")
        check(all(k >= 1 for k in self.clusters), "--clusters", self.clusters,
              "must be clusters per level, each >= 1, e.g. 100,10")
        check(list(self.clusters) == sorted(self.clusters, reverse=True), "--clusters",
              self.clusters, "level 1 first, each level no more clusters than the one below, "
              "e.g. 100,10")
        check(self.iters >= 1, "--iters", self.iters, "must be >= 1 (20 is plenty)")
        check(self.steps >= 0, "--steps", self.steps, "must be >= 0 (0 = no resampling)")
        check(self.size >= 1, "--size", self.size, "must be >= 1 (points per cluster)")
        check(self.block_rows >= 1, "--block-rows", self.block_rows, "must be >= 1")
        check(self.write in WRITE_CHOICES, "--write", self.write,
              f"one of {', '.join(WRITE_CHOICES)}")

    def written_as(self, kind: str) -> str:
        """``list``, ``tar`` or ``parquet`` for a source read by the reader ``kind``.

        Raises:
            DataError: a file list asked of images that are not files.
        """
        if self.write == "auto":
            return "list" if kind in FILE_FORMATS else "tar"
        if self.write == "list" and kind not in FILE_FORMATS:
            raise DataError(f"--write=list: the source's images are not files (a {kind} "
                            "source), so no file list can name them; use --write tar or "
                            "parquet (shards of the selected images)")
        return self.write

    def ks(self, rows: int) -> list[int]:
        """Clusters per level for ``rows`` images left.

        Raises:
            ConfigError: more level-1 clusters than images.
        """
        if not self.clusters:
            first = max(1, round(math.sqrt(rows)))
            return [first, max(1, round(math.sqrt(first)))] if first >= 4 else [first]
        check(self.clusters[0] <= rows, "--clusters", self.clusters, f"level 1 can have at "
              f"most as many clusters as the {rows} images left after deduplication")
        return list(self.clusters)


@dataclass
class CurateResult:
    """What ``raysl curate`` wrote."""

    selection: str
    report: CurateReport
    files: dict[str, str] = field(default_factory=dict)
    run_id: str = ""


@dataclass(frozen=True)
class Block:
    """A block of embedded rows as the tasks get it: rows, and the paths and labels beside.

    An array source's rows have no path (""): its selection is written as shards, by index.
    """

    rows: Rows
    path: np.ndarray  # (n,) str
    label: np.ndarray | None  # (n,) int64


def curate(model: LoadedModel, source: SourceConfig, out: str, settings: CurateSettings,
           tracking_uri: str = "", overwrite: bool = False,
           log: Callable[[str], None] = print) -> CurateResult:
    """Curate ``source`` into ``out`` (a folder, local or an object store): see the module.

    Raises:
        DataError: the source cannot be read, a file list is asked of images that are not
            files, or ``out`` holds a selection already (without ``overwrite``).
        ConfigError: ``--clusters`` asks for more clusters than images left.
    """
    write = settings.written_as(detect_format(source, "SOURCE"))
    store = Store.from_env(source.endpoint)
    out = out.rstrip("/")
    selection = f"{out}/selection.txt" if write == "list" else f"{out}/selection"
    for held in (f"{out}/selection.txt", f"{out}/selection"):
        if store.kind(held) != "missing" and not overwrite:
            raise DataError(f"OUT={out!r}: already holds a selection ({held}); choose "
                            "another folder or pass --overwrite")
    if write != "list":  # now, not after the embedding: shards must not land in their source
        check_apart(source.path, selection, store)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    embedded = embed(model, source, f"{out}/embeddings", log=log, overwrite=overwrite,
                     digests=True)
    seconds["embed"] = time.perf_counter() - clock
    refs = _blocks(embedded.files, store, settings.block_rows)
    if not refs:
        raise DataError(f"SOURCE={source.path!r}: no image could be embedded "
                        f"({embedded.skipped})")
    clock = time.perf_counter()
    log(f"[raysl] looking for duplicates among {embedded.rows} images in {len(refs)} blocks")
    removed = _duplicates(refs, settings.near)
    removed_ref = ray.put(np.fromiter(removed, np.int64, len(removed)))  # once, not per task
    kept = [_without.remote(r, removed_ref) for r in refs]
    seconds["dedup"] = time.perf_counter() - clock
    clock = time.perf_counter()
    left = embedded.rows - len(removed)
    ks = settings.ks(left)
    log(f"[raysl] clustering {left} images: {' -> '.join(map(str, ks))} clusters")
    hierarchy = hierarchical_kmeans(_ray_map(kept), ks, settings.iters, settings.steps,
                                    settings.size, settings.seed)
    seconds["cluster"] = time.perf_counter() - clock
    clock = time.perf_counter()
    leaf_sizes, classes_before = _sizes(kept, hierarchy.centroids[0])
    quotas = leaf_quotas(hierarchy, leaf_sizes, settings.target, settings.seed)
    drawn = _draw(kept, hierarchy.centroids[0], quotas, settings.seed)
    seconds["select"] = time.perf_counter() - clock
    report = _report(embedded.rows, embedded.skipped, counts(removed), left, ks, settings,
                     hierarchy, leaf_sizes, classes_before, drawn, seconds)
    result = CurateResult(selection, report)
    if write == "list":
        result.files["selection"] = _write_list(store, selection, drawn)
    else:  # the source read again: only the rows drawn, by embed's index (seed 0)
        clock = time.perf_counter()
        shards = write_shards(source, selection, SHARD_SIZE, write, seed=0, log=log,
                              overwrite=overwrite, rows=drawn.index.numpy())
        result.files["selection"] = shards.out
        report.seconds["write"] = round(time.perf_counter() - clock, 2)
        if shards.samples < report.selected:  # read once to embed, not again to copy
            log(f"[raysl] WARNING: {report.selected - shards.samples} of the {report.selected} "
                f"images drawn could not be read again ({shards.skipped}) and are not in "
                "the shards")
            report.selected = shards.samples
    result.files.update(_write(store, out, report))
    result.run_id = _track(tracking_uri, model, source, settings, report, result.files, store)
    return result


def _blocks(files: list[str], store: Store, rows: int) -> list[ray.ObjectRef[Block]]:
    """The embeddings in blocks of up to ``rows`` rows, each put in the object store."""
    fs, _ = store.resolve(files[0]) if files else (None, "")
    refs: list[ray.ObjectRef[Block]] = []
    if not files:
        return refs
    dataset = pads.dataset([store.resolve(f)[1] for f in files], filesystem=fs, format="parquet")
    pending: list[pa.RecordBatch] = []
    for batch in dataset.to_batches(batch_size=rows):
        pending.append(batch)
        if sum(b.num_rows for b in pending) >= rows:
            refs.append(ray.put(_block(pa.Table.from_batches(pending))))
            pending = []
    if pending:
        refs.append(ray.put(_block(pa.Table.from_batches(pending))))
    return refs


def _block(table: pa.Table) -> Block:
    vectors = table.column("embedding").combine_chunks()
    x = vectors.flatten().to_numpy(zero_copy_only=False).reshape(len(vectors), -1)
    labels = table.column("label").to_numpy() if "label" in table.column_names else None
    paths = (table.column("path").to_numpy(zero_copy_only=False).astype(str)
             if "path" in table.column_names else np.full(len(table), "", dtype=str))  # arrays
    return Block(Rows(torch.from_numpy(table.column("index").to_numpy().copy()),
                      table.column("digest").to_numpy(zero_copy_only=False).astype(str),
                      unit_rows(x)), paths, labels)


@ray.remote(num_cpus=1)
def _pair(a: Block, b: Block, near: float) -> dict[int, str]:
    return duplicates_between(a.rows, b.rows, near)


def _duplicates(refs: list[ray.ObjectRef[Block]], near: float) -> dict[int, str]:
    """Every pair of blocks compared by a task; a bounded number in flight."""
    removed: dict[int, str] = {}
    limit = max(2, int(ray.available_resources().get("CPU", 2)))  # type: ignore[no-untyped-call]
    pending: list[ray.ObjectRef[dict[int, str]]] = []
    for i, j in block_pairs(len(refs)):
        if len(pending) >= limit:
            done, pending = ray.wait(pending, num_returns=1)
            merge(removed, ray.get(done[0]))
        pending.append(_pair.remote(refs[i], refs[j], near))
    for found in ray.get(pending):
        merge(removed, found)
    return removed


@ray.remote(num_cpus=1)
def _without(block: Block, removed: np.ndarray) -> Block:
    keep = ~np.isin(block.rows.index.numpy(), removed)
    t = torch.from_numpy(keep)
    return Block(Rows(block.rows.index[t], block.rows.digest[keep], block.rows.x[t]),
                 block.path[keep], block.label[keep] if block.label is not None else None)


@ray.remote(num_cpus=1)
def _apply(fn: Callable[[Tensor, Tensor], Any], block: Block) -> Any:
    return fn(block.rows.x, block.rows.index)


def _ray_map(refs: list[ray.ObjectRef[Block]]) -> BlockMap:
    """A :data:`~raysl.curate.hierarchy.BlockMap` whose functions run as tasks beside blocks."""

    def each(fn: Callable[[Tensor, Tensor], T]) -> Iterator[T]:
        fn_ref = ray.put(fn)
        pending = [_apply.remote(fn_ref, r) for r in refs]
        for p in pending:  # one result at a time here, in block order
            result: T = ray.get(p)
            yield result

    return each


@ray.remote(num_cpus=1)
def _block_sizes(block: Block, leaves: Tensor) -> tuple[np.ndarray, Counter[int]]:
    leaf = nearest(block.rows.x, leaves)[0].numpy()
    classes = Counter(block.label.tolist()) if block.label is not None else Counter()
    return np.bincount(leaf, minlength=len(leaves)), classes


def _sizes(refs: list[ray.ObjectRef[Block]], leaves: Tensor
           ) -> tuple[np.ndarray, Counter[int]]:
    """Images per level-1 cluster (k_1,) and per label."""
    sizes, classes = np.zeros(len(leaves), dtype=np.int64), Counter[int]()
    leaves_ref = ray.put(leaves)
    for p in [_block_sizes.remote(r, leaves_ref) for r in refs]:
        block_sizes, block_classes = ray.get(p)
        sizes += block_sizes
        classes.update(block_classes)
    return sizes, classes


@dataclass(frozen=True)
class Drawn:
    """Rows drawn: their level-1 cluster, key, index, path and label (-1: none)."""

    leaf: Tensor
    key: Tensor
    index: Tensor
    path: np.ndarray
    label: np.ndarray

    def keep(self, mask: Tensor) -> Drawn:
        """The rows where ``mask`` (n,) bool."""
        m = mask.numpy()
        return Drawn(self.leaf[mask], self.key[mask], self.index[mask], self.path[m],
                     self.label[m])

    def __add__(self, other: Drawn) -> Drawn:
        return Drawn(torch.cat([self.leaf, other.leaf]), torch.cat([self.key, other.key]),
                     torch.cat([self.index, other.index]),
                     np.concatenate([self.path, other.path]),
                     np.concatenate([self.label, other.label]))


@ray.remote(num_cpus=1)
def _offer(block: Block, leaves: Tensor, quotas: Tensor, seed: int) -> Drawn:
    leaf = nearest(block.rows.x, leaves)[0]
    key = torch.from_numpy(row_keys(block.rows.index.numpy(), seed))
    label = block.label if block.label is not None else np.full(len(leaf), -1)
    rows = Drawn(leaf, key, block.rows.index, block.path, label)
    return rows.keep(best_per_group(leaf, key, quotas))


def _draw(refs: list[ray.ObjectRef[Block]], leaves: Tensor, quotas: np.ndarray,
          seed: int) -> Drawn:
    """Each level-1 cluster's quota of rows of smallest :func:`row_keys`: a uniform draw."""
    q = torch.from_numpy(quotas)
    leaves_ref, q_ref = ray.put(leaves), ray.put(q)
    drawn = Drawn(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64),
                  torch.zeros(0, dtype=torch.long), np.zeros(0, dtype=str),
                  np.zeros(0, dtype=np.int64))
    for p in [_offer.remote(r, leaves_ref, q_ref, seed) for r in refs]:
        drawn = drawn + ray.get(p)
        drawn = drawn.keep(best_per_group(drawn.leaf, drawn.key, q))  # at most the target
    return drawn.keep(torch.argsort(drawn.index))


def _report(embedded: int, skipped: dict[str, int], removed: dict[str, int], left: int,
            ks: list[int], settings: CurateSettings, hierarchy: Hierarchy,
            leaf_sizes: np.ndarray, classes_before: Counter[int], drawn: Drawn,
            seconds: dict[str, float]) -> CurateReport:
    leaf_after = np.bincount(drawn.leaf.numpy(), minlength=len(leaf_sizes))
    top = hierarchy.ancestors(torch.arange(len(leaf_sizes)), hierarchy.levels).numpy()
    k_top = ks[-1]
    top_before = np.bincount(top, weights=leaf_sizes, minlength=k_top).astype(np.int64)
    top_after = np.bincount(top, weights=leaf_after, minlength=k_top).astype(np.int64)
    classes_after = Counter(int(v) for v in drawn.label.tolist()) if classes_before else Counter()
    return CurateReport(embedded, dict(skipped), removed, left, ks, settings.target,
                        len(drawn.index), top_before.tolist(), top_after.tolist(),
                        leaf_sizes.tolist(), leaf_after.tolist(),
                        {int(k): v for k, v in sorted(classes_before.items())},
                        {int(k): classes_after.get(k, 0) for k in sorted(classes_before)},
                        {k: round(v, 2) for k, v in seconds.items()})


def _write(store: Store, out: str, report: CurateReport) -> dict[str, str]:
    """The report and its picture; returns their paths."""
    files = {"report": f"{out}/report.json", "picture": f"{out}/report.png"}
    contents: dict[str, bytes] = {"report": json.dumps(report.to_dict(), indent=1).encode(),
                                  "picture": report_png(report)}
    for name, path in files.items():
        with store.open_output(path) as f:
            f.write(contents[name])
    return files


def _write_list(store: Store, path: str, drawn: Drawn) -> str:
    """The selection as a file list (one path a line); returns its path."""
    with store.open_output(path) as f:
        f.write("".join(f"{p}\n" for p in drawn.path.tolist()).encode())
    return path


def _track(uri: str, model: LoadedModel, source: SourceConfig, settings: CurateSettings,
           report: CurateReport, files: dict[str, str], store: Store) -> str:
    """An MLflow run in experiment ``curate`` with the settings, counts and report files."""
    from raysl.tracking.mlflow import ensure_experiment, log_blobs, tracking_client

    if not uri:
        return ""
    client = tracking_client(uri)
    run_id = str(client.create_run(ensure_experiment(client, "curate", uri),
                                   run_name="curate").info.run_id)
    params: dict[str, Any] = {"source": source.path, "model": model.description,
                              "out": files["selection"], **vars(settings)}
    for key, value in params.items():
        client.log_param(run_id, key, value)
    for key, value in report.metrics().items():
        client.log_metric(run_id, key, value)
    log_blobs(client, run_id, {"curate/report.json": json.dumps(report.to_dict(), indent=1),
                               "curate/report.png": store.read(files["picture"])})
    client.set_terminated(run_id)
    return run_id


def run(args: argparse.Namespace) -> int:
    """``raysl curate`` from its parsed flags; 0 on success."""
    from raysl.cluster.connect import connect
    from raysl.console import verbose
    from raysl.tracking.mlflow import resolve_tracking_uri, ui_command

    try:
        clusters = tuple(int(k) for k in args.clusters.split(",")) if args.clusters else ()
    except ValueError:
        raise ConfigError("--clusters", args.clusters, "clusters per level as integers, "
                          "level 1 first, e.g. 100,10") from None
    settings = CurateSettings(args.target, args.near, clusters, args.iters, args.steps,
                              args.size, args.block_rows, args.seed, args.write)
    if not verbose():  # MLflow's "Downloading artifacts" bars, each time the model is read
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = resolve_tracking_uri(TrackingConfig(tracking_uri=args.tracking_uri))
    model = load_model(args.model, uri)
    connect()
    source = SourceConfig(format=args.data_format, path=args.source, split=args.split)
    result = curate(model, source, args.out, settings, uri, args.overwrite)
    print("\n".join(result.report.lines()))
    what = "files" if result.selection.endswith(".txt") else "images in shards"
    print(f"[raysl] wrote {result.files['selection']} ({result.report.selected} {what}), "
          f"{result.files['report']} and {result.files['picture']}; MLflow run "
          f"{result.run_id} ({ui_command(uri)})")
    print(f"[raysl] pretrain on it: raysl pretrain --set "
          f"data.source.path={result.files['selection']}")
    return 0
