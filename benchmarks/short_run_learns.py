"""How far a short SimCLR run gets above its own random init on kNN, seed by seed.

The measurement behind ``tests/test_pretraining_learns.py``: the demo recipe at width 8 on
LIMIT Fashion-MNIST images for EPOCHS epochs (batch 128), one worker in process, then kNN (k=20)
of the trained encoder and of the same encoder at its random init, on BANK training images and
as many test images::

    .venv/bin/python benchmarks/short_run_learns.py                 # 3 seeds, ~6 min on 2 cores
    .venv/bin/python benchmarks/short_run_learns.py --limit 4096 --epochs 6 --bank 2000

Each run starts its own local Ray. Writes ``benchmarks/results/short-run-learns-DATE.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from raysl import config as C
from raysl.eval.suite import PIXELS, RANDOM_INIT, TRAINED
from raysl.pretrain import pretrain

ROOT = Path(__file__).resolve().parents[1]


def one_run(args: argparse.Namespace, seed: int, work: Path) -> dict[str, float]:
    """Train one seed; its kNN accuracies and seconds."""
    start = time.monotonic()
    cfg = C.load(ROOT / "pipelines" / "configs" / "demo.yaml", [
        f"data.source.limit={args.limit}", f"model.width={args.width}",
        f"train.epochs={args.epochs}", "train.num_workers=1", f"train.seed={seed}",
        f"eval.bank.limit={args.bank}", f"eval.query.limit={args.bank}", "eval.protocols=knn",
        "eval.knn_k=20", "eval.plots=false", "eval.monitor_every=0", "tracking.register=false",
        f"train.storage_path={work}/runs", f"tracking.tracking_uri=sqlite:///{work}/mlflow.db"])
    result = pretrain(cfg, log=lambda line: None)
    return {"seed": seed, "trained": result.knn[TRAINED], "random_init": result.knn[RANDOM_INIT],
            "raw_pixels": result.knn[PIXELS], "seconds": time.monotonic() - start}


def main() -> None:
    """Run the seeds, print each margin and their spread, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--bank", type=int, default=5000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                              f"short-run-learns-{date.today()}.json"))
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as work:
            runs.append(one_run(args, seed, Path(work)))
        r = runs[-1]
        margin = 100 * (r["trained"] - r["random_init"])
        print(f"seed {seed}: trained {100 * r['trained']:.2f}%, random init "
              f"{100 * r['random_init']:.2f}%, margin {margin:+.2f} points "
              f"({r['seconds']:.0f} s)", flush=True)
    margins = [100 * (r["trained"] - r["random_init"]) for r in runs]
    if len(margins) > 1:
        print(f"margin {statistics.mean(margins):.2f} +- {statistics.stdev(margins):.2f} points")
    Path(args.out).write_text(json.dumps({"date": str(date.today()), "settings": vars(args),
                                          "runs": runs}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
