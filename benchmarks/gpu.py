"""The throughput table on one GPU: ResNet-18, ResNet-50 and ViT-S/16 at 224 px.

    .venv/bin/python benchmarks/gpu.py           # one GPU, 16 CPUs for data: under 8 minutes
    .venv/bin/python benchmarks/gpu.py --smoke   # the same plumbing on a CPU at 32 px

``benchmarks/throughput.py`` per model, on a folder of colour JPEGs (256 px, drawn once into
``--folder``) so that every side decodes, crops to 224 px and augments as on real photos:
raysl (1 GPU train worker, Ray Data on the other CPUs), a plain PyTorch loop with a
``DataLoader`` of ``--loader-workers`` processes and pinned memory, and the compute-only
ceiling; lightly too when installed. All sides use AMP (bf16 where the GPU has it) and
channels-last for the ResNets, as raysl's ``train.precision=auto`` and
``train.channels_last=auto`` do. Output: per model, the table of ``throughput.py`` (images/s,
command to first step, raysl/plain and raysl/ceiling) and ``--json-dir/gpu_<model>.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput

MODELS = ("resnet18", "resnet50", "vit_small")


def write_folder(path: Path, n: int, size: int = 256, seed: int = 0) -> Path:
    """``n`` colour JPEGs of drawn shapes in class sub-folders (kept if already there)."""
    from raysl.data.generated import colour_shapes

    if path.is_dir() and sum(1 for _ in path.rglob("*.jpg")) == n:
        return path
    images, labels = colour_shapes(n, size, seed)  # (N, size, size, 3) uint8, (N,)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = path / f"class_{int(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(image)).save(folder / f"{i:06d}.jpg", quality=90)
    return path


def main(argv: list[str] | None = None) -> int:
    """Every model through throughput.py, one after the other."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--smoke", action="store_true",
                   help="CPU-sized: 32 px, 64 images, batch 16, one epoch of each side")
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--folder", default="/tmp/raysl-bench-jpeg")
    p.add_argument("--json-dir", default="benchmarks")
    p.add_argument("--loader-workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    size, images, batch, epochs = ((32, 64, 16, "2") if args.smoke
                                   else (224, args.images, args.batch, "2"))
    folder = write_folder(Path(args.folder + ("-smoke" if args.smoke else "")), images,
                          size=40 if args.smoke else 256)
    sides = ["raysl", "plain", "ceiling"]
    if importlib.util.find_spec("lightly") is not None:
        sides.insert(1, "lightly")
    started = time.perf_counter()
    for model in args.models:
        print(f"\n## {model} at {size} px\n", flush=True)
        throughput.main([
            "--methods", "simclr", "--sides", *sides, "--workers", "1", "--rounds", "1",
            "--model", model, "--image-size", str(size), "--folder", str(folder),
            "--images", str(images), "--batch", str(batch), "--epochs", epochs,
            "--loader-workers", str(args.loader_workers),
            "--json", str(Path(args.json_dir) / f"gpu_{model}.json")])
    print(f"\n[bench] {len(args.models)} model(s) in {(time.perf_counter() - started) / 60:.1f} "
          "min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
