"""Accuracy at equal wall-clock budget: raysl's shipped SimCLR recipe against lightly's.

    .venv/bin/python benchmarks/accuracy.py                   # a 10-minute budget: ~27 min
    .venv/bin/python benchmarks/accuracy.py --budgets 10 20   # ~75 min
    .venv/bin/python benchmarks/accuracy.py --budgets 1 --images 4096 --eval-limit 2000  # plumbing

Both sides pretrain SimCLR on the same unlabeled images (the Fashion-MNIST training split) with
the same encoder (the demo's ResNet-18 at width 16 with the small-image stem), for the same wall
clock, counted from launching the command to its exit, evaluation excluded (start-up counts: a
user pays for it):

* ``raysl``: ``raysl pretrain`` with the demo's recipe (``pipelines/configs/demo.yaml``) on all
  the images, evaluation and monitors off. The recipe's cosine schedule needs its length up front,
  so its length is planned from a pilot run of the same command (its fixed cost and its rate)
  to fill the budget; the wall clock it then takes is measured.
* ``lightly``: lightly 1.6's SimCLR example with its documented defaults (``SimCLRTransform``'s
  defaults at the image size, a ``SimCLRProjectionHead(d, d, 128)``, ``NTXentLoss()`` at
  temperature 0.5, SGD at lr 0.06 with no schedule, batch 256), around the same encoder and on
  the same threads, trained until it has used the wall clock raysl took (its constant learning
  rate needs no length up front). Its normalisation is left to the encoder, which normalises.

One evaluation then scores both encoders, the same encoder at its random initialisation and raw
pixels with raysl's protocols: weighted kNN (k=200, T=0.1) with the whole training split as the
bank and the whole test split as queries, and the linear probe. Results: a Markdown table on
stdout, everything in ``--json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from extraction_speed import cpu_model  # benchmarks/ is on the path of its scripts
from throughput import TwoViews, fashion_mnist, loader
from torch import Tensor, nn

from raysl import config as C
from raysl.methods.base import build_method

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "pipelines/configs/demo.yaml"
RESULT_MARK = "ACCURACY_RESULT "  # the line the lightly process prints its result on
LIGHTLY_BATCH, LIGHTLY_LR = 256, 0.06  # lightly's SimCLR example
METRICS = ("knn_top1", "linear_top1")


def recipe(args: argparse.Namespace, epochs: int, images: int) -> list[str]:
    """``--set`` overrides of the demo recipe for a training-only run on ``images`` images."""
    return [f"data.source.path={args.data}", f"data.source.limit={images}",
            f"train.epochs={epochs}", "eval.enabled=false", "eval.monitor_every=0",
            "tracking.register=false"]


def encoder_config(args: argparse.Namespace) -> C.Config:
    """The demo recipe's config: the encoder both sides train."""
    return C.load(RECIPE, recipe(args, 1, args.images))


# ---------------------------------------------------------------- raysl


def run_raysl(args: argparse.Namespace, epochs: int, images: int, out: Path) -> dict[str, Any]:
    """``raysl pretrain`` as a user runs it; wall clock, rate and checkpoint of the run."""
    result = timed_pretrain(RECIPE, recipe(args, epochs, images), out,
                            f"sqlite:///{out}/mlflow.db", "accuracy", args.timeout)
    return {**result, "epochs": epochs}


def timed_pretrain(config: Path, settings: list[str], out: Path, store: str, experiment: str,
                   timeout: float) -> dict[str, Any]:
    """``raysl pretrain --config config --set ...`` in ``out``, logging to ``experiment``.

    Returns its wall clock (launch to exit), the images it trained on, its rate and
    first-step time (from its MLflow run: the newest of ``experiment``, as a store may hold
    earlier ones) and its last checkpoint.
    """
    import mlflow

    out.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).parent / "raysl"), "pretrain", "--config", str(config)]
    for setting in (*settings, f"tracking.tracking_uri={store}",
                    f"tracking.experiment={experiment}", f"train.storage_path={out}/runs"):
        command += ["--set", setting]
    log = out / "pretrain.log"
    launched = time.time()
    with open(log, "w") as sink:
        done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, cwd=out,
                              check=False, timeout=timeout)
    wall = time.time() - launched
    text = log.read_text()
    if done.returncode:
        sys.stderr.write(text[-4000:])
        raise RuntimeError(f"raysl pretrain exited with {done.returncode}; log: {log}")
    found = re.search(r"^checkpoint\s+(\S+)", text, re.MULTILINE)
    steps = re.search(r"(\d+) epoch\(s\) x (\d+) step\(s\) of (\d+) images", text)
    if found is None or steps is None:
        raise RuntimeError(f"no checkpoint or training line in {log}")
    client = mlflow.MlflowClient(store)
    found_experiment = client.get_experiment_by_name(experiment)
    if found_experiment is None:
        raise RuntimeError(f"raysl pretrain logged no MLflow experiment {experiment!r} in {store}")
    experiment_id = found_experiment.experiment_id
    (run,) = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"],
                                max_results=1)
    metrics = run.data.metrics
    seen = math.prod(int(n) for n in steps.groups())  # whole batches: drop_last
    return {"wall_s": wall, "images_seen": seen,
            "images_per_s": metrics["train/images_per_s"],
            "first_step_s": metrics["time/first_step_s"], "checkpoint": found.group(1)}


