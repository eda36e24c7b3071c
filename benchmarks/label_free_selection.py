"""Do label-free measures pick the trials that the real kNN would? A sweep, then every trial scored.

One SimCLR sweep on Fashion-MNIST with its labels withheld from training and from the sweep's
choices (``tuning/label_free.yaml``: ``data.source.labels: false``), a grid of temperature x
learning rate, every trial run to the end (no early stopping) with the monitors and, on a
separate labeled split, the online kNN logged every epoch. Then every trial's final encoder is
scored with the real kNN (k=200, T=0.1, the demo's 10k-image bank and 5k queries), and for each
measure (RankMe, LiDAR, their projector versions, online kNN, final loss):

- the Spearman correlation between its final value and the final kNN across trials;
- the kNN of the trial it would crown against the best trial's kNN;
- ASHA on it, replayed on the recorded curves (synchronous successive halving with the sweep's
  grace period and reduction factor): the epochs it would have saved and the kNN of the trial it
  would have kept to the end.

Also the monitors' cost: their seconds per epoch against the epoch's.

    .venv/bin/python benchmarks/label_free_selection.py            # 8 trials, ~25 min on 2 CPUs
    .venv/bin/python benchmarks/label_free_selection.py --smoke    # the plumbing, ~3 min

Results go to stdout (Markdown) and ``--json``. The numbers describe this budget and this
dataset; a measure that ranks trials badly here is reported as such.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from mlflow.tracking import MlflowClient

from raysl.eval.data import load_eval_data
from raysl.eval.suite import TRAINED, evaluate_encoders
from raysl.serving.models import load_model
from raysl.sweep.run import run_sweep
from raysl.sweep.spec import load_sweep

ROOT = Path(__file__).resolve().parent.parent
# name -> (MLflow metric, higher is better)
MEASURES = {"RankMe": ("eval/rankme", True), "LiDAR": ("eval/lidar", True),
            "RankMe (projector)": ("eval/rankme_projector", True),
            "LiDAR (projector)": ("eval/lidar_projector", True),
            "online kNN (needs labels)": ("eval/online_knn_top1", True),
            "final loss": ("train/loss", False)}


def sweep_file(args: argparse.Namespace, where: Path) -> Path:
    """tuning/label_free.yaml with a grid for a space and no early stopping."""
    spec = yaml.safe_load((ROOT / "tuning/label_free.yaml").read_text())
    spec.update(name=f"bench-label-free-{time.strftime('%Y%m%d-%H%M%S')}",
                base=str(ROOT / "pipelines/configs/demo.yaml"), search="grid", num_samples=1,
                scheduler={"name": "fifo"}, champion={"register": False, "metric": "rankme"},
                space={"method.temperature": {"grid": args.temperatures},
                       "optim.base_lr": {"grid": args.lrs}})
    spec["set"].update({"data.source.limit": args.images, "train.epochs": args.epochs})
    path = where / "label_free_bench.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(v: list[float]) -> np.ndarray:
        a = np.asarray(v, dtype=float)
        order = a.argsort(kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a))
        for value in np.unique(a):  # ties share their mean rank
            r[a == value] = r[a == value].mean()
        return r
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def replay_asha(curves: dict[str, dict[int, float]], higher: bool, epochs: int, grace: int,
                eta: int) -> tuple[float, str]:
    """Synchronous successive halving on recorded curves -> (fraction of epochs saved, winner).

    Rungs at grace, grace*eta, ... < epochs: at each, the top 1/eta of the trials still running
    (by the measure at that epoch) go on; the others stop there. The winner is the best by the
    measure at the last epoch among those that ran to the end.
    """
    alive, spent, rung = list(curves), 0, grace
    sign = 1 if higher else -1
    while rung < epochs and len(alive) > 1:
        keep = max(1, len(alive) // eta)
        ranked = sorted(alive, key=lambda t: sign * curves[t].get(rung, -math.inf * sign),
                        reverse=True)
        spent += rung * (len(alive) - keep)
        alive = ranked[:keep]
        rung *= eta
    spent += epochs * len(alive)
    winner = max(alive, key=lambda t: sign * curves[t].get(epochs, -math.inf * sign))
    return 1 - spent / (epochs * len(curves)), winner


def main() -> None:
    """Run the sweep, score every trial, print and write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.05, 0.15, 0.5, 1.0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.3, 1.5])
    parser.add_argument("--bank", type=int, default=10000)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--grace", type=int, default=1)
    parser.add_argument("--eta", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="2 tiny trials: the plumbing only")
    parser.add_argument("--json", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    if args.smoke:
        args.images, args.epochs, args.temperatures, args.lrs = 512, 2, [0.1, 0.5], [0.5]
        args.bank, args.queries = 500, 200
    work = Path(tempfile.mkdtemp(prefix="raysl-label-free-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    base = [f"eval.bank.limit={args.bank}", f"eval.query.limit={args.queries}",
            # Online kNN on a labeled split, for comparison only: the sweep ranks on RankMe.
            "eval.online_knn_every=1", "eval.online_limit=2000", "eval.knn_k=200",
            "tracking.experiment=benchmarks-label-free", f"tracking.tracking_uri={uri}",
            f"train.storage_path={work / 'ray_results'}"]
    sweep = load_sweep(sweep_file(args, work), base_overrides=base)
    started = time.perf_counter()
    result = run_sweep(sweep)
    sweep_s = time.perf_counter() - started
    client = MlflowClient(uri)
    eval_cfg = dataclasses.replace(sweep.base.eval, protocols=("knn",), baselines=False,
                                   plots=False, enabled=True, knn_k=200, knn_temperature=0.1)
    split = load_eval_data(dataclasses.replace(sweep.base, eval=eval_cfg))
    trials: list[dict[str, Any]] = []
    for row in sorted(result.rows, key=lambda r: r.trial_id):
        loaded = load_model(f"runs:/{row.run_id}", uri)
        report = evaluate_encoders({TRAINED: loaded.encoder}, split, eval_cfg,
                                   loaded.encoder.image_size, sweep.base.train.seed,
                                   lambda _: None)
        curves = {name: {m.step: m.value for m in client.get_metric_history(row.run_id, key)}
                  for name, (key, _) in MEASURES.items()}
        epoch_s = [m.value for m in client.get_metric_history(row.run_id, "train/epoch_s")]
        monitor_s = [m.value for m in client.get_metric_history(row.run_id, "time/monitors_s")]
        trials.append({"trial": row.trial_id, "params": row.params,
                       "knn_top1": report.results[TRAINED]["knn_top1"], "curves": curves,
                       "monitor_fraction": sum(monitor_s) / max(sum(epoch_s), 1e-9)})
    best_knn = max(t["knn_top1"] for t in trials)
    rows = []
    for name, (_, higher) in MEASURES.items():
        final = [t["curves"][name].get(args.epochs, math.nan) for t in trials]
        if any(math.isnan(v) for v in final):
            continue
        sign = 1 if higher else -1
        crowned = max(range(len(trials)), key=lambda i: sign * final[i])
        saved, winner = replay_asha({t["trial"]: t["curves"][name] for t in trials}, higher,
                                    args.epochs, args.grace, args.eta)
        kept = next(t for t in trials if t["trial"] == winner)
        rows.append({"measure": name,
                     "spearman_vs_knn": spearman([sign * v for v in final],
                                                 [t["knn_top1"] for t in trials]),
                     "crowned_knn": trials[crowned]["knn_top1"], "best_knn": best_knn,
                     "asha_saved": saved, "asha_kept_knn": kept["knn_top1"]})
    cost = [t["monitor_fraction"] for t in trials]
    print(f"\n{len(trials)} trials, {args.epochs} epochs of {args.images} images each; sweep "
          f"{sweep_s / 60:.1f} min; CPU {platform.processor() or platform.machine()} x "
          f"{os.cpu_count()}")
    print("\n| trial | " + " | ".join(sweep.fields) + " | final kNN | RankMe | LiDAR | online kNN"
          " | loss |\n|---|" + "---|" * (len(sweep.fields) + 5))
    for t in trials:
        c = t["curves"]
        print(f"| {t['trial']} | " + " | ".join(f"{t['params'][f]:g}" for f in sweep.fields)
              + f" | {100 * t['knn_top1']:.2f}% | {c['RankMe'].get(args.epochs, math.nan):.1f}"
              f" | {c['LiDAR'].get(args.epochs, math.nan):.1f} | "
              f"{100 * c['online kNN (needs labels)'].get(args.epochs, math.nan):.2f}% | "
              f"{c['final loss'].get(args.epochs, math.nan):.3f} |")
    print("\n| measure | Spearman vs final kNN | kNN of the trial it crowns (best "
          f"{100 * best_knn:.2f}%) | ASHA: epochs saved | ASHA: kNN of the trial kept |\n"
          "|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['measure']} | {r['spearman_vs_knn']:+.2f} | {100 * r['crowned_knn']:.2f}% "
              f"| {100 * r['asha_saved']:.0f}% | {100 * r['asha_kept_knn']:.2f}% |")
    print(f"\nmonitors' cost: {100 * float(np.mean(cost)):.1f}% of epoch time (mean over trials; "
          f"{100 * min(cost):.1f}-{100 * max(cost):.1f}%)")
    Path(args.json).write_text(json.dumps(
        {"args": vars(args), "sweep_s": sweep_s, "trials": trials, "measures": rows,
         "monitor_fraction": cost, "cpu": platform.processor(), "cpus": os.cpu_count()},
        indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
