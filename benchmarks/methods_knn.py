"""Short real runs of every method on Fashion-MNIST: kNN of trained vs random-init encoders.

Trained and random-init encoders are compared side by side on the same split and machine.

    .venv/bin/python benchmarks/methods_knn.py                 # all methods, ~65 min on 2 CPUs
    .venv/bin/python benchmarks/methods_knn.py --methods byol dino --epochs 5
    .venv/bin/python benchmarks/methods_knn.py --methods swav --set method.epsilon=0.03

Each method runs its shipped recipe ``pipelines/configs/<method>_fmnist.yaml`` (colorization,
which needs colour: ``colorization_shapes.yaml``) through the same code path as
``raysl pretrain`` (Ray Data views, Ray Train workers, MLflow), shrunk to a budget
that fits a CPU: a width-16 ResNet-18, ``--images`` training images, ``--epochs`` epochs, batch
``--batch``. The numbers say "this method learns features here", not what it reaches when trained
for hundreds of epochs. Results go to stdout as a Markdown table and to ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from raysl import config as C
from raysl.catalog import names
from raysl.eval.suite import RANDOM_INIT, TRAINED
from raysl.pretrain import pretrain

CONFIGS = Path(__file__).resolve().parent.parent / "pipelines" / "configs"


def budget_overrides(args: argparse.Namespace, method: str) -> list[str]:
    """The shared small budget on top of each method's recipe."""
    return [
        f"data.source.limit={args.images}", f"data.batch_size_global={args.batch}",
        f"model.width={args.width}", f"train.epochs={args.epochs}", "train.num_workers=2",
        "optim.warmup_epochs=0.5", f"eval.bank.limit={args.bank}",
        f"eval.query.limit={args.queries}", "eval.knn_k=20", "eval.protocols=knn",
        "tracking.experiment=benchmarks-methods", "tracking.register=false",
        f"train.run_name=bench-{method.replace('_', '-')}-{time.strftime('%Y%m%d-%H%M%S')}",
    ]


def scaled_method_epochs(recipe: C.Config, epochs: int) -> list[str]:
    """The method's own epoch-counted knobs, kept at the same fraction of training.

    A recipe that freezes SwAV's prototypes or DINO's last layer for 1 of its 200 epochs would
    otherwise freeze them for half of a 2-epoch budget.
    """
    scale = epochs / recipe.train.epochs
    return [f"method.{f.name}={getattr(recipe.method, f.name) * scale:g}"
            for f in dataclasses.fields(recipe.method)
            if f.name.endswith(("_epochs", "_epoch")) and getattr(recipe.method, f.name)]


def recipe_of(method: str) -> Path:
    """``<method>_fmnist.yaml``, or the method's one other recipe (colorization needs colour)."""
    fmnist = CONFIGS / f"{method}_fmnist.yaml"
    if fmnist.exists():
        return fmnist
    (recipe,) = sorted(CONFIGS.glob(f"{method}_*.yaml"))
    return recipe


def run(method: str, args: argparse.Namespace) -> dict[str, float | str]:
    """One shrunk run of ``method``; its kNN results and throughput."""
    recipe = recipe_of(method)
    scaled = scaled_method_epochs(C.load(recipe), args.epochs)
    print(f"[bench] {method}: {' '.join(scaled) or 'no epoch-counted method knobs'}",
          file=sys.stderr)
    cfg = C.load(recipe, budget_overrides(args, method) + scaled + args.set)
    t0 = time.perf_counter()
    result = pretrain(cfg, log=lambda line: print(line, file=sys.stderr))
    return {"method": method, "trained": result.knn[TRAINED],
            "random_init": result.knn[RANDOM_INIT], "final_loss": result.final_loss,
            "images_per_s": result.images_per_s, "minutes": (time.perf_counter() - t0) / 60,
            "run": result.run_name}


def table(rows: list[dict[str, float | str]]) -> str:
    """Markdown table of the results."""
    lines = ["| method | kNN top-1 trained | random init | gain | train img/s | minutes |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        t, b = float(r["trained"]), float(r["random_init"])
        lines.append(f"| {r['method']} | {100 * t:.2f}% | {100 * b:.2f}% | "
                     f"{100 * (t - b):+.2f} | {float(r['images_per_s']):.0f} | "
                     f"{float(r['minutes']):.1f} |")
    return "\n".join(lines)


def main() -> int:
    """Run the methods one after the other in one Ray session; print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=names("method"))
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--bank", type=int, default=10000)
    p.add_argument("--queries", type=int, default=5000)
    p.add_argument("--json", default="benchmarks/methods_knn.json")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides on top of every recipe, e.g. optim.lars_eta=0.02")
    args = p.parse_args()
    rows = []
    for method in args.methods:
        rows.append(run(method, args))
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr)
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": rows}, indent=2))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
