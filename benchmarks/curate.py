"""``raysl curate`` against ``raysl embed`` alone: images per second on the same folder of files.

A folder of PNG files (Fashion-MNIST's training images, or generated shapes without the
package) with planted duplicates (``--copies``: exact copies, and as many near copies with
one pixel changed) is embedded by the same encoder (the demo's ResNet, width 16, small stem,
gray 32 px, random weights: throughput does not depend on them) on a local Ray of ``--cpus``
CPUs, the two sides taking turns in one invocation (embed, curate, embed, curate, ...):

- embed: :func:`raysl.serving.embed.embed`, what ``raysl embed`` runs, to parquet.
- curate: :func:`raysl.curate.command.curate`, what ``raysl curate`` runs (its embedding, with
  pixel digests, then deduplication, hierarchical k-means, balanced sampling, the report),
  drawing half of the images (``--near`` 0.99999: with random weights half of all pairs of
  Fashion-MNIST images are above 0.98, and 0.99999 removes the planted copies and no others).

The first round of each side is a warm-up and is not counted. Reported: images/s per side
(median of the timed rounds), the ratio curate / embed, and where curate spent its time.

    .venv/bin/python benchmarks/curate.py                        # 20k files, ~10 min
    .venv/bin/python benchmarks/curate.py --images 4000 --rounds 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch
from PIL import Image

from raysl import config as C
from raysl.checkpoint import save_checkpoint
from raysl.cluster.connect import quiet_driver_logs
from raysl.config import FASHION_MNIST_DIR, SourceConfig
from raysl.curate.command import CurateSettings, curate
from raysl.data import generated
from raysl.data.readers.idx import parse_idx
from raysl.nn.backbones import build_encoder
from raysl.serving.embed import embed
from raysl.serving.models import load_model

SIZE = 32


def pool_images(n: int) -> tuple[np.ndarray, str]:
    """(n, 28, 28) uint8 Fashion-MNIST training images, or generated shapes."""
    path = Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz"
    if path.exists():
        return parse_idx(path.read_bytes(), path.name)[:n], "Fashion-MNIST"
    x, _ = generated.shapes(n, size=28, seed=0)
    return x[..., 0] if x.ndim == 4 else x, "generated shapes"


def write_pool(root: Path, images: np.ndarray, copies: int) -> int:
    """The images as PNG files, plus ``copies`` exact and ``copies`` near copies; returns count."""
    root.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(root / f"{i:06d}.png")
    rng = np.random.default_rng(0)
    for k, i in enumerate(rng.choice(len(images), 2 * copies, replace=False)):
        image = images[i].copy()
        if k >= copies:
            image[0, 0] ^= 1  # near: one pixel changed
        Image.fromarray(image).save(root / f"dup{k:06d}.png")
    return len(images) + 2 * copies


def write_encoder(root: Path) -> str:
    """A checkpoint of the demo's encoder (random weights) that ``load_model`` reads."""
    cfg = C.load(None, ["data.source.format=generated", f"data.image_size={SIZE}",
                        "data.channels=1", "model.width=16", "model.small_stem=true"])
    torch.manual_seed(0)
    encoder = build_encoder(cfg.model, 1, SIZE).eval()
    save_checkpoint(root, encoder, encoder, torch.optim.SGD(encoder.parameters(), lr=0.1),
                    {"epoch": 0, "step": 1, "config": cfg.to_dict()})
    return str(root)


def main() -> None:
    """Parse the arguments, run the rounds, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--copies", type=int, default=1000, help="exact copies, and as many near")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per side (+1 warm-up)")
    p.add_argument("--near", type=float, default=0.99999, help="curate's --near: random "
                   "weights put half of all pairs above 0.98; at 0.99999 only the planted copies "
                   "are removed")
    p.add_argument("--out", default="benchmarks/curate.json")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="raysl-curate-bench-"))
    images, source_name = pool_images(args.images)
    files = write_pool(work / "pool", images, args.copies)
    model = load_model(write_encoder(work / "encoder"), "")
    source = SourceConfig(path=str(work / "pool"))
    settings = CurateSettings(target=files // 2, near=args.near)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    quiet_driver_logs()
    ray.data.DataContext.get_current().enable_progress_bars = False

    def embed_side() -> dict[str, float]:
        embed(model, source, str(work / "emb"), log=lambda _: None, overwrite=True)
        return {}

    def curate_side() -> dict[str, float]:
        result = curate(model, source, str(work / "curated"), settings, overwrite=True,
                        log=lambda _: None)
        return result.report.seconds

    timings: dict[str, list[float]] = {"embed": [], "curate": []}
    stages: list[dict[str, float]] = []
    for r in range(args.rounds + 1):
        for name, run in (("embed", embed_side), ("curate", curate_side)):
            t0 = time.perf_counter()
            detail = run()
            seconds = time.perf_counter() - t0
            if r:
                timings[name].append(seconds)
                if detail:
                    stages.append(detail)
            print(f"round {r}{' (warm-up)' if not r else ''}  {name:<7} "
                  f"{files / seconds:8.0f} img/s  {detail or ''}", flush=True)
    rate = {k: files / statistics.median(v) for k, v in timings.items()}
    print(f"\n{files} PNG files ({args.images} {source_name} + {args.copies} exact + "
          f"{args.copies} near copies), {args.cpus} CPUs, curate draws {settings.target}")
    for name, value in rate.items():
        print(f"{name:<8}{value:>10.0f} img/s")
    print(f"curate / embed = {rate['curate'] / rate['embed']:.2f}")
    Path(args.out).write_text(json.dumps(
        {"files": files, "source": source_name, "copies": args.copies, "cpus": args.cpus,
         "target": settings.target, "near": args.near, "seconds": timings, "img_per_s": rate,
         "curate_stages_s": stages, "date": time.strftime("%Y-%m-%d")}, indent=2))


if __name__ == "__main__":
    main()
