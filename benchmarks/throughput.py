"""Training throughput, side by side: raysl against lightly, a plain PyTorch loop and the ceiling.

    .venv/bin/python benchmarks/throughput.py                        # SimCLR and BYOL, ~25 min
    .venv/bin/python benchmarks/throughput.py --methods simclr --rounds 3
    .venv/bin/python benchmarks/throughput.py --sides plain ceiling --images 1024   # no Ray

Every side trains the same method (SimCLR or BYOL), the same model (raysl's encoder, the demo's
ResNet-18 at width 16 with the small-image stem), the same batch, image size and augmentations
(the recipe's ``data.views``), on the same Fashion-MNIST images:

* ``raysl``: the command a user runs, ``raysl pretrain`` (Ray Data views -> Ray Train DDP
  workers -> MLflow), once per train-worker count in ``--workers``; its img/s is the last epoch's
  ``train/images_per_s`` and its start-up the run's ``time/first_step_s``, both read back from
  the run's MLflow store.
* ``lightly``: lightly 1.6 as its examples use it (``pip install -e ".[bench]"``): its
  transforms on a torchvision dataset, a DataLoader, its projection/prediction heads, losses
  and momentum utilities, around raysl's encoder.
* ``plain``: one process, a torchvision ``DataLoader`` with ``transforms.v2`` equivalents of the
  recipe's views, raysl's method module and optimizer step (what raysl adds on top is Ray).
* ``ceiling``: raysl's train workers without Ray: the same DDP group (``--workers`` gloo
  processes, the threads raysl's resource plan gives each) stepping on views made beforehand and
  held in memory: the compute-only rate of the same work.

Each measurement is its own process, and the sides are interleaved (A B C A B C ...) so that the
machine's drift hits all of them. The in-process sides time their last epoch the way raysl's
epoch line does (every step of the epoch, data included). Results: a Markdown table on stdout,
everything in ``--json``.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import torch
from extraction_speed import cpu_model  # benchmarks/ is on the path of its scripts
from torch import Tensor, nn

from raysl import config as C
from raysl.cli import process_start
from raysl.methods.base import Progress, SSLMethod, build_method
from raysl.methods.byol import BYOLConfig
from raysl.methods.simclr import SimCLRConfig
from raysl.train.optim import build_optimizer
from raysl.train.step import autocast_dtype, memory_format, train_step, unwrap

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"simclr": ROOT / "pipelines/configs/demo.yaml",
           "byol": ROOT / "pipelines/configs/byol_fmnist.yaml"}
SIDES = ("raysl", "lightly", "plain", "ceiling")
PER_WORKERS = ("raysl", "ceiling")  # measured at each of --workers; the others are one process
RESULT_MARK = "THROUGHPUT_RESULT "  # the line a measuring process prints its result on


MODELS = {  # --model: the demo's small ResNet (28 px images), or a standard network
    "small": ["model.backbone=resnet18", "model.width=16", "model.small_stem=true"],
    "resnet18": ["model.backbone=resnet18", "model.width=0", "model.small_stem=false"],
    "resnet50": ["model.backbone=resnet50", "model.width=0", "model.small_stem=false"],
    "vit_small": ["model.backbone=vit_small", "model.width=0", "model.small_stem=false"],
}


def overrides(method: str, args: argparse.Namespace, workers: int = 2) -> list[str]:
    """The benchmark's sizes on top of the method's recipe (``--set`` for ``raysl pretrain``)."""
    data = ([f"data.source.path={args.folder}", "data.source.format=auto", "data.channels=3"]
            if args.folder else [f"data.source.path={args.data}"])
    size = [f"data.image_size={args.image_size}"] if args.image_size else []
    # On a GPU the train worker needs a couple of CPUs, Ray Data the rest (the DataLoader of
    # the other sides gets them all); the default keeps 1 CPU for data, a CPU machine's split.
    cpus = os.cpu_count() or 1
    gpu = (["train.cpus_per_worker=2", f"train.data_cpus={cpus - 2 * workers}"]
           if torch.cuda.is_available() and cpus > 2 * workers + 1 else [])
    return [*data, *size, *gpu, f"data.source.limit={args.images}",
            f"data.batch_size_global={args.batch}", *MODELS[args.model],
            f"train.epochs={args.epochs}", f"train.num_workers={workers}",
            f"train.use_gpu={str(torch.cuda.is_available()).lower()}", "optim.warmup_epochs=0",
            "eval.enabled=false", "eval.monitor_every=0", "tracking.register=false"]


def workload(method: str, args: argparse.Namespace, workers: int = 2) -> C.Config:
    """The one configuration every side trains: the method's recipe at the benchmark's size."""
    return C.load(RECIPES[method], overrides(method, args, workers))


def device() -> torch.device:
    """The in-process sides' device: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------- data for the in-process sides


