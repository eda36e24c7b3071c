"""Does curation help? Pretraining on a curated sample against a random one of the same size.

The pool: Fashion-MNIST's training split made long-tailed (class c keeps ``head x ratio^c``
of its images, ``--head`` 6000 and ``--ratio`` 0.5: 6000, 3000, ..., 12) with injected
duplicates (``--dups`` of the pool's size, drawn uniformly from it, so the head is copied most;
half exact copies, half near copies with a few pixels changed), written as PNG files in class
folders (the labels are only used for the report and the evaluation, never to curate or train).

1. The curator: the same recipe pretrained on the whole pool (``--curator-epochs``), its
   checkpoint the ``--model`` of ``raysl curate`` (the paper curates with an encoder trained
   elsewhere; here there is no other).
2. Two samples of ``--size`` images: (a) uniformly at random from the pool, (b) ``raysl
   curate --target SIZE``.
3. For each seed, both samples pretrained with the same recipe (the demo's SimCLR, ``--epochs``
   epochs: the same images and steps, so about the same wall clock, which is reported), taking
   turns, then kNN and the linear probe on a class-balanced split of Fashion-MNIST (bank: 10,000
   training images, queries: 5,000 of the test split).

Reported: per arm, kNN and linear top-1 per seed, their mean and spread, the wall clock, and
the samples' class counts.

    .venv/bin/python benchmarks/curate_benefit.py                          # ~45 min on 2 CPUs
    .venv/bin/python benchmarks/curate_benefit.py --smoke                  # minutes: the path
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from raysl import config as C
from raysl.cluster.connect import connect
from raysl.config import FASHION_MNIST_DIR, SourceConfig
from raysl.curate import NEAR_DEFAULT
from raysl.curate.command import CurateSettings, curate
from raysl.data.readers.idx import parse_idx
from raysl.pretrain import pretrain
from raysl.serving.models import load_model

DEMO = Path(__file__).resolve().parents[1] / "pipelines/configs/demo.yaml"


def long_tailed_pool(root: Path, head: int, ratio: float, dups: float,
                     seed: int) -> dict[str, int]:
    """Write the pool's PNGs into class folders under ``root``; returns images per class."""
    folder = Path(FASHION_MNIST_DIR)
    images = parse_idx((folder / "train-images-idx3-ubyte.gz").read_bytes(), "train-images")
    labels = parse_idx((folder / "train-labels-idx1-ubyte.gz").read_bytes(), "train-labels")
    rng = np.random.default_rng(seed)
    keep = np.concatenate([np.flatnonzero(labels == c)[:max(1, round(head * ratio ** c))]
                           for c in range(10)])
    paths = []
    for i in keep:
        path = root / f"class_{labels[i]}" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(path)
        paths.append(path)
    copies = rng.choice(len(keep), round(dups * len(keep)), replace=True)
    for k, j in enumerate(copies):
        image = images[keep[j]].copy()
        if k % 2:  # near: a few pixels changed
            spots = rng.integers(0, 28, (4, 2))
            image[spots[:, 0], spots[:, 1]] ^= 8
        Image.fromarray(image).save(paths[j].parent / f"dup{k:05d}.png")
    return dict(Counter(p.parent.name for p in root.rglob("*.png")))


def recipe(work: Path, source: str, epochs: int, seed: int, name: str,
           smoke: bool) -> C.Config:
    """The demo's SimCLR on ``source``, evaluated on balanced Fashion-MNIST splits."""
    overrides = [f"data.source.path={source}", "data.source.limit=0", f"train.epochs={epochs}",
                 f"train.seed={seed}", f"train.run_name={name}", "tracking.register=false",
                 "eval.protocols=knn,linear", "eval.baselines=false",
                 f"train.storage_path={work / 'ray_results'}",
                 f"tracking.tracking_uri=sqlite:///{work / 'mlflow.db'}",
                 "tracking.experiment=curate-benefit"]
    if smoke:
        overrides += ["eval.bank.limit=1000", "eval.query.limit=500", "eval.linear_epochs=[5]",
                      "eval.linear_lrs=[0.3]", "eval.knn_k=20"]
    return C.load(DEMO, overrides)


