"""Scale by file count: what listing, planning and starting cost at 10k, 100k and 1M files.

For each size, in one invocation on one machine:

1. **Listing and planning, in this process** (the driver's work): listing a folder tree of
   small PNGs in 1,000 class folders (ImageNet's layout), opening it (labels from the folders,
   the seeded order), building the datasource and one epoch's read tasks, and putting each task
   in the object store as Ray Data does. Reported: seconds for each, the bytes of the largest
   read task and of all of them, and the driver's Arrow and resident memory after opening.
2. **Command to first step** (``--first-step``): ``raysl pretrain`` in a fresh process that joins
   this process's Ray (so Ray's own start is not counted: it does not grow with the files),
   ``data.cache=none`` and ``auto`` (which keeps the decoded images: they are 8 px), killed once
   its first optimizer step is logged. Reported: the run's own ``first step`` line, and the
   peak memory (PSS) of its driver, its train workers and the other Ray workers.

A 1M-entry file list naming the 100k tree's files ten times (to save disk) is measured too,
and the planning of a 100M-sample shard set (an index of 10,000 shards of 10,000 samples).

    .venv/bin/python benchmarks/file_count.py                      # 10k, 100k, 1M; ~25 min
    .venv/bin/python benchmarks/file_count.py --sizes 10000 100000 --no-first-step
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extraction_speed import cpu_model

from raysl.config import SourceConfig
from raysl.data.ledger import DecodePolicy
from raysl.data.readers.base import Encoded, list_target
from raysl.data.readers.tar import INDEX_FILE, INDEX_FORMAT
from raysl.data.source import UnitSource, pick_reader
from raysl.data.storage import Store

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 1000
FIRST_STEP = re.compile(r"\[raysl\] first step ([0-9.]+)s")


def png_tree(folder: Path, n: int) -> None:
    """``n`` 8 px PNGs in :data:`CLASSES` class folders (16 distinct images, cycled)."""
    if (folder / ".complete").exists():
        return
    images = []
    for k in range(16):
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8), 16 * k, np.uint8)).save(buf, "PNG")
        images.append(buf.getvalue())
    for c in range(CLASSES):
        (folder / f"n{c:05d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"n{i % CLASSES:05d}" / f"{i:07d}.png").write_bytes(images[i % 16])
    (folder / ".complete").write_text(str(n))


def file_list(tree: Path, repeats: int, out: Path) -> Path:
    """A .txt list naming every file of ``tree`` ``repeats`` times."""
    if not out.exists():
        files = Store().list_files(str(tree)).to_pylist()
        out.write_text("\n".join(files * repeats) + "\n")
    return out


def shard_index(folder: Path, shards: int, per_shard: int) -> Path:
    """An index of ``shards`` tar shards of ``per_shard`` samples (empty files: planning only)."""
    if not (folder / INDEX_FILE).exists():
        folder.mkdir(parents=True, exist_ok=True)
        names = [f"shard-{i:06d}.tar" for i in range(shards)]
        for name in names:
            (folder / name).touch()
        (folder / INDEX_FILE).write_text(json.dumps(
            {"format": INDEX_FORMAT, "shards": dict.fromkeys(names, per_shard),
             "class_names": [f"n{c:05d}" for c in range(CLASSES)]}))
    return folder


def rss() -> int:
    """This process's resident memory, bytes."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def plan(path: Path) -> dict[str, float]:
    """List, open and plan one epoch of ``path`` in this process, as ``raysl pretrain`` does."""
    from ray.experimental.locations import get_local_object_locations

    store, cfg = Store(), SourceConfig(path=str(path))
    before_rss, before_arrow = rss(), pa.total_allocated_bytes()
    t0 = time.perf_counter()
    target = list_target(cfg.path, store, "data.source")
    t1 = time.perf_counter()
    encoded = pick_reader(cfg, target, store, "data.source").open(cfg, target, store, 0,
                                                                  "data.source")
    t2 = time.perf_counter()
    if not isinstance(encoded, Encoded):  # a tree of image files: its units, never arrays
        raise TypeError(f"{path} opened as arrays read whole, not as encoded units")
    source = UnitSource(encoded, store, 1, 8, DecodePolicy(), None, 0, cfg.path, shuffle=True)
    t3 = time.perf_counter()
    build, put = [], []
    for _ in range(2):  # an epoch's planning: read tasks built, each put in the object store
        t = time.perf_counter()
        tasks = source.get_read_tasks(1)
        build.append(time.perf_counter() - t)
        refs = [ray.put(task) for task in tasks]  # what Ray Data's planner does with each
        put.append(time.perf_counter() - t - build[-1])
    sizes = [v["object_size"] for v in get_local_object_locations(refs).values()]
    out = {"files": float(encoded.num_items), "list_s": t1 - t0, "open_s": t2 - t1,
           "datasource_s": t3 - t2, "epoch_tasks_s": min(build), "epoch_put_s": min(put),
           "tasks": float(len(tasks)),
           "task_bytes_max": float(max(sizes)), "task_bytes_total": float(sum(sizes)),
           "driver_arrow_mb": (pa.total_allocated_bytes() - before_arrow) / 2**20,
           "driver_rss_mb": (rss() - before_rss) / 2**20}
    del refs, tasks, source, encoded, target
    return out


