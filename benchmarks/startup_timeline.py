"""Where `raysl pretrain`'s seconds before its first step go: a timeline of marks, per round.

Runs the start-up benchmark's command (the demo recipe on 2,048 images, 1 epoch, evaluation
off, as `startup_ab.sh` and `startup_up.sh`) with ``--verbose`` so that Ray's own lines (the
Train controller's, the workers', Ray Data's) reach the terminal, stamps every line as it
arrives, and reads off when each mark first appears::

    .venv/bin/python benchmarks/startup_timeline.py --rounds 3        # ~4 min
    .venv/bin/python benchmarks/startup_timeline.py --rounds 2 --ab data.shuffle_buffer=0
    .venv/bin/python benchmarks/startup_timeline.py --rounds 3 --set train.num_workers=1 \
        --set train.local_mode=off --ab train.local_mode=auto     # one worker: group or in process

``--set KEY=VALUE`` (repeatable) changes the command of every run; ``--ab KEY=VALUE`` runs every
round twice, as it is and with that override, interleaved. It
prints each phase's seconds per round and their median, and writes the rounds to
``benchmarks/results/startup-timeline-DATE.json``. Lines from Ray's actors arrive through Ray's
log monitor, which batches them: a mark of theirs can be late by up to ~0.5 s (the phases
around it shift, their sum does not).
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
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mark:
    """A moment of the start-up: the first line holding ``text``, and what led to it."""

    name: str
    text: str
    phase: str  # what the seconds since the previous mark were spent on


MARKS = (
    Mark("ray", "Ray", "Python imports (torch, Ray, raysl) up to ray.init"),
    Mark("ray_up", "[raysl] run ", "Ray's start (GCS, raylet, dashboard) or joining it; "
         "MLflow's run"),
    Mark("data", "[raysl] data:", "reading the source (arrays whole) and planning"),
    Mark("fit", "[raysl] training ", "evaluation split, monitor sample, building the trainer"),
    Mark("controller", "Requesting resources", "Train's controller actor starting"),
    Mark("placed", "Attempting to start training worker group", "placement group"),
    Mark("workers", "Setting up process group", "worker processes starting (imports)"),
    Mark("group", "Started training worker group", "gloo process group, preemption "
         "watcher, the train loop's model and DDP"),
    Mark("data_exec", "Starting execution of Dataset", "Ray Data's dataset manager and split "
         "coordinator starting"),
    Mark("first_step", "[raysl] first step", "the first batch of views: augmentation, "
         "transfer, the first step's compute"),
)


def command(work: Path, overrides: list[str]) -> list[str]:
    """The benchmark's `raysl pretrain` with ``overrides``, its outputs in ``work``."""
    return [*_base(work), *(a for o in overrides for a in ("--set", o))]


def _base(work: Path) -> list[str]:
    return [str(ROOT / ".venv" / "bin" / "raysl"), "pretrain", "--verbose", "--config",
            str(ROOT / "pipelines" / "configs" / "demo.yaml"),
            "--set", "data.source.limit=2048", "--set", "train.epochs=1",
            "--set", "eval.enabled=false", "--set", "eval.monitor_every=0",
            "--set", "tracking.register=false",
            "--set", f"tracking.tracking_uri=sqlite:///{work}/mlflow.db",
            "--set", f"train.storage_path={work}/runs"]


def one_round(work: Path, overrides: list[str]) -> tuple[dict[str, float], float]:
    """Seconds from the command's start to each mark, and to its exit."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAYSL_HOME"] = str(work / "home")  # no `raysl up` record: it starts its own Ray
    seen: dict[str, float] = {}
    start = time.monotonic()
    with subprocess.Popen(command(work, overrides), cwd=work, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.monotonic() - start
            for mark in MARKS:
                if mark.name not in seen and mark.text in line:
                    seen[mark.name] = now
        proc.wait()
    if proc.returncode:
        raise RuntimeError(f"raysl pretrain exited {proc.returncode}; run it by hand in {work}")
    return seen, time.monotonic() - start


def phases(seen: dict[str, float]) -> dict[str, float]:
    """Seconds of each phase: from the previous mark seen to this one."""
    out, last = {}, 0.0
    for mark in MARKS:
        if mark.name in seen:
            out[mark.name] = seen[mark.name] - last
            last = seen[mark.name]
    return out


def main() -> None:
    """Run the rounds, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ab", default="", metavar="KEY=VALUE",
                        help="also run each round with this override, interleaved")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of both sides (repeatable)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" /
                                              f"startup-timeline-{date.today()}.json"))
    args = parser.parse_args()
    both = list(args.set)
    sides = {"as is": both, args.ab: [*both, args.ab]} if args.ab else {"as is": both}
    rounds: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for r in range(args.rounds):
        for side, overrides in sides.items():
            with tempfile.TemporaryDirectory() as work:
                seen, total = one_round(Path(work), overrides)
            load = os.getloadavg()[0]
            rounds[side].append({"marks": seen, "phases": phases(seen), "exit_s": total,
                                 "load": load})
            print(f"round {r + 1} {side}: first step {seen.get('first_step', float('nan')):.1f}"
                  f" s, exit {total:.1f} s (load {load:.1f})", flush=True)
    for side, runs in rounds.items():
        _table(side, runs)
    result = {"date": str(date.today()), "cpu": platform.processor() or _cpu_model(),
              "cores": os.cpu_count(), "python": sys.version.split()[0],
              "command": command(Path("WORK"), both), "marks": [vars(m) for m in MARKS],
              "rounds": rounds}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")


def _table(side: str, runs: list[dict[str, Any]]) -> None:
    """Each phase's seconds per round and their median; the first step's and exit's too."""
    print(f"\n{side}\n{'phase':<58} " + " ".join(f"r{r + 1:<5}" for r in range(len(runs)))
          + " median")
    rows = [(m.phase, [r["phases"].get(m.name) for r in runs]) for m in MARKS]
    rows += [("= first step", [r["marks"].get("first_step") for r in runs]),
             ("exit", [r["exit_s"] for r in runs])]
    for label, values in rows:
        known = [v for v in values if v is not None]
        cells = " ".join(f"{v:6.1f}" if v is not None else "     ?" for v in values)
        median = f"{statistics.median(known):6.1f}" if known else "     ?"
        print(f"{label[:58]:<58} {cells} {median}")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


if __name__ == "__main__":
    main()
