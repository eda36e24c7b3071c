"""Streaming at scale: a dataset 5x larger than the object store, trained with bounded memory.

Three measurements, in one invocation (the same machine, the same installed raysl):

1. **Start-up with 100k files** (``--listing-files``): a folder tree of 100,000 small PNGs;
   ``raysl pretrain`` in a fresh process (Ray started, the folder listed once, streaming), and
   the time from the command's start to its first optimizer step (``time/first_step_s``).
2. **Bounded memory** (``--images``): JPEG tar shards (``raysl shards``' layout) whose decoded
   images need ``--images`` x 160 x 160 x 3 bytes (1.54 GB for 20,000), pretrained for one epoch
   with ``data.cache=none`` on a local Ray whose object store has ``--store-mb`` MB (300).
   Every second: the object store's bytes in use, spilled and restored (Ray's memory summary),
   and the memory of the driver and of every Ray worker process (PSS: shared pages split
   between the processes that map them, so per-process figures add up).
3. **Streaming vs cached throughput** at 28 px (the demo's size): the same Fashion-MNIST images
   (or generated shapes) as PNG tar shards, pretrained with ``data.cache=memory`` and with
   ``none`` in turns (memory, none, memory, none, ...), each run two epochs; the second epoch's
   img/s is compared (goal: streaming >= 0.8x cached).

    .venv/bin/python benchmarks/memory_scale.py                     # ~20 min on 2 CPUs
    .venv/bin/python benchmarks/memory_scale.py --images 4000 --listing-files 10000 --rounds 1

Ray's memory summary is read through ``ray._private.internal_api`` (what ``ray memory
--stats-only`` prints): a private API, used here in a benchmark only.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_throughput import smooth_images
from extraction_speed import cpu_model

from raysl import config as C
from raysl.cluster.connect import quiet_driver_logs
from raysl.config import FASHION_MNIST_DIR
from raysl.data import generated
from raysl.data.readers.idx import parse_idx
from raysl.data.readers.tar import INDEX_FILE, INDEX_FORMAT

ROOT = Path(__file__).resolve().parents[1]
SHARD = 1000  # images per generated shard


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def _encoded(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(
        buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _write_shard(path: Path, images: np.ndarray, labels: np.ndarray, fmt: str) -> int:
    ext = "jpg" if fmt == "JPEG" else "png"
    with tarfile.open(path, "w") as tar:
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            for name, data in ((f"{i:06d}.{ext}", _encoded(image, fmt)),
                               (f"{i:06d}.cls", str(int(label)).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return len(images)


def _smooth_shard(args: tuple[Path, int, int]) -> int:
    path, n, seed = args
    return _write_shard(path, smooth_images(n, 160, seed), np.arange(n) % 10, "JPEG")


def write_index(folder: Path, counts: dict[str, int], classes: int) -> None:
    """The ``shards.json`` that raysl's tar reader reads instead of counting the shards."""
    index = {"format": INDEX_FORMAT, "shards": counts,
             "class_names": [str(c) for c in range(classes)]}
    (folder / INDEX_FILE).write_text(json.dumps(index))