def fashion_mnist(data_dir: str, cache: Path, limit: int) -> torch.utils.data.Subset[Any]:
    """Torchvision's FashionMNIST dataset: the first ``limit`` training images of ``data_dir``.

    torchvision reads the uncompressed IDX files from ``<root>/FashionMNIST/raw``; the Debian
    package ships them gzipped, so they are unpacked once into ``cache``.
    """
    from torchvision.datasets import FashionMNIST

    raw = cache / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        if not (raw / name).exists():  # unpacked beside, then renamed: readers never see half
            part = raw / f"{name}.{os.getpid()}.part"
            with gzip.open(Path(data_dir) / f"{name}.gz") as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(part, raw / name)
    dataset = FashionMNIST(str(cache), train=True, download=False)
    return torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))


def images(args: argparse.Namespace) -> torch.utils.data.Subset[Any]:
    """The benchmark's images as PIL images: ``--folder`` (torchvision ImageFolder) or FMNIST."""
    if args.folder:
        from torchvision.datasets import ImageFolder

        folder = ImageFolder(args.folder)
        return torch.utils.data.Subset(folder, range(min(args.images, len(folder))))
    return fashion_mnist(args.data, Path(args.cache), args.images)


class TwoViews(torch.utils.data.Dataset[Any]):
    """``dataset``'s images through ``transform`` (PIL -> list of views); labels dropped."""

    def __init__(self, dataset: torch.utils.data.Subset[Any],
                 transform: Callable[[Any], list[Tensor]]) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> list[Tensor]:
        return self.transform(self.dataset[i][0])


def torchvision_views(cfg: C.Config) -> Callable[[Any], list[Tensor]]:
    """The recipe's global views (``data.views``) as torchvision ``transforms.v2`` pipelines."""
    from torchvision.transforms import v2 as T

    v, size = cfg.data.views, cfg.data.image_size

    def view(i: int) -> Callable[[Any], Tensor]:
        ops: list[Any] = [
            T.RandomResizedCrop(size, scale=v.crop_scale, ratio=v.crop_ratio, antialias=True),
            T.RandomHorizontalFlip(v.hflip_p),
            T.RandomApply([T.ColorJitter(v.brightness, v.contrast, v.saturation, v.hue)],
                          p=v.jitter_p),
            T.RandomGrayscale(v.grayscale_p)]
        if v.blur_p[i] > 0:
            kernel = 2 * round(0.05 * size) + 1  # ~10% of the side, odd
            ops.append(T.RandomApply([T.GaussianBlur(kernel, v.blur_sigma)], p=v.blur_p[i]))
        if v.solarize_p[i] > 0:
            ops.append(T.RandomSolarize(128, p=v.solarize_p[i]))
        ops += [T.ToImage(), T.ToDtype(torch.float32, scale=True)]
        return cast(Callable[[Any], Tensor], T.Compose(ops))  # torchvision: untyped

    return EachView([view(i) for i in range(2)])


class EachView:
    """Every view's transform applied to one image (a class: DataLoader workers pickle it)."""

    def __init__(self, transforms: list[Callable[[Any], Tensor]]) -> None:
        self.transforms = transforms

    def __call__(self, image: Any) -> list[Tensor]:
        """One (C, S, S) tensor per view."""
        return [t(image) for t in self.transforms]


