"""What a sweep's trials pay to start: an 8-trial sweep, trials in a worker group or in process.

Runs ``raysl tune`` on one sweep of short one-worker trials (the demo recipe, 512 Fashion-MNIST
images, 1 epoch each, 8 learning rates, one trial at a time) with ``train.local_mode=off``
(each trial starts a Ray Train worker group) and ``auto`` (each trial trains in its own Tune
process), interleaved round by round::

    .venv/bin/python benchmarks/sweep_startup.py --rounds 2        # ~15 min on 2 cores

For each sweep it reports the wall clock of the command, and each trial's start-up: the seconds
from the trial's start (its ``pretrain`` call) to its first step, the ``time/first_step_s``
every trial's MLflow run holds. Writes ``benchmarks/results/sweep-startup-DATE.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
TRIALS = 8
SIDES = ("off", "auto")


def sweep_spec(work: Path, local_mode: str) -> dict[str, Any]:
    """The benchmark's sweep, its outputs in ``work``."""
    return {
        "name": "startup-bench",
        "base": str(ROOT / "pipelines" / "configs" / "demo.yaml"),
        "set": {"data.source.limit": 512, "data.batch_size_global": 64, "train.epochs": 1,
                "train.num_workers": 1, "train.local_mode": local_mode,
                "eval.monitor_every": 0, "eval.bank.limit": 600, "eval.query.limit": 300,
                "train.storage_path": str(work / "runs"),
                "tracking.tracking_uri": f"sqlite:///{work / 'mlflow.db'}"},
        "space": {"optim.base_lr": {"grid": [0.05 * 2 ** i for i in range(TRIALS)]}},
        "search": "grid",
        "scheduler": {"name": "fifo"},
        "max_concurrent_trials": 1,
        "champion": {"register": False},
    }


def trial_start_ups(work: Path) -> list[float]:
    """Each trial's ``time/first_step_s``, from the sweep's MLflow store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.`raysl.kind` = 'sweep trial'")
    return sorted(r.data.metrics["time/first_step_s"] for r in runs
                  if "time/first_step_s" in r.data.metrics)


def one_sweep(work: Path, local_mode: str) -> dict[str, Any]:
    """Run the sweep once: its wall clock and each trial's seconds to its first step."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAYSL_HOME"] = str(work / "home")  # no `raysl up` record: it starts its own Ray
    path = work / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_spec(work, local_mode)))
    start = time.monotonic()
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "raysl"), "tune", "--sweep", str(path)],
                         cwd=work, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    log = out.stdout + out.stderr
    if out.returncode:
        (work.parent / f"sweep-{local_mode}.log").write_text(log)
        raise RuntimeError(f"raysl tune exited {out.returncode}:\n{log[-3000:]}")
    first = trial_start_ups(work)
    if len(first) != TRIALS:
        raise RuntimeError(f"{len(first)} of {TRIALS} trials logged a first step:\n{log[-3000:]}")
    return {"wall_s": wall, "trial_first_step_s": first,
            "in_process": "in the trial's own process" in log}


def main() -> None:
    """Run the rounds, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                              f"sweep-startup-{date.today()}.json"))
    args = parser.parse_args()
    rounds: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for r in range(args.rounds):
        for side in SIDES:
            with tempfile.TemporaryDirectory() as work:
                run = one_sweep(Path(work), side)
            run["load"] = os.getloadavg()[0]
            rounds[side].append(run)
            print(f"round {r + 1} local_mode={side}: sweep {run['wall_s']:.1f} s, trial start-up "
                  f"median {statistics.median(run['trial_first_step_s']):.1f} s "
                  f"(in process: {run['in_process']}; load {run['load']:.1f})", flush=True)
    print(f"\n{'train.local_mode':<18} {'sweep wall clock (rounds)':<28} {'median':>7}   "
          f"{'trial start-up, median of each round':<38}")
    for side, runs in rounds.items():
        walls = [run["wall_s"] for run in runs]
        starts = [statistics.median(run["trial_first_step_s"]) for run in runs]
        print(f"{side:<18} {', '.join(f'{w:.0f}' for w in walls):<28} "
              f"{statistics.median(walls):7.1f}   {', '.join(f'{s:.1f}' for s in starts)}")
    result = {"date": str(date.today()), "cpu": platform.processor() or _cpu_model(),
              "cores": os.cpu_count(), "python": sys.version.split()[0], "trials": TRIALS,
              "sweep": sweep_spec(Path("WORK"), "SIDE"),
              "rounds": rounds}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


if __name__ == "__main__":
    main()