def large_jpeg_shards(folder: Path, n: int) -> None:
    """``n`` 160 px RGB JPEGs (smooth noise, photo-like) in shards of 1000, 2 writers."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder / f"shard-{s:06d}.tar", min(SHARD, n - s * SHARD), s)
            for s in range(-(-n // SHARD))]
    with ProcessPoolExecutor(2) as pool:
        counts = list(pool.map(_smooth_shard, jobs))
    write_index(folder, {p.name: c for (p, _, _), c in zip(jobs, counts, strict=True)}, 10)


def small_png_shards(folder: Path, n: int) -> str:
    """``n`` 28 px grayscale images (Fashion-MNIST, else shapes) as PNG shards; their source."""
    idx = Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz"
    if idx.exists():
        x = parse_idx(idx.read_bytes(), idx.name)[:n, ..., None]
        y = parse_idx((idx.parent / "train-labels-idx1-ubyte.gz").read_bytes(), "labels")[:n]
        source = "Fashion-MNIST"
    else:
        x, y = generated.shapes(n, size=28, seed=0)
        source = "generated shapes"
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for s in range(-(-n // SHARD)):
        part = slice(s * SHARD, (s + 1) * SHARD)
        name = f"shard-{s:06d}.tar"
        counts[name] = _write_shard(folder / name, x[part], y[part], "PNG")
    write_index(folder, counts, 10)
    return source


def png_tree(folder: Path, n: int) -> None:
    """``n`` 8 px PNG files in 100 class folders (a listing, not a training set)."""
    data = _encoded(np.full((8, 8, 1), 128, np.uint8), "PNG")
    for c in range(100):
        (folder / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"c{i % 100:03d}" / f"{i:06d}.png").write_bytes(data)


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


def base_overrides(tmp: Path, name: str) -> list[str]:
    """A small SimCLR on 2 workers, no evaluation: the data path is what is measured."""
    return ["model.width=8", "model.small_stem=true", "train.num_workers=2",
            "data.batch_size_global=128", "optim.name=sgd", "optim.base_lr=0.3",
            "optim.warmup_epochs=0", "eval.enabled=false", "tracking.register=false",
            f"train.run_name={name}", f"train.storage_path={tmp / 'ray_results'}",
            f"tracking.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
            "tracking.experiment=memory-scale", "data.views.blur_p=[0.0, 0.0]"]


def first_step_seconds(tmp: Path, tree: Path) -> float:
    """``raysl pretrain`` in a fresh process on the tree; its logged start-up time."""
    from mlflow.tracking import MlflowClient

    settings = [*base_overrides(tmp, "listing"), f"data.source.path={tree}", "data.cache=none",
                "data.image_size=8", "data.decode_size=8", "data.channels=1", "train.epochs=1",
                "data.source.limit=2048"]
    cmd = [str(Path(sys.executable).parent / "raysl"), "pretrain",
           *[f"--set={s}" for s in settings]]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   cwd=tmp, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("memory-scale")
    if experiment is None:
        raise RuntimeError(f"raysl pretrain logged no MLflow experiment 'memory-scale' in {tmp}")
    run = client.search_runs([experiment.experiment_id],
                             "tags.`raysl.run_name` = 'listing'")[0]
    return float(run.data.metrics["time/first_step_s"])


@dataclass
class Sampler:
    """Samples the object store and processes' memory every second, in a thread."""

    peaks: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _sample(self) -> None:
        import psutil  # Ray's vendored copy, on the path once ray is imported
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        state = get_state_from_address(  # type: ignore[no-untyped-call]  # Ray's private API
            ray.get_runtime_context().gcs_address)
        me = psutil.Process()
        while not self._stop.wait(1.0):
            stats = get_memory_info_reply(state).store_stats  # type: ignore[no-untyped-call]
            self._peak("object_store_bytes", stats.object_store_bytes_used)
            self._peak("spilled_bytes", stats.spilled_bytes_total)
            self._peak("restored_bytes", stats.restored_bytes_total)
            self._peak("driver_pss", _pss(me))
            workers = [p for p in me.children(recursive=True) if _is_worker(p)]
            pss = {p.pid: _pss(p) for p in workers}
            train = [pss[p.pid] for p in workers if "RayTrainWorker" in _cmd(p)]
            self._peak("train_worker_pss", max(train, default=0))
            self._peak("other_worker_pss", max((pss[p.pid] for p in workers
                                                if "RayTrainWorker" not in _cmd(p)), default=0))
            self._peak("all_ray_workers_pss", sum(pss.values()))
            self.samples += 1

    def _peak(self, key: str, value: float) -> None:
        self.peaks[key] = max(self.peaks.get(key, 0.0), float(value))

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _cmd(p: Any) -> str:
    try:
        return " ".join(p.cmdline())
    except Exception:  # the process ended between listing and asking
        return ""


def _is_worker(p: Any) -> bool:
    return _cmd(p).startswith("ray::")


def _pss(p: Any) -> int:
    """Proportional set size of a process, 0 if it is gone.

    Shared pages (the object store's, mapped by every worker) are split between the processes
    that map them, so the sum over processes is the real total.
    """
    try:
        return int(p.memory_full_info().pss)
    except Exception:  # the process ended between listing and asking
        return 0


