"""Distillation at equal wall clock: a small student taught by a larger encoder, or on its own.

    .venv/bin/python benchmarks/distill.py                              # ~45 min here
    .venv/bin/python benchmarks/distill.py --budget 1 --seeds 0 --teacher-epochs 1
        --images 4096 --eval-limit 2000                                 # plumbing, ~8 min

1. **Teacher**: ``raysl pretrain`` with the demo's recipe (SimCLR, a ResNet-18 of width 16 with
   the small-image stem) for ``--teacher-epochs`` epochs, registered in the benchmark's own
   MLflow store as ``bench-teacher`` (or ``--teacher URI``, an encoder already registered there).
2. **Students**, a ResNet-18 of width ``--student-width`` (8: about a quarter of the teacher's
   compute), each side at its own recipe and for the same wall clock, counted from launching the
   command to its exit (start-up counts: a user pays for it):

   * ``distill``: ``pipelines/configs/distill_fmnist.yaml`` with ``method.teacher`` the teacher;
   * ``simclr``: the demo's recipe itself, at the student's width.

   Each side's cosine schedule needs its length up front, so each side gets its own pilot run
   (2 epochs of ``--pilot-images``, counted for neither) that plans its epochs to fill the budget
   (``accuracy.plan``), and its warm-up keeps its recipe's fraction of the run. The sides
   alternate within each seed (``--seeds``), so a machine that slows down slows both.
3. **One evaluation** scores every student, the teacher and the student's random init with
   raysl's protocols: weighted kNN (k=200, T=0.1) and the linear probe, on ``--eval-limit``
   images of the training split as the bank and as many of the test split as queries. Results:
   a Markdown table (mean and spread over seeds per side) on stdout, everything in ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from accuracy import plan, timed_pretrain  # benchmarks/ is on the path of its scripts
from extraction_speed import cpu_model

from raysl import config as C

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"distill": ROOT / "pipelines/configs/distill_fmnist.yaml",
           "simclr": ROOT / "pipelines/configs/demo.yaml"}
TEACHER_RECIPE = ROOT / "pipelines/configs/demo.yaml"
TEACHER_NAME = "bench-teacher"
METRICS = ("knn_top1", "linear_top1")


def note(line: str) -> None:
    """A progress line (stderr: stdout is the table)."""
    print(f"[bench] {line}", file=sys.stderr, flush=True)


def pretrain(args: argparse.Namespace, recipe: Path, settings: list[str], out: Path
             ) -> dict[str, Any]:
    """``raysl pretrain`` as a user runs it, training only: its wall clock, rate, checkpoint."""
    return timed_pretrain(recipe, [f"data.source.path={args.data}", "eval.enabled=false",
                                   "eval.monitor_every=0", *settings], out, args.store,
                          out.name, args.timeout)


def student(args: argparse.Namespace, side: str, teacher: str) -> list[str]:
    """The student's settings on each side: its width, and the distillation's teacher."""
    settings = [f"model.width={args.student_width}", "tracking.register=false"]
    return [*settings, f"method.teacher={teacher}"] if side == "distill" else settings


def warmup(side: str, epochs: int) -> float:
    """The side's warm-up, as the same fraction of its planned epochs as of its recipe's.

    A schedule fitted to the budget: the recipes' warm-ups are counted in their own (longer)
    epochs, and distill's 2 of 50 would otherwise fill a 2-epoch run.
    """
    recipe = C.load(RECIPES[side], ["method.teacher=unused"] if side == "distill" else [])
    return recipe.optim.warmup_epochs * epochs / recipe.train.epochs


def run_side(args: argparse.Namespace, side: str, teacher: str, epochs: int, images: int,
             seed: int, out: Path) -> dict[str, Any]:
    """One student run: ``epochs`` epochs of ``images`` images at ``seed``."""
    settings = [*student(args, side, teacher), f"data.source.limit={images}",
                f"train.epochs={epochs}", f"train.seed={seed}",
                f"optim.warmup_epochs={warmup(side, epochs):g}"]
    result = pretrain(args, RECIPES[side], settings, out)
    return {**result, "side": side, "seed": seed, "epochs": epochs, "images": images}


def train_teacher(args: argparse.Namespace, work: Path) -> str:
    """``--teacher`` or a freshly trained and registered demo encoder: its registry URI."""
    if args.teacher:
        return str(args.teacher)
    note(f"teacher: the demo recipe, {args.teacher_epochs} epoch(s) of {args.images} images")
    result = pretrain(args, TEACHER_RECIPE, [
        f"data.source.limit={args.images}", f"train.epochs={args.teacher_epochs}",
        f"tracking.registered_model={TEACHER_NAME}"], work / "teacher")
    note(f"teacher: {result['wall_s']:.0f}s, {result['images_per_s']:.0f} img/s")
    return f"models:/{TEACHER_NAME}@champion"


def evaluate(args: argparse.Namespace, runs: list[dict[str, Any]], teacher: str
             ) -> dict[str, dict[str, float]]:
    """Scores by model and metric: every student run, the teacher and random init, one pass."""
    from raysl.cluster.connect import connect
    from raysl.eval.data import load_eval_data
    from raysl.eval.suite import evaluate_encoders, with_baseline
    from raysl.evaluate import evaluation_config
    from raysl.serving.models import load_model

    first = load_model(runs[0]["checkpoint"], args.store)
    cfg = evaluation_config(first.config, args.data, "knn,linear", [
        f"eval.bank.limit={args.eval_limit}", f"eval.query.limit={args.eval_limit}",
        "eval.knn_k=200", "eval.knn_temperature=0.1", "eval.baselines=true",
        "eval.plots=false"])
    encoders = {name: encoder for name, encoder in with_baseline(cfg, first.encoder).items()
                if name != "trained"}
    for run in runs:
        encoders[f"{run['side']}-seed{run['seed']}"] = load_model(run["checkpoint"],
                                                                  args.store).encoder
    encoders["teacher"] = load_model(teacher, args.store).encoder
    connect()
    torch.set_num_threads(os.cpu_count() or 1)
    report = evaluate_encoders(encoders, load_eval_data(cfg), cfg.eval, cfg.data.image_size,
                               cfg.train.seed, log=lambda line: print(line, file=sys.stderr))
    return report.results


def table(runs: list[dict[str, Any]], scores: dict[str, dict[str, float]]) -> str:
    """Mean and standard deviation over seeds per side; the teacher and random init."""
    rows = ["| model | seeds | wall clock | images seen | kNN top-1 | linear top-1 |",
            "|---|---:|---:|---:|---:|---:|"]
    for side in ("distill", "simclr"):
        mine = [r for r in runs if r["side"] == side]
        cells = []
        for metric in METRICS:
            values = [100 * scores[f"{side}-seed{r['seed']}"][metric] for r in mine]
            spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.2f}%{spread}")
        wall = statistics.mean(r["wall_s"] for r in mine) / 60
        seen = statistics.mean(r["images_seen"] for r in mine)
        rows.append(f"| student, {side} | {len(mine)} | {wall:.1f} min | {seen:,.0f} | "
                    f"{' | '.join(cells)} |")
    for name in ("teacher", "random_init"):
        cells = [f"{100 * scores[name][m]:.2f}%" if m in scores.get(name, {}) else "-"
                 for m in METRICS]
        rows.append(f"| {name.replace('_', ' ')} | | | | {' | '.join(cells)} |")
    return "\n".join(rows)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=4.0,
                   help="wall-clock minutes per student run, from launch to exit")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--images", type=int, default=20000, help="unlabeled training images")
    p.add_argument("--pilot-images", type=int, default=4096,
                   help="images of each side's two-epoch pilot (plans its epochs)")
    p.add_argument("--teacher-epochs", type=int, default=4)
    p.add_argument("--teacher", default="", help="a registry URI in --store instead of training")
    p.add_argument("--student-width", type=int, default=8)
    p.add_argument("--eval-limit", type=int, default=10000,
                   help="bank and query images scored (0 = the whole splits)")
    p.add_argument("--data", default=C.FASHION_MNIST_DIR)
    p.add_argument("--work", default="", help="where runs go (default: a temporary directory)")
    p.add_argument("--store", default="", help="MLflow store (default: one in --work)")
    p.add_argument("--json", default="benchmarks/distill.json")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per pretrain command")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Teacher, pilots, the interleaved student runs, one evaluation; print and save."""
    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="raysl-distill-") as tmp:
        work = Path(args.work or tmp)
        args.store = args.store or f"sqlite:///{work}/mlflow.db"
        teacher = train_teacher(args, work)
        plans = {}
        for side in RECIPES:  # each side's own pilot, counted for neither
            pilot = run_side(args, side, teacher, 2, args.pilot_images, 0, work / f"pilot-{side}")
            plans[side] = plan(60 * args.budget, pilot, args.images)
            note(f"pilot {side}: {pilot['wall_s']:.0f}s, {pilot['images_per_s']:.0f} img/s; "
                 f"plan {plans[side][0]} epoch(s) of {plans[side][1]} images")
        runs = []
        for seed in args.seeds:
            for side in RECIPES:  # interleaved: each seed runs both sides in turn
                epochs, images = plans[side]
                runs.append(run_side(args, side, teacher, epochs, images, seed,
                                     work / f"{side}-seed{seed}"))
                note(f"{side} seed {seed}: {runs[-1]['wall_s']:.0f}s, "
                     f"{runs[-1]['images_seen']} images")
        scores = evaluate(args, runs, teacher)
    Path(args.json).write_text(json.dumps(
        {"args": vars(args), "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"),
         "plans": plans, "runs": runs, "scores": scores}, indent=2))
    print(table(runs, scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