def main() -> None:
    """Parse the arguments, build the pool and samples, pretrain both arms per seed, report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--head", type=int, default=6000, help="images of the first class")
    p.add_argument("--ratio", type=float, default=0.5, help="class frequency ratio")
    p.add_argument("--dups", type=float, default=0.3, help="injected copies, x pool size")
    p.add_argument("--size", type=int, default=4000, help="images per sample")
    p.add_argument("--near", type=float, default=NEAR_DEFAULT, help="curate's --near "
                   f"(default {NEAR_DEFAULT}, curate's own: check the report)")
    p.add_argument("--curator-epochs", type=int, default=4)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--smoke", action="store_true", help="a tiny run of the whole path")
    p.add_argument("--out", default="benchmarks/curate_benefit.json")
    args = p.parse_args()
    if args.smoke:
        args.head, args.size, args.curator_epochs, args.epochs, args.seeds, args.near = \
            1000, 400, 1, 1, "0", 0.99999  # 1 epoch: nearly every pair is above 0.98
    work = Path(tempfile.mkdtemp(prefix="raysl-curate-benefit-"))
    pool = long_tailed_pool(work / "pool", args.head, args.ratio, args.dups, 0)
    print(f"pool: {sum(pool.values())} files {dict(sorted(pool.items()))}", flush=True)
    connect()
    curator = pretrain(recipe(work, str(work / "pool"), args.curator_epochs, 0, "curator",
                              args.smoke))
    files = sorted(str(f) for f in (work / "pool").rglob("*.png"))
    rng = np.random.default_rng(0)
    (work / "random.txt").write_text("\n".join(rng.choice(files, args.size, replace=False)))
    curated = curate(load_model(curator.checkpoint_path, curator.tracking_uri),
                     SourceConfig(path=str(work / "pool")), str(work / "curated"),
                     CurateSettings(target=args.size, near=args.near),
                     tracking_uri=curator.tracking_uri)
    print("\n".join(curated.report.lines()), flush=True)
    if curated.report.selected < args.size:
        raise SystemExit(f"curation left {curated.report.selected} of the {args.size} images "
                         f"asked for (--near {args.near} removed {curated.report.removed}): "
                         "train the curator longer or raise --near")
    arms = {"random": str(work / "random.txt"), "curated": curated.selection}
    samples = {arm: dict(Counter(Path(line).parent.name for line in
                                 Path(path).read_text().split())) for arm, path in arms.items()}
    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arm, path in arms.items():  # taking turns
            t0 = time.perf_counter()
            run = pretrain(recipe(work, path, args.epochs, seed, f"{arm}-{seed}", args.smoke))
            row = dict(run.report.results["trained"]) if run.report else {}
            row["seconds"] = time.perf_counter() - t0
            results[arm].append(row)
            print(f"seed {seed} {arm:<8} kNN {row.get('knn_top1', float('nan')):.4f} linear "
                  f"{row.get('linear_top1', float('nan')):.4f} {row['seconds']:.0f} s", flush=True)
    summary = {arm: {m: (statistics.mean(r[m] for r in rows),
                         statistics.pstdev(r[m] for r in rows))
                     for m in ("knn_top1", "linear_top1", "seconds") if all(m in r for r in rows)}
               for arm, rows in results.items()}
    for arm, stats in summary.items():
        print(f"{arm:<8} " + "  ".join(f"{m} {mean:.4f} +- {sd:.4f}"
                                       for m, (mean, sd) in stats.items()))
    Path(args.out).write_text(json.dumps(
        {"args": vars(args), "pool": pool, "samples": samples, "curate": curated.report.to_dict(),
         "results": results, "summary": summary, "date": time.strftime("%Y-%m-%d")}, indent=1))


if __name__ == "__main__":
    main()