def train(tmp: Path, name: str, overrides: list[str]) -> dict[str, float]:
    """One pretraining run in this process; its per-epoch img/s from MLflow."""
    from mlflow.tracking import MlflowClient

    from raysl.pretrain import pretrain

    cfg = C.load(None, base_overrides(tmp, name) + overrides)
    result = pretrain(cfg, log=lambda _: None)
    client = MlflowClient(result.tracking_uri)
    history = sorted(client.get_metric_history(result.mlflow_run_id, "train/images_per_s"),
                     key=lambda m: m.step)
    return {f"epoch_{m.step}": m.value for m in history}


def main() -> None:
    """Parse the arguments, run the three measurements, print them, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20_000, help="160 px JPEGs of the large run")
    p.add_argument("--store-mb", type=int, default=300, help="the object store's size")
    p.add_argument("--listing-files", type=int, default=100_000)
    p.add_argument("--throughput-images", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=2, help="cached/streamed pairs at 28 px")
    p.add_argument("--out", default="benchmarks/memory_scale.json")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="raysl-memory-"))
    out: dict[str, Any] = {"cpu": cpu_model(), "cpus": os.cpu_count(),
                           "date": time.strftime("%Y-%m-%d"), "store_mb": args.store_mb}

    print(f"[1/3] {args.listing_files} files: command to first step", flush=True)
    png_tree(tmp / "tree", args.listing_files)
    out["first_step_s"] = first_step_seconds(tmp, tmp / "tree")
    print(f"      first step {out['first_step_s']:.1f}s after the command started (goal <= 15)")

    print(f"[2/3] {args.images} JPEG images, decoded "
          f"{args.images * 160 * 160 * 3 / 1e9:.2f} GB, object store {args.store_mb} MB",
          flush=True)
    large_jpeg_shards(tmp / "large", args.images)
    ray.init(num_cpus=2, object_store_memory=args.store_mb * 2**20, include_dashboard=False,
             log_to_driver=False, logging_level=logging.WARNING)
    quiet_driver_logs()
    ray.data.DataContext.get_current().enable_progress_bars = False
    t0 = time.perf_counter()
    with Sampler() as sampler:
        rates = train(tmp, "large", [f"data.source.path={tmp / 'large'}", "data.cache=none",
                                     "data.decode_size=160", "data.image_size=64",
                                     "train.epochs=1", "data.channels=3"])
    out["large"] = {"images": args.images, "decoded_gb": args.images * 160 * 160 * 3 / 1e9,
                    "seconds": time.perf_counter() - t0, "img_per_s": rates.get("epoch_1"),
                    **sampler.peaks, "samples": sampler.samples}
    for key in ("object_store_bytes", "spilled_bytes", "restored_bytes", "driver_pss",
                "train_worker_pss", "other_worker_pss", "all_ray_workers_pss"):
        print(f"      peak {key:<22} {sampler.peaks.get(key, 0) / 2**20:9.1f} MiB")
    print(f"      {rates.get('epoch_1', 0):.0f} img/s", flush=True)

    print(f"[3/3] {args.throughput_images} images at 28 px: cached vs streamed", flush=True)
    source = small_png_shards(tmp / "small", args.throughput_images)
    runs: dict[str, list[float]] = {"memory": [], "none": []}
    for r in range(args.rounds):
        for mode in ("memory", "none"):
            rate = train(tmp, f"fit-{mode}-{r}", [
                f"data.source.path={tmp / 'small'}", f"data.cache={mode}",
                "data.image_size=28", "data.decode_size=32", "data.channels=1",
                "train.epochs=2"])
            runs[mode].append(rate["epoch_2"])
            print(f"      round {r + 1} cache={mode:<6} {rate['epoch_2']:.0f} img/s "
                  f"(epoch 1: {rate['epoch_1']:.0f})", flush=True)
    medians = {k: statistics.median(v) for k, v in runs.items()}
    out["throughput"] = {"source": source, "images": args.throughput_images, "runs": runs,
                         "median": medians, "ratio": medians["none"] / medians["memory"]}
    print(f"      streamed / cached = {out['throughput']['ratio']:.2f} (goal >= 0.8)")
    ray.shutdown()
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"\n{json.dumps(out, indent=2)}")


if __name__ == "__main__":
    main()