def loader(dataset: torch.utils.data.Dataset[Any], args: argparse.Namespace
           ) -> torch.utils.data.DataLoader[Any]:
    """The DataLoader every in-process side reads: shuffled, full batches, persistent workers."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=args.batch, shuffle=True, drop_last=True,
        num_workers=args.loader_workers, persistent_workers=args.loader_workers > 0,
        pin_memory=torch.cuda.is_available())


# ---------------------------------------------------------------- the sides


class EpochClock:
    """Times each epoch of an in-process side; the result is the last epoch's images/s."""

    def __init__(self, batch: int, process_start: float) -> None:
        self.batch, self.process_start = batch, process_start
        self.first_step_s = 0.0
        self.images_per_s = 0.0

    def run(self, epochs: int, batches: Callable[[], Iterable[Any]],
            step: Callable[[Any, int], None]) -> None:
        """``epochs`` passes of ``step(batch, global_step)`` over ``batches()``."""
        n = 0
        for _ in range(epochs):
            t0, steps = time.perf_counter(), 0
            for batch in batches():
                step(batch, n)
                if n == 0:
                    self.first_step_s = time.time() - self.process_start
                n, steps = n + 1, steps + 1
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # the GPU's queued work belongs to this epoch
            self.images_per_s = steps * self.batch / (time.perf_counter() - t0)


def placed(views: list[Tensor], cfg: C.Config) -> list[Tensor]:
    """Views on the device, in the layout raysl's workers use (channels-last for CNNs on GPU)."""
    dev = device()
    layout = memory_format(cfg.train.channels_last, dev, cfg.model.is_vit)
    return [v.to(dev, non_blocking=True).contiguous(memory_format=layout) for v in views]


def raysl_step(method: nn.Module, cfg: C.Config, steps_per_epoch: int
               ) -> Callable[[list[Tensor], int], None]:
    """The optimizer step raysl's train workers take (AMP on GPU as they do), without Ray."""
    optimizer = build_optimizer(method, cfg.optim, cfg.optim.peak_lr(cfg.data.batch_size_global),
                                unwrap(method).fixed_lr_parameters())
    amp = autocast_dtype(cfg.train.precision, device())
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    total = cfg.train.epochs * steps_per_epoch

    def step(views: list[Tensor], n: int) -> None:
        train_step(method, [placed(views, cfg)], optimizer, Progress(n, total, steps_per_epoch),
                   amp, scaler)

    return step


def built(cfg: C.Config) -> SSLMethod:
    """The method on the device, its weights in the layout its views come in."""
    dev = device()
    method = build_method(cfg).to(dev)
    return method.to(memory_format=memory_format(cfg.train.channels_last, dev, cfg.model.is_vit))


def measure_plain(cfg: C.Config, args: argparse.Namespace, clock: EpochClock) -> None:
    """A single-process PyTorch loop: torchvision DataLoader -> raysl's method and step."""
    data = loader(TwoViews(images(args), torchvision_views(cfg)), args)
    clock.run(cfg.train.epochs, lambda: data, raysl_step(built(cfg), cfg, len(data)))


def measure_ceiling(cfg: C.Config, args: argparse.Namespace, clock: EpochClock) -> None:
    """The ceiling: raysl's workers without Ray, stepping on views made beforehand.

    ``train.num_workers`` gloo processes with the threads raysl's resource plan gives its train
    workers; each makes its share of one epoch of views first, holds it on its device, and then
    times nothing but the model's forward, backward, all-reduce and update. Rank 0's clock is
    the result.
    """
    import torch.multiprocessing as mp

    workers = cfg.train.num_workers
    images(args)  # unpacks the images once, before the ranks read them
    with tempfile.TemporaryDirectory(prefix="raysl-ceiling-") as tmp:
        mp.spawn(  # type: ignore[attr-defined,no-untyped-call]  # torch: untyped, not re-exported
            _ceiling_worker, args=(workers, cfg.to_dict(), args, clock, tmp), nprocs=workers,
            join=True)
        result = json.loads((Path(tmp) / "rank0.json").read_text())
    clock.images_per_s, clock.first_step_s = result["images_per_s"], result["first_step_s"]