def first_step(path: Path, cache: str, tmp: Path) -> dict[str, float]:
    """``raysl pretrain`` on ``path`` joining this Ray; killed after its first step."""
    import psutil

    name = f"files-{cache}-{path.name}"
    settings = ["model.width=8", "model.small_stem=true", "train.num_workers=2",
                "data.batch_size_global=64", "optim.warmup_epochs=0", "eval.enabled=false",
                "eval.monitor_every=0", "tracking.register=false", f"data.source.path={path}",
                f"data.cache={cache}", "data.image_size=8", "data.decode_size=8",
                "data.channels=1", "train.epochs=1", f"train.run_name={name}",
                f"train.storage_path={tmp / 'ray_results'}",
                f"tracking.tracking_uri=sqlite:///{tmp / 'mlflow.db'}"]
    log = tmp / f"{name}.log"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    peaks = {"driver_pss_mb": 0.0, "train_worker_pss_mb": 0.0, "other_worker_pss_mb": 0.0}
    with log.open("wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "raysl"), "pretrain",
                                 *[f"--set={s}" for s in settings]], stdout=out,
                                stderr=subprocess.STDOUT, cwd=tmp, env=env)
    me, driver = psutil.Process(), psutil.Process(proc.pid)
    seconds = None
    while seconds is None and proc.poll() is None:
        _sample(me, driver, peaks)
        found = FIRST_STEP.search(log.read_text(errors="replace"))
        seconds = float(found.group(1)) if found else None
        time.sleep(2.0)  # reading every process's PSS costs CPU the run would rather have
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if seconds is None:
        raise RuntimeError(f"{name}: no first step\n{log.read_text(errors='replace')[-3000:]}")
    data_line = next((ln for ln in log.read_text().splitlines() if "[raysl] data:" in ln), "")
    print(f"    {data_line.strip()}", flush=True)
    time.sleep(5)  # the killed driver's job: Ray ends its actors, freeing the CPUs
    return {"first_step_s": seconds, **peaks}


def _sample(me: Any, driver: Any, peaks: dict[str, float]) -> None:
    """Peak PSS (shared pages split among the processes mapping them) of the run's parts."""
    def pss(p: Any) -> float:
        try:
            return float(p.memory_full_info().pss) / 2**20
        except Exception:  # the process ended between listing and asking
            return 0.0

    def cmd(p: Any) -> str:
        try:
            return " ".join(p.cmdline())
        except Exception:
            return ""

    peaks["driver_pss_mb"] = max(peaks["driver_pss_mb"], pss(driver))
    workers = [p for p in me.children(recursive=True) if cmd(p).startswith("ray::")]
    train = [pss(p) for p in workers if "RayTrainWorker" in cmd(p)]
    other = [pss(p) for p in workers if "RayTrainWorker" not in cmd(p) and "IDLE" not in cmd(p)]
    peaks["train_worker_pss_mb"] = max([peaks["train_worker_pss_mb"], *train])
    peaks["other_worker_pss_mb"] = max([peaks["other_worker_pss_mb"], *other])


def main() -> None:
    """Measure each size and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--no-first-step", dest="first_step", action="store_false")
    p.add_argument("--shards", type=int, default=10_000,
                   help="also plan an index of this many 10,000-sample shards (0: none)")
    p.add_argument("--workdir", default="", help="where the trees go (kept for the next run)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                        f"file-count-{time.strftime('%Y-%m-%d')}.json"))
    args = p.parse_args()
    work = Path(args.workdir or Path(tempfile.gettempdir()) / "raysl-file-count")
    tmp = Path(tempfile.mkdtemp(prefix="raysl-file-count-runs-"))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    results: dict[str, Any] = {"cpu": cpu_model(), "cpus": os.cpu_count(), "sources": {}}
    sources = []
    for n in args.sizes:
        t = time.perf_counter()
        png_tree(work / f"tree-{n}", n)
        print(f"[file_count] tree of {n} files ready in {time.perf_counter() - t:.0f}s",
              flush=True)
        sources.append((f"folder-{n}", work / f"tree-{n}"))
    if 100_000 in args.sizes and 1_000_000 in args.sizes:
        sources.append(("list-1000000", file_list(work / "tree-100000", 10,
                                                  work / "list-1000000.txt")))
    if args.shards:  # a 100M-sample shard set: 10,000 shards of 10,000, planned only
        sources.append((f"shards-{args.shards * 10_000}", shard_index(
            work / f"shards-{args.shards}", args.shards, 10_000)))
    for name, path in sources:
        row = plan(path)
        print(f"[file_count] {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()),
              flush=True)
        if args.first_step and not name.startswith("shards"):
            for cache in ("none", "auto"):
                run = first_step(path, cache, tmp)
                row.update({f"{k}_{cache}": v for k, v in run.items()})
                print(f"[file_count] {name} cache={cache}: " +
                      ", ".join(f"{k} {v:.3g}" for k, v in run.items()), flush=True)
        results["sources"][name] = row
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"[file_count] wrote {args.out}")
    ray.shutdown()


if __name__ == "__main__":
    main()