def plan(budget_s: float, pilot: dict[str, Any], images: int) -> tuple[int, int]:
    """(epochs, images per epoch) of a raysl run that fills ``budget_s``, by the pilot's figures.

    The pilot's fixed cost is its wall clock less its training time (start-up and shutdown); its
    rate is its last epoch's. The run takes the fewest epochs that fill what is left, each of a
    seeded subset of the images when whole epochs would not fit (the recipe's schedule counts
    epochs); at least one epoch of all the images.
    """
    rate = pilot["images_per_s"]
    fixed = pilot["wall_s"] - pilot["images_seen"] / rate
    total = (budget_s - fixed) * rate
    if total <= images:
        return 1, images
    epochs = math.ceil(total / images)
    return epochs, min(images, math.floor(total / epochs))


# ---------------------------------------------------------------- lightly


def train_lightly(args: argparse.Namespace, launched: float, budget_s: float,
                  out: Path) -> dict[str, Any]:
    """The lightly side: its SimCLR example around our encoder, ``budget_s`` from launch.

    Saves the encoder's state dict to ``out``; returns what it trained.
    """
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms.simclr_transform import SimCLRTransform

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg = encoder_config(args)
    encoder = build_method(cfg).encoder  # the same network, freshly initialised
    features = encoder.num_features
    model = nn.Sequential(encoder, SimCLRProjectionHead(features, features, 128))
    # PIL images in, tensors out (its pipeline ends in ToTensor); typed for either
    transform = cast(Callable[[Any], list[Tensor]],
                     SimCLRTransform(input_size=cfg.data.image_size, normalize=None))
    settings = argparse.Namespace(batch=LIGHTLY_BATCH, loader_workers=args.loader_workers)
    data = loader(TwoViews(fashion_mnist(args.data, Path(args.cache), args.images), transform),
                  settings)
    criterion = NTXentLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=LIGHTLY_LR)
    if len(data) == 0:
        raise ValueError(f"--images {args.images}: fewer than one batch of {LIGHTLY_BATCH}")
    deadline = launched + budget_s - args.save_margin
    steps, loss = 0, torch.tensor(0.0)
    while steps == 0 or time.time() < deadline:  # at least one step
        for x0, x1 in data:
            loss = criterion(model(x0), model(x1))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            steps += 1
            if time.time() >= deadline:
                break
    torch.save(encoder.state_dict(), out)
    return {"steps": steps, "images_seen": steps * LIGHTLY_BATCH, "final_loss": float(loss)}


def run_lightly(args: argparse.Namespace, budget_s: float, out: Path) -> dict[str, Any]:
    """:func:`train_lightly` in a fresh Python process; its wall clock measured from launch."""
    launched = time.time()
    command = [sys.executable, __file__, "--one-lightly", str(out), "--launched", repr(launched),
               "--budgets", str(budget_s / 60), *_shared_flags(args)]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=budget_s + args.timeout)
    wall = time.time() - launched
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return {"wall_s": wall, "encoder": str(out), **json.loads(line[len(RESULT_MARK):])}
    sys.stderr.write(done.stdout[-2000:] + done.stderr[-4000:])
    raise RuntimeError(f"the lightly side exited with {done.returncode} and no result")


def _shared_flags(args: argparse.Namespace) -> list[str]:
    return ["--data", args.data, "--images", str(args.images), "--threads", str(args.threads),
            "--loader-workers", str(args.loader_workers), "--cache", args.cache,
            "--save-margin", str(args.save_margin)]


# ---------------------------------------------------------------- evaluation


def evaluate(args: argparse.Namespace, raysl_checkpoint: str, lightly_encoder: str
             ) -> dict[str, dict[str, float]]:
    """Scores by model and metric for raysl, lightly, random init and raw pixels, one pass."""
    from raysl.cluster.connect import connect
    from raysl.eval.data import load_eval_data
    from raysl.eval.suite import evaluate_encoders, with_baseline
    from raysl.evaluate import evaluation_config
    from raysl.serving.models import load_model

    loaded = load_model(raysl_checkpoint, "")
    cfg = evaluation_config(loaded.config, args.data, "knn,linear", [
        f"eval.bank.limit={args.eval_limit}", f"eval.query.limit={args.eval_limit}",
        "eval.knn_k=200", "eval.knn_temperature=0.1", "eval.baselines=true",
        "eval.plots=false"])
    lightly = build_method(cfg).encoder
    lightly.load_state_dict(torch.load(lightly_encoder, weights_only=True))
    connect()
    encoders = {**with_baseline(cfg, loaded.encoder), "lightly": lightly}
    torch.set_num_threads(os.cpu_count() or 1)
    report = evaluate_encoders(encoders, load_eval_data(cfg), cfg.eval, cfg.data.image_size,
                               cfg.train.seed, log=lambda line: print(line, file=sys.stderr))
    return {"raysl" if model == "trained" else model: scores
            for model, scores in report.results.items()}