def _ceiling_worker(rank: int, world: int, config: dict[str, Any], args: argparse.Namespace,
                    clock: EpochClock, tmp: str) -> None:
    """One rank of :func:`measure_ceiling`, DDP like a Ray Train worker."""
    import torch.distributed as dist

    from raysl import distributed
    from raysl.cluster.nodes import Node
    from raysl.train.trainer import plan_resources

    cfg = C.Config.from_dict(config)
    machine = Node(float(os.cpu_count() or 1), float(torch.cuda.device_count()))
    torch.set_num_threads(plan_resources(cfg, [machine]).threads_per_worker)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank,
                            world_size=world)
    try:
        steps = args.images // cfg.data.batch_size_global  # the same on every rank
        mine = argparse.Namespace(**{**vars(args), "batch": cfg.batch_size_per_worker})
        views = loader(TwoViews(images(mine), torchvision_views(cfg)), mine)
        ready = [placed(batch, cfg) for batch, _ in zip(views, range(steps), strict=False)]
        torch.manual_seed(cfg.train.seed)
        method = built(cfg)
        model: nn.Module = method
        if world > 1:
            # As raysl's workers: buffers synced once at the start, not in every forward.
            ddp = nn.parallel.DistributedDataParallel(method, broadcast_buffers=False)
            ddp.register_comm_hook(None, distributed.timed_allreduce_hook)
            model = ddp
        clock.run(cfg.train.epochs, lambda: ready, raysl_step(model, cfg, len(ready)))
        if rank == 0:
            (Path(tmp) / "rank0.json").write_text(json.dumps(
                {"images_per_s": clock.images_per_s,  # global batches: every rank's images
                 "first_step_s": clock.first_step_s}))
    finally:
        dist.destroy_process_group()


