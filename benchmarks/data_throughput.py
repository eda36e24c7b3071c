"""Two-view SimCLR augmentation throughput: the raysl pipeline vs a torchvision DataLoader.

Both sides run side by side in one invocation, on the same in-memory uint8 images, with the same
augmentation and the same number of CPU worker processes; the ratio raysl / torchvision is printed.

    .venv/bin/python benchmarks/data_throughput.py             # 32 and 224 px, ~3.5 min, 2 CPUs
    .venv/bin/python benchmarks/data_throughput.py --sizes 224 --images 2048 --epochs 3

Augmentation (SimCLR, appendix A of arXiv:2002.05709; raysl's ``simclr`` preset): RandomResizedCrop
to the input side with scale (0.08, 1), horizontal flip 0.5, ColorJitter(0.8, 0.8, 0.8, 0.2) with
p 0.8, grayscale 0.2, Gaussian blur with p 0.5, a kernel of 10% of the side and sigma in (0.1, 2);
two views per image, uint8 (B, C, S, S) out.

- torchvision: a map-style ``Dataset`` applying ``transforms.v2`` to each image twice (the usual
  way), ``DataLoader(num_workers=--workers, persistent_workers=True)``, default collate.
- raysl: ``raysl.data.pipeline.view_stream`` over the same arrays (up to ``--workers``
  augmentation tasks of 1 CPU each on a local Ray started with ``num_cpus=--workers``), consumed
  with ``iter_torch_batches`` on the driver, as a train worker consumes it.

Each side runs passes over all ``--images`` images (long) and over the first quarter of them
(short). Its first pass is a warm-up (worker start, imports) and is not counted; then
``--epochs`` rounds of timed passes alternate between the two sides. Reported per side:

- img/s per pass: source images (2 views each) per second of a long pass, from asking for the
  iterator to the last batch. raysl's start counts (scheduling the first tasks; Ray's worker
  processes persist, as the DataLoader's).
- steady img/s and start per pass: a pass of N images takes ``start + N / steady``, fitted
  through the long and the short pass. From them: the epoch size from which raysl's passes are
  ``--goal`` times faster than the DataLoader's. Approximate: a two-point fit.

Also measured: each side's transform alone in one process with 1 thread (no DataLoader, no Ray).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from torch.utils.data import DataLoader, Dataset, Sampler

from raysl.config import VIEW_PRESETS, DataConfig

SIDES = ("torchvision", "raysl")


def smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` RGB images (N, size, size, 3) uint8: bicubic-upsampled noise plus fine grain.

    Smooth regions and edges, like photos rather than white noise. Content matters: raysl's
    HSV hue rotation takes about twice as long on white noise as on these images.
    """
    g = torch.Generator().manual_seed(seed)
    out = np.empty((n, size, size, 3), np.uint8)
    for start in range(0, n, 256):
        b = min(256, n - start)
        coarse = torch.rand(b, 3, max(2, size // 8), max(2, size // 8), generator=g)
        x = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        x = x + 0.05 * torch.randn(b, 3, size, size, generator=g)
        out[start:start + b] = (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return out


def blur_kernel(size: int) -> int:
    """Odd Gaussian kernel covering 10% of the side, as ``raysl.data.augment.gaussian_blur``."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def torchvision_view(size: int) -> T.Compose:
    """One SimCLR view with torchvision v2, the parameters of raysl's ``simclr`` preset."""
    v = VIEW_PRESETS["simclr"]
    return T.Compose([
        T.RandomResizedCrop(size, scale=v.crop_scale, ratio=v.crop_ratio, antialias=True),
        T.RandomHorizontalFlip(v.hflip_p),
        T.RandomApply([T.ColorJitter(v.brightness, v.contrast, v.saturation, v.hue)],
                      p=v.jitter_p),
        T.RandomGrayscale(v.grayscale_p),
        # SimCLR blurs both views with p 0.5 (v.blur_p is per view; the preset has 0.5 twice).
        T.RandomApply([T.GaussianBlur(blur_kernel(size), v.blur_sigma)], p=v.blur_p[0]),
    ])


class TwoViewDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Map-style dataset: image i -> two independently augmented uint8 (C, S, S) views."""

    def __init__(self, images: np.ndarray, size: int) -> None:
        self.images = images  # (N, H, W, C) uint8
        self.to_image = T.ToImage()
        self.view = torchvision_view(size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.to_image(self.images[i])  # (C, H, W) uint8
        return self.view(x), self.view(x)


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # DataLoader workers already do this; explicit, as raysl's tasks


def data_config(size: int, augment_batch_size: int) -> DataConfig:
    """The data settings of the raysl side: SimCLR preset, 1 CPU per augmentation task."""
    return DataConfig(image_size=size, views=VIEW_PRESETS["simclr"],
                      augment_batch_size=augment_batch_size, augment_cpus=1.0)


class FirstImages(Sampler[int]):
    """Random order over the first ``n`` indices; ``n`` may change between epochs.

    Lets one DataLoader (one set of persistent workers) run both the long and the short pass.
    """

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n).tolist())


class Sides:
    """Both pipelines over one image array; each call to :meth:`batches` is one pass."""

    def __init__(self, images: np.ndarray, block_rows: int, args: argparse.Namespace) -> None:
        import ray.data

        from raysl.data.pipeline import view_stream
        from raysl.data.source import ImageSource, arrays_to_dataset

        size = images.shape[1]
        self.sampler = FirstImages(len(images))
        self.loader = DataLoader(
            TwoViewDataset(images, size), batch_size=args.batch_size, sampler=self.sampler,
            num_workers=args.workers, persistent_workers=True, worker_init_fn=_one_thread,
            # The driver also runs Ray; forking a process that holds Ray's threads is unsafe.
            multiprocessing_context="forkserver")
        cfg = data_config(size, args.augment_batch_size)
        self.streams: dict[int, ray.data.Dataset] = {}
        for n in (len(images), len(images) // 4):
            ds = arrays_to_dataset(images[:n], None, rows_per_block=block_rows)
            source = ImageSource(ds, n, [], f"{n} smooth-noise images")
            self.streams[n] = view_stream(source, cfg, max_tasks=args.workers)
        self.batch_size = args.batch_size

    def batches(self, side: str, n: int) -> Iterator[list[torch.Tensor]]:
        """One pass over the first ``n`` images: the two (B, C, S, S) uint8 view batches."""
        if side == "torchvision":
            self.sampler.n = n
            for v1, v2 in self.loader:
                yield [v1, v2]
        else:
            for b in self.streams[n].iter_torch_batches(batch_size=self.batch_size,
                                                        prefetch_batches=2):
                yield [b["view0"], b["view1"]]


def timed_pass(batches: Iterable[list[torch.Tensor]]) -> dict[str, float]:
    """One pass: images, seconds, the wait for the first batch and the consumer's CPU time.

    The consumer is this process: the DataLoader's main process, or Ray's driver (which also
    runs Ray Data's scheduling thread and turns blocks into tensors).
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    first, n = float("nan"), 0
    for views in batches:
        if not n:
            first = time.perf_counter() - t0
        assert views[0].dtype == torch.uint8 and views[0].shape == views[1].shape
        n += len(views[0])
    return {"images": n, "seconds": time.perf_counter() - t0, "first_s": first,
            "consumer_cpu_s": time.process_time() - cpu0}


def single_process(images: np.ndarray, side: str, augment_batch_size: int,
                   seed: int) -> dict[str, float]:
    """One side's transform alone in this process with 1 thread (no workers, no Ray)."""
    from raysl.data.views import MultiViewTransform

    size = images.shape[1]
    fn: Callable[[np.ndarray], object]
    if side == "torchvision":
        view, to_image = torchvision_view(size), T.ToImage()
        fn = lambda chunk: [(view(x), view(x)) for x in map(to_image, chunk)]  # noqa: E731
    else:
        transform = MultiViewTransform(data_config(size, augment_batch_size), seed=seed)
        fn = lambda chunk: transform({"image": chunk})  # noqa: E731
    chunks = [images[i:i + augment_batch_size] for i in range(0, len(images), augment_batch_size)]
    fn(chunks[0])  # warm-up
    t0 = time.perf_counter()
    for chunk in chunks:
        fn(chunk)
    return {"images": len(images), "seconds": time.perf_counter() - t0}


def summarize(long: list[dict[str, float]], short: list[dict[str, float]]) -> dict[str, float]:
    """One side's throughput from its timed passes over the long and the short image set.

    A pass of N images takes ``start_s + N / rate``: fitted through the mean long and short
    pass, ``rate`` is the marginal (steady-state) throughput and ``start_s`` the fixed cost of
    a pass, e.g. Ray Data scheduling its first tasks.
    """
    def mean(passes: list[dict[str, float]], key: str) -> float:
        return sum(p[key] for p in passes) / len(passes)

    n_l, t_l, n_s, t_s = (mean(long, "images"), mean(long, "seconds"), mean(short, "images"),
                          mean(short, "seconds"))
    rate = (n_l - n_s) / (t_l - t_s) if t_l > t_s else float("inf")
    return {"images_per_s": n_l / t_l, "short_images_per_s": n_s / t_s,
            "steady_images_per_s": rate, "start_s": t_l - n_l / rate,
            "first_batch_s": mean(long, "first_s"),
            "consumer_cpu_s": mean(long, "consumer_cpu_s")}


def break_even(tv: dict[str, float], rs: dict[str, float], goal: float) -> float:
    """Smallest pass (epoch) size at which raysl's passes are ``goal`` times faster; inf if none.

    A pass of N images takes ``start_s + N / steady`` on each side.
    """
    per_image = 1 / tv["steady_images_per_s"] - goal / rs["steady_images_per_s"]  # s/image
    fixed = goal * rs["start_s"] - tv["start_s"]
    if per_image <= 0:
        return 0.0 if fixed <= 0 else float("inf")
    return max(0.0, fixed / per_image)


def measure(size: int, n: int, block_rows: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement at one input size."""
    images = smooth_images(n, size, args.seed)

    def say(line: str) -> None:
        print(f"[{size} px] {line} (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)

    result: dict[str, Any] = {"size": size, "images": n, "block_rows": block_rows,
                              "load_before": os.getloadavg()[0]}
    alone = images[: min(n, args.single_images)]
    for side in SIDES:
        r = single_process(alone, side, args.augment_batch_size, args.seed)
        result[f"{side}_1proc"] = {"images_per_s": r["images"] / r["seconds"]}
        say(f"{side} transform alone, 1 process: {r['images']} images in {r['seconds']:.2f} s = "
            f"{r['images'] / r['seconds']:.1f} img/s")
    # Passes over all n images and over a quarter of them: the pair separates each side's
    # fixed cost per pass from its steady rate (see summarize).
    sides = Sides(images, block_rows, args)
    lengths = {"long": n, "short": n // 4}
    for side in SIDES:
        r = timed_pass(sides.batches(side, n))
        say(f"{side} warm-up pass: {r['images']} images in {r['seconds']:.2f} s (not counted)")
    passes: dict[str, list[dict[str, float]]] = {}
    for epoch in range(args.epochs):
        for length, count in lengths.items():
            # Alternate which side goes first, so drift in the machine's load hits both alike.
            for side in SIDES if epoch % 2 == 0 else SIDES[::-1]:
                r = timed_pass(sides.batches(side, count))
                passes.setdefault(f"{side}_{length}", []).append(r)
                say(f"{side} pass {epoch + 1}/{args.epochs} ({length}): {r['images']} images in "
                    f"{r['seconds']:.2f} s = {r['images'] / r['seconds']:.1f} img/s, first "
                    f"batch after {r['first_s']:.2f} s, consumer CPU {r['consumer_cpu_s']:.2f} s")
    del sides  # ends the DataLoader's persistent workers before the next size
    tv, rs = (summarize(passes[f"{side}_long"], passes[f"{side}_short"]) for side in SIDES)
    n_goal = break_even(tv, rs, args.goal)
    result |= {"torchvision": tv, "raysl": rs, "passes": passes,
               "ratio": rs["images_per_s"] / tv["images_per_s"],
               "steady_ratio": rs["steady_images_per_s"] / tv["steady_images_per_s"],
               "break_even_images": None if math.isinf(n_goal) else n_goal,  # None: never
               "load_after": os.getloadavg()[0]}
    return result


def table(rows: list[dict[str, Any]], workers: int) -> str:
    """Markdown table: both pipelines, then each transform alone, per input size."""
    lines = ["| input | pipeline | img/s per pass | steady img/s | start per pass | "
             "raysl / torchvision |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        px = f"{r['size']}x{r['size']}"
        tv, rs = r["torchvision"], r["raysl"]
        tv1, rs1 = r["torchvision_1proc"], r["raysl_1proc"]
        lines += [
            f"| {px} | torchvision DataLoader, {workers} workers | {tv['images_per_s']:.0f} | "
            f"{tv['steady_images_per_s']:.0f} | {max(0.0, tv['start_s']):.1f} s | |",
            f"| {px} | raysl view_stream, up to {workers} tasks | {rs['images_per_s']:.0f} | "
            f"{rs['steady_images_per_s']:.0f} | {max(0.0, rs['start_s']):.1f} s | "
            f"**{r['ratio']:.2f}x** per pass, {r['steady_ratio']:.2f}x steady |",
            f"| {px} | torchvision transform alone, 1 process | {tv1['images_per_s']:.0f} | | | |",
            f"| {px} | raysl MultiViewTransform alone, 1 process | {rs1['images_per_s']:.0f} | | | "
            f"{rs1['images_per_s'] / tv1['images_per_s']:.2f}x |",
        ]
    return "\n".join(lines)


def verdict(r: dict[str, Any], goal: float) -> str:
    """One line: the ratios at this size against the goal."""
    n = r["break_even_images"]
    if r["ratio"] >= goal:
        met = "met"
    elif n is None:
        met = "NOT met, at any epoch size (the steady ratio is below it)"
    else:
        met = f"NOT met at {r['images']} images per pass; by the fit, met from {n:,.0f}"
    return (f"{r['size']} px: raysl / torchvision = {r['ratio']:.2f}x per pass of {r['images']} "
            f"images, {r['steady_ratio']:.2f}x steady (goal >= {goal}x: {met})")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import ray

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return {"cpus": os.cpu_count(), "cpu": models[0] if models else platform.processor(),
            "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "ray": ray.__version__}


def main() -> int:
    """Measure every size in one Ray session; print the table and the ratios."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 224],
                   help="input side(s) in pixels; views have the same side")
    p.add_argument("--images", type=int, nargs="+", default=[],
                   help="images per long pass, one count per size (or one for all); default "
                        "8192 up to 64 px, else 1024: about 10 s per pass on 2 cores")
    p.add_argument("--workers", type=int, default=2,
                   help="DataLoader workers = raysl augmentation tasks (default 2 = the cores)")
    p.add_argument("--epochs", type=int, default=2,
                   help="rounds of timed passes (a long and a short one per side), after one "
                        "warm-up pass per side")
    p.add_argument("--batch-size", type=int, default=128,
                   help="images per batch the consumer receives, both sides")
    p.add_argument("--augment-batch-size", type=int, default=DataConfig.augment_batch_size,
                   help="images per raysl map_batches call (data.augment_batch_size)")
    p.add_argument("--block-rows", type=int, nargs="+", default=[],
                   help="rows per Ray Data block of the source images, one per size (or one for "
                        "all); default 0 = raysl's own: about 4 MB, at least 64 rows (1365 rows "
                        "at 32 px, 64 at 224)")
    p.add_argument("--single-images", type=int, default=256,
                   help="images for the 1-process measurements (at most --images)")
    p.add_argument("--goal", type=float, default=1.5, help="target ratio raysl / torchvision")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="benchmarks/data_throughput.json",
                   help="also write every figure here (empty: do not)")
    args = p.parse_args()
    if not args.images:
        args.images = [8192 if s <= 64 else 1024 for s in args.sizes]
    if not args.block_rows:
        args.block_rows = [0]
    counts, rows = (v if len(v) > 1 else v * len(args.sizes) for v in (args.images,
                                                                         args.block_rows))
    if len(counts) != len(args.sizes) or len(rows) != len(args.sizes):
        p.error(f"--images, --block-rows: give one value, or one per size ({len(args.sizes)})")
    if min(counts) < 4 * args.batch_size:
        p.error(f"--images: at least 4 x --batch-size ({4 * args.batch_size}) per size, so the "
                "short pass (a quarter) has a full batch")

    import ray
    import ray.data

    torch.set_num_threads(1)  # the consumer, on both sides; the workers use 1 thread each
    started = not ray.is_initialized()
    if started:
        # As many logical CPUs as DataLoader workers: one augmentation task per CPU; the driver
        # holds none, like the DataLoader's main process (both consume on the remaining time).
        ray.init(address="local", num_cpus=args.workers, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        results = [measure(size, n, r, args)
                   for size, n, r in zip(args.sizes, counts, rows, strict=True)]
    finally:
        if started:
            ray.shutdown()
    print(table(results, args.workers))
    for r in results:
        print(verdict(r, args.goal))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "machine": machine(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