# ---------------------------------------------------------------- the driver


def compare(args: argparse.Namespace, budget_min: float, pilot: dict[str, Any], work: Path
            ) -> dict[str, Any]:
    """One budget: raysl (planned epochs), then lightly for raysl's wall clock, then scores."""
    budget_s = 60 * budget_min
    epochs, images = plan(budget_s, pilot, args.images)
    note(f"{budget_min:g} min: raysl, {epochs} epoch(s) of {images} images")
    raysl = run_raysl(args, epochs, images, work / f"raysl-{budget_min:g}")
    note(f"{budget_min:g} min: raysl took {raysl['wall_s']:.0f}s; lightly for as long")
    lightly = run_lightly(args, raysl["wall_s"], work / f"lightly-{budget_min:g}.pt")
    note(f"{budget_min:g} min: lightly took {lightly['wall_s']:.0f}s, "
         f"{lightly['images_seen']} images; evaluating")
    scores = evaluate(args, raysl["checkpoint"], lightly["encoder"])
    return {"budget_min": budget_min, "raysl": raysl, "lightly": lightly, "scores": scores}


def note(line: str) -> None:
    """A progress line (stderr: stdout is the table)."""
    print(f"[bench] {line}", file=sys.stderr, flush=True)


def table(results: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per side and budget, then raysl's lead over lightly."""
    head = ("| budget | side | wall clock | images seen | kNN top-1 | linear top-1 |\n"
            "|---:|---|---:|---:|---:|---:|")
    rows = [head]
    for r in results:
        s = r["scores"]
        for side in ("raysl", "lightly", "random_init", "raw_pixels"):
            trained = r.get(side, {})
            wall = f"{trained['wall_s'] / 60:.1f} min" if trained else "-"
            seen = f"{trained['images_seen']:,}" if trained else "-"
            cells = " | ".join(f"{100 * s[side][m]:.2f}%" if m in s.get(side, {}) else "-"
                               for m in METRICS)
            rows.append(f"| {r['budget_min']:g} min | {side} | {wall} | {seen} | {cells} |")
    for r in results:
        s = r["scores"]
        lead = " | ".join(f"{100 * (s['raysl'][m] - s['lightly'][m]):+.2f} points"
                          for m in METRICS)
        rows.append(f"| {r['budget_min']:g} min | raysl - lightly | | | {lead} |")
    return "\n".join(rows)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--one-lightly``: this process trains the lightly side)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", nargs="+", type=float, default=[10.0],
                   help="wall-clock minutes per side, from launch to exit")
    p.add_argument("--images", type=int, default=60000, help="unlabeled training images")
    p.add_argument("--pilot-images", type=int, default=6144,
                   help="images of raysl's two-epoch pilot run (plans its epochs)")
    p.add_argument("--eval-limit", type=int, default=0,
                   help="bank and query images scored (0 = the whole splits)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads of the lightly process")
    p.add_argument("--loader-workers", type=int, default=os.cpu_count() or 1,
                   help="DataLoader processes of the lightly side")
    p.add_argument("--save-margin", type=float, default=2.0,
                   help="seconds before its deadline the lightly side stops to save")
    p.add_argument("--data", default=C.FASHION_MNIST_DIR)
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "raysl-bench-fmnist"))
    p.add_argument("--work", default="", help="where runs go (default: a temporary directory)")
    p.add_argument("--json", default="benchmarks/accuracy.json")
    p.add_argument("--timeout", type=float, default=1800, help="seconds beyond each budget")
    p.add_argument("--one-lightly", default="", help=argparse.SUPPRESS)
    p.add_argument("--launched", type=float, default=0.0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Every budget in turn; print and save the results."""
    args = parse(argv)
    if args.one_lightly:
        result = train_lightly(args, args.launched, 60 * args.budgets[0], Path(args.one_lightly))
        print(RESULT_MARK + json.dumps(result), flush=True)
        return 0
    if importlib.util.find_spec("lightly") is None:
        print("benchmarks/accuracy.py needs lightly: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="raysl-accuracy-") as tmp:
        work = Path(args.work or tmp)
        note(f"pilot: raysl, 2 epochs of {args.pilot_images} images")
        pilot = run_raysl(args, 2, args.pilot_images, work / "pilot")
        note(f"pilot: {pilot['wall_s']:.0f}s, first step at {pilot['first_step_s']:.0f}s, "
             f"{pilot['images_per_s']:.0f} img/s")
        results = [compare(args, budget, pilot, work) for budget in args.budgets]
    Path(args.json).write_text(json.dumps(
        {"args": vars(args), "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"),
         "pilot": pilot, "results": results}, indent=2))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