def measure_lightly(cfg: C.Config, args: argparse.Namespace, clock: EpochClock) -> None:
    """The lightly 1.6 side: as its SimCLR / BYOL examples use it, around raysl's encoder."""
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.modules import (
        BYOLPredictionHead,
        BYOLProjectionHead,
        SimCLRProjectionHead,
    )
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms.byol_transform import (
        BYOLTransform,
        BYOLView1Transform,
        BYOLView2Transform,
    )
    from lightly.transforms.simclr_transform import SimCLRTransform
    from lightly.utils.scheduler import cosine_schedule

    v, size, m = cfg.data.views, cfg.data.image_size, cfg.method
    common: dict[str, Any] = {
        "input_size": size, "cj_prob": v.jitter_p, "cj_strength": 1.0,
        "cj_bright": v.brightness, "cj_contrast": v.contrast, "cj_sat": v.saturation,
        "cj_hue": v.hue, "min_scale": v.crop_scale[0], "random_gray_scale": v.grayscale_p,
        "hf_prob": v.hflip_p, "sigmas": v.blur_sigma, "normalize": None}
    encoder = build_method(cfg).encoder  # the same network, freshly initialised
    features = encoder.num_features
    model: nn.Module
    if isinstance(m, SimCLRConfig):
        transform: Any = SimCLRTransform(gaussian_blur=v.blur_p[0], **common)
        model = nn.Sequential(encoder, SimCLRProjectionHead(
            features, m.proj_hidden_dim or features, m.proj_output_dim))
        criterion: nn.Module = NTXentLoss(temperature=m.temperature)
        momentum_pairs: list[tuple[nn.Module, nn.Module]] = []
    elif isinstance(m, BYOLConfig):
        transform = BYOLTransform(
            BYOLView1Transform(gaussian_blur=v.blur_p[0], solarization_prob=v.solarize_p[0],
                               **common),
            BYOLView2Transform(gaussian_blur=v.blur_p[1], solarization_prob=v.solarize_p[1],
                               **common))
        projector = BYOLProjectionHead(features, m.proj_hidden_dim,
                                       m.proj_output_dim)
        predictor = BYOLPredictionHead(m.proj_output_dim,
                                       m.pred_hidden_dim,
                                       m.proj_output_dim)
        model = nn.Sequential(encoder, projector, predictor)
        target = nn.Sequential(copy.deepcopy(encoder), copy.deepcopy(projector))
        deactivate_requires_grad(target)
        momentum_pairs = [(model[0], target[0]), (model[1], target[1])]
        criterion = NegativeCosineSimilarity()
    else:
        raise ValueError(f"method {m.name!r}: the lightly side runs simclr or byol")
    data = loader(TwoViews(images(args), transform), args)
    dev, layout = device(), memory_format(cfg.train.channels_last, device(), cfg.model.is_vit)
    for module in (model, *([target] if momentum_pairs else [])):
        module.to(dev).to(memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.peak_lr(args.batch),
                                momentum=0.9, weight_decay=cfg.optim.weight_decay)
    amp = autocast_dtype(cfg.train.precision, dev)  # the same AMP as the other sides
    total = cfg.train.epochs * len(data)

    def step(views: list[Tensor], n: int) -> None:
        x0, x1 = placed(views, cfg)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            if momentum_pairs:  # BYOL: the example's loop
                tau = cosine_schedule(n, total, 0.99, 1.0)
                for online, ema in momentum_pairs:
                    update_momentum(online, ema, m=tau)
                with torch.no_grad():
                    z0, z1 = target(x0), target(x1)
                loss = 0.5 * (criterion(model(x0), z1) + criterion(model(x1), z0))
            else:
                loss = criterion(model(x0), model(x1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    clock.run(cfg.train.epochs, lambda: data, step)


def measure_raysl(cfg: C.Config, args: argparse.Namespace) -> dict[str, float]:
    """``raysl pretrain`` as a user runs it; img/s and start-up read back from its MLflow run."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="raysl-bench-") as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        command = [str(Path(sys.executable).parent / "raysl"), "pretrain",
                   "--config", str(RECIPES[cfg.method.name])]
        for setting in (*overrides(cfg.method.name, args, cfg.train.num_workers),
                        f"tracking.tracking_uri={store}", "tracking.experiment=throughput",
                        f"train.storage_path={tmp}/runs", "train.run_name=throughput"):
            command += ["--set", setting]
        log = Path(tmp) / "pretrain.log"
        with open(log, "w") as out:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
                                  check=False, timeout=args.timeout)
        if done.returncode:
            sys.stderr.write(log.read_text()[-4000:])
            raise RuntimeError(f"raysl pretrain exited with {done.returncode}")
        client = mlflow.MlflowClient(store)
        experiment = client.get_experiment_by_name("throughput")
        if experiment is None:
            raise RuntimeError(f"raysl pretrain logged no MLflow experiment 'throughput' in {tmp}")
        (run,) = client.search_runs([experiment.experiment_id])
        metrics = run.data.metrics
        return {"images_per_s": metrics["train/images_per_s"],
                "first_step_s": metrics["time/first_step_s"],
                **{k.split("/")[1]: v for k, v in metrics.items() if k.endswith("_fraction")}}


def measure(side: str, method: str, workers: int, args: argparse.Namespace,
            process_start: float) -> dict[str, Any]:
    """One measurement of ``side`` in this process: images/s of its last epoch, start-up."""
    cfg = workload(method, args, workers)
    if side == "raysl":
        values = measure_raysl(cfg, args)
    else:
        torch.set_num_threads(args.threads)
        clock = EpochClock(args.batch, process_start)
        {"plain": measure_plain, "ceiling": measure_ceiling,
         "lightly": measure_lightly}[side](cfg, args, clock)
        values = {"images_per_s": clock.images_per_s, "first_step_s": clock.first_step_s}
    return {"side": side, "method": method, "workers": workers if side in PER_WORKERS else 1,
            **values}


# ---------------------------------------------------------------- the driver


def schedule(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(side, method, raysl workers) of every measurement, interleaved: all sides each round."""
    one_round = [(side, method, workers)
                 for method in args.methods for side in args.sides
                 for workers in (args.workers if side in PER_WORKERS else [1])]
    return [item for _ in range(args.rounds) for item in one_round]


def measure_in_subprocess(side: str, method: str, workers: int,
                          args: argparse.Namespace) -> dict[str, Any]:
    """:func:`measure` in a fresh Python process, as a user would start it."""
    command = [sys.executable, __file__, "--one", side, "--methods", method,
               "--workers", str(workers), *_shared_flags(args)]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=args.timeout + 60)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK):])
            return result
    sys.stderr.write(done.stdout[-2000:] + done.stderr[-4000:])
    raise RuntimeError(f"{side}/{method} exited with {done.returncode} and no result")


def _shared_flags(args: argparse.Namespace) -> list[str]:
    return ["--model", args.model, "--image-size", str(args.image_size), "--folder", args.folder,
            "--data", args.data, "--images", str(args.images), "--batch", str(args.batch),
            "--epochs", str(args.epochs), "--threads", str(args.threads),
            "--loader-workers", str(args.loader_workers), "--cache", args.cache,
            "--timeout", str(args.timeout)]


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per (method, side[/workers]): the median images/s and start-up over the rounds."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        name = r["side"] + (f"/{r['workers']}w" if r["side"] in PER_WORKERS else "")
        groups.setdefault(f"{r['method']} {name}", []).append(r)
    return {key: {"images_per_s": statistics.median(r["images_per_s"] for r in group),
                  "first_step_s": statistics.median(r["first_step_s"] for r in group),
                  "runs": len(group)}
            for key, group in groups.items()}


