"""Feature extraction: raysl's Ray Data path against a plain ``torch.no_grad()`` loop.

Both sides embed the same uint8 images with the same frozen encoder (the demo's ResNet-18, width
16, small stem, 28 px) at the same batch size, on the same machine, in one invocation, taking
turns (plain, raysl, plain, raysl, ...):

- plain: one process, ``torch.set_num_threads(--cpus)``, ``raysl.eval.features.encoder_features``
  over the in-memory array (resize, forward, collect).
- raysl: ``raysl.eval.extract.dataset_features`` on a local Ray with ``num_cpus=--cpus`` over the
  same images already in the object store (as the evaluation suite finds them), then the
  features gathered to the driver in row order (``gather``), as the queries are.

The first round of each side is a warm-up (imports, worker processes, the encoder's first build)
and is not counted. Reported: images/s per side (median of the timed rounds) and the ratio
raysl / plain; the goal is >= 0.8.

    .venv/bin/python benchmarks/extraction_speed.py                 # 70k Fashion-MNIST, ~5 min
    .venv/bin/python benchmarks/extraction_speed.py --images 8000 --rounds 2   # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import ray
import torch

from raysl.cluster.connect import quiet_driver_logs
from raysl.config import FASHION_MNIST_DIR, ModelConfig
from raysl.data import generated
from raysl.data.readers.idx import parse_idx
from raysl.data.source import arrays_to_dataset, to_channels
from raysl.eval.extract import dataset_features, gather
from raysl.eval.features import encoder_features
from raysl.nn.backbones import build_encoder


def images(n: int) -> tuple[np.ndarray, str]:
    """(n, 32, 32, 1) uint8: Fashion-MNIST train + test (decoded at 32 px as the demo) or shapes."""
    folder = Path(FASHION_MNIST_DIR)
    if (folder / "train-images-idx3-ubyte.gz").exists():
        parts = [parse_idx((folder / f).read_bytes(), f) for f in
                 ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")]
        x = np.concatenate(parts)[:n]
        padded = np.pad(x, ((0, 0), (2, 2), (2, 2)))  # 28 -> 32, the demo's decode size
        return to_channels(padded, 1), "Fashion-MNIST"
    x, _ = generated.shapes(n, size=32, seed=0)
    return to_channels(x, 1), "generated shapes"


def cpu_model() -> str:
    """The CPU's model name (Linux), for the record."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    """Parse the arguments, run the rounds, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=70_000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per side (+1 warm-up)")
    p.add_argument("--out", default="benchmarks/extraction_speed.json")
    args = p.parse_args()

    x, source = images(args.images)
    torch.manual_seed(0)
    encoder = build_encoder(ModelConfig(width=16, small_stem=True), 1, 28).eval()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    quiet_driver_logs()
    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = arrays_to_dataset(x, None, with_index=True).materialize()

    def plain() -> torch.Tensor:
        torch.set_num_threads(args.cpus)
        return encoder_features(encoder, x, 28, args.batch_size)

    def raysl_side() -> torch.Tensor:
        return gather(dataset_features(encoder, dataset, 28, args.batch_size))[0]

    timings: dict[str, list[float]] = {"plain": [], "raysl": []}
    reference = None
    for r in range(args.rounds + 1):
        for name, run in (("plain", plain), ("raysl", raysl_side)):
            t0 = time.perf_counter()
            features = run()
            seconds = time.perf_counter() - t0
            if reference is None:
                reference = features
            else:  # the same features, in the same order, whichever side made them
                torch.testing.assert_close(features, reference, rtol=1e-4, atol=1e-4)
            if r:
                timings[name].append(seconds)
            print(f"round {r}{' (warm-up)' if not r else ''}  {name:<6} "
                  f"{len(x) / seconds:8.0f} img/s", flush=True)
    rate = {k: len(x) / statistics.median(v) for k, v in timings.items()}
    ratio = rate["raysl"] / rate["plain"]
    print(f"\n{len(x)} {source} images at 28 px, batch {args.batch_size}, {args.cpus} CPUs "
          f"({cpu_model()})")
    print(f"{'side':<8}{'img/s':>10}")
    for name, value in rate.items():
        print(f"{name:<8}{value:>10.0f}")
    print(f"raysl / plain = {ratio:.2f}  (goal >= 0.8)")
    Path(args.out).write_text(json.dumps(
        {"images": len(x), "source": source, "cpus": args.cpus, "cpu": cpu_model(),
         "batch_size": args.batch_size, "seconds": timings, "img_per_s": rate,
         "ratio": ratio, "date": time.strftime("%Y-%m-%d")}, indent=2))


if __name__ == "__main__":
    main()