def ratios(summary: dict[str, dict[str, float]], methods: Iterable[str],
           raysl_workers: int) -> dict[str, float]:
    """Images/s of raysl (``raysl_workers``) over each other side's, per method, where measured."""
    out = {}
    for method in methods:
        ours = summary.get(f"{method} raysl/{raysl_workers}w")
        if ours is None:
            continue
        for other in ("lightly", "plain", f"ceiling/{raysl_workers}w"):
            if (theirs := summary.get(f"{method} {other}")) is not None:
                out[f"{method} raysl/{other.split('/')[0]}"] = (ours["images_per_s"]
                                                                / theirs["images_per_s"])
        if (single := summary.get(f"{method} raysl/1w")) is not None and raysl_workers != 1:
            out[f"{method} raysl {raysl_workers}w/1w"] = (ours["images_per_s"]
                                                          / single["images_per_s"])
    return out


def table(summary: dict[str, dict[str, float]], ratio: dict[str, float]) -> str:
    """Markdown: img/s and start-up per side, then the ratios."""
    lines = ["| method, side | images/s (median) | command to first step (s) | runs |",
             "|---|---:|---:|---:|"]
    lines += [f"| {key} | {v['images_per_s']:.0f} | {v['first_step_s']:.1f} | "
              f"{v['runs']:.0f} |" for key, v in summary.items()]
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {key} | {value:.2f}x |" for key, value in ratio.items()]
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--one``: this process measures one side and prints the result)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    p.add_argument("--workers", nargs="+", type=int, default=[2, 1],
                   help="raysl's train-worker counts (the other sides are one process)")
    p.add_argument("--rounds", type=int, default=2, help="times each side is measured")
    p.add_argument("--images", type=int, default=4096)  # make bench: ~25 min on 2 CPUs
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2, help="the last one is timed")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads of the in-process sides")
    p.add_argument("--loader-workers", type=int, default=os.cpu_count() or 1,
                   help="DataLoader processes of the lightly and plain sides")
    p.add_argument("--model", choices=list(MODELS), default="small",
                   help="small: the demo's width-16 ResNet-18 for 28 px images")
    p.add_argument("--image-size", type=int, default=0, help="0 = the recipe's (28)")
    p.add_argument("--folder", default="",
                   help="an image folder (class sub-folders) instead of Fashion-MNIST")
    p.add_argument("--data", default=C.FASHION_MNIST_DIR)
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "raysl-bench-fmnist"))
    p.add_argument("--json", default="benchmarks/throughput.json")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    p.add_argument("--one", choices=SIDES, help=argparse.SUPPRESS)  # a measuring process
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure every side, interleaved, each in its own process; print and save the results."""
    args = parse(argv)
    if args.one:
        result = measure(args.one, args.methods[0], args.workers[0], args, process_start())
        print(RESULT_MARK + json.dumps(result), flush=True)
        return 0
    if "lightly" in args.sides and importlib.util.find_spec("lightly") is None:
        print("[bench] lightly is not installed (pip install -e '.[bench]'): its side is skipped",
              file=sys.stderr)
        args.sides = [s for s in args.sides if s != "lightly"]
    rows = []
    for side, method, workers in schedule(args):
        rows.append(measure_in_subprocess(side, method, workers, args))
        r = rows[-1]
        print(f"[bench] {method} {side}{f' ({workers} workers)' if side in PER_WORKERS else ''}: "
              f"{r['images_per_s']:.0f} img/s, first step {r['first_step_s']:.1f}s",
              file=sys.stderr, flush=True)
    summary = summarise(rows)
    ratio = ratios(summary, args.methods, max(args.workers))
    Path(args.json).write_text(json.dumps(
        {"args": vars(args), "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"),
         "rows": rows, "summary": summary, "ratios": ratio}, indent=2))
    print(table(summary, ratio))
    return 0


if __name__ == "__main__":
    sys.exit(main())
