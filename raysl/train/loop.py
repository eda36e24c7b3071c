"""The Ray Train worker function: the only training code that calls ``ray.train``."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import ray
import ray.train
import ray.train.torch
import torch
from torch import nn

from raysl import distributed
from raysl.checkpoint import restore, save_checkpoint
from raysl.config import Config
from raysl.console import duration, say
from raysl.eval.online import OnlineProbe, online_metrics
from raysl.eval.splits import LabeledSplit
from raysl.methods.base import Progress, SSLMethod, build_method
from raysl.schedules import set_lr, warmup_cosine
from raysl.tracking.mlflow import Tracker
from raysl.train.optim import build_optimizer, set_weight_decay
from raysl.train.step import autocast_dtype, memory_format, train_step

PROGRESS_EVERY_S = 30.0  # a progress line inside long epochs


@dataclass(frozen=True)
class LoopSettings:
    """What the driver works out for the workers (beyond the config)."""

    steps_per_epoch: int
    threads_per_worker: int
    tracking_uri: str
    mlflow_run_id: str
    run_name: str
    num_classes: int = 0  # labels of the training data, for the online probe (0 = unlabeled)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Pretrain on this worker's shard; checkpoint and report every epoch.

    Args:
        loop_config: ``{"config": Config.to_dict(), "settings": LoopSettings.__dict__,
            "eval_split": ObjectRef of a LabeledSplit or None}`` (the split for online kNN).
    """
    cfg = Config.from_dict(loop_config["config"])
    s = LoopSettings(**loop_config["settings"])
    torch.set_num_threads(s.threads_per_worker)
    torch.manual_seed(cfg.train.seed)  # same initial weights everywhere (DDP also broadcasts)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    # [1] This worker's equal share of the augmented view stream.
    shard = ray.train.get_dataset_shard("train")

    # [2] Model (DDP-wrapped on its device), optimizer, and state of the last checkpoint if any.
    method = build_method(cfg)
    if cfg.train.sync_bn and world > 1:
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(method)  # type: ignore[no-untyped-call]
        method = cast(SSLMethod, synced)
    # Buffers are synced once at start, never in forward. Needed for correctness: SwAV's queue
    # differs per rank by design (each holds its own embeddings) and a sync would overwrite it
    # with rank 0's. The others (MoCo's queue, DINO's center) stay identical through collectives,
    # and broadcasting a 65536-key queue each step would cost more than the step. BatchNorm
    # running statistics are exported from rank 0.
    device = ray.train.torch.get_device()
    layout = memory_format(cfg.train.channels_last, device, cfg.model.is_vit)
    method = method.to(memory_format=layout)
    model = ray.train.torch.prepare_model(
        method, parallel_strategy_kwargs={"forward_sync_buffers": False})
    num_views = len(cfg.view_sizes)
    # Linear scaling rule on the global batch that actually runs (world size may differ from
    # the config when Ray restarts elastically).
    batch_global = cfg.batch_size_per_worker * world
    peak_lr = cfg.optim.peak_lr(batch_global)
    optimizer = build_optimizer(model, cfg.optim, peak_lr, method.fixed_lr_parameters())
    amp = autocast_dtype(cfg.train.precision, device)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    start_epoch, step = 0, 0
    if (checkpoint := ray.train.get_checkpoint()) is not None:
        with checkpoint.as_directory() as d:
            state = restore(d, method, optimizer)
        start_epoch, step = state["epoch"] + 1, state["step"]
    tracker = Tracker(s.tracking_uri, s.mlflow_run_id, active=rank == 0)
    probe = None
    if cfg.eval.online_probe:  # after prepare_model: hooks on the module DDP calls
        probe = OnlineProbe(method, method.encoder, method.encoder.num_features, s.num_classes,
                            cfg.eval.online_probe_lr).to(device)
    split_ref = loop_config.get("eval_split")
    split: LabeledSplit | None = None  # fetched by rank 0 at its first online evaluation
    total_steps = cfg.train.epochs * s.steps_per_epoch
    warmup_steps = round(cfg.optim.warmup_epochs * s.steps_per_epoch)
    echo = say if rank == 0 else (lambda *a, **k: None)
    if start_epoch:
        echo(f"[raysl] resuming {s.run_name} at epoch {start_epoch + 1} (step {step})")

    # [3] Epochs.
    run_start = time.perf_counter()
    accum = cfg.train.grad_accumulation
    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.perf_counter()
        losses: list[float] = []
        extras: dict[str, list[float]] = {}  # the method's own logs, averaged over the epoch
        last_print = t0
        for micro_batches in _grouped(shard.iter_torch_batches(
                batch_size=cfg.micro_batch_size, drop_last=True, device=device,
                prefetch_batches=2 * accum,
                local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
                pin_memory=device.type == "cuda"), accum):
            lr = warmup_cosine(step, total_steps, warmup_steps, peak_lr,
                               peak_lr * cfg.optim.final_lr_ratio)
            set_lr(optimizer, lr)
            progress = Progress(step, total_steps, s.steps_per_epoch)
            set_weight_decay(optimizer, cfg.optim.weight_decay_at(progress.fraction))
            views = [[mb[f"view{i}"].contiguous(memory_format=layout) for i in range(num_views)]
                     for mb in micro_batches]
            result = train_step(model, views, optimizer, progress, amp, scaler,
                                cfg.optim.clip_grad, cfg.optim.clip_mode == "per_param")
            loss = result.loss
            losses.append(loss)
            if probe is not None:
                result.logs.update(probe.step([mb["label"] for mb in micro_batches]))
            for k, v in result.logs.items():
                extras.setdefault(k, []).append(v)
            step += 1
            if time.perf_counter() - last_print > PROGRESS_EVERY_S:
                last_print = time.perf_counter()
                echo(f"[raysl] epoch {epoch + 1}/{cfg.train.epochs} step {len(losses)}/"
                    f"{s.steps_per_epoch} loss {loss:.4f}")
        if not losses:
            raise RuntimeError(f"epoch {epoch + 1}: no full batch of {cfg.batch_size_per_worker} "
                               "views reached this worker; lower data.batch_size_global or add "
                               "images")
        seconds = time.perf_counter() - t0
        images_per_s = len(losses) * batch_global / seconds
        metrics = {"train/loss": sum(losses) / len(losses), "train/lr": lr,
                   "train/images_per_s": images_per_s, "train/epoch_s": seconds,
                   **{f"train/{k}": sum(v) / len(v) for k, v in extras.items()},
                   "epoch": epoch + 1}
        if cfg.optim.weight_decay_schedule != "constant":
            metrics["train/weight_decay"] = cfg.optim.weight_decay_at(progress.fraction)
        if cfg.optim.clip_grad > 0:
            metrics["train/grad_norm"] = result.grad_norm
        every, last = cfg.eval.online_knn_every, epoch + 1 == cfg.train.epochs
        knn_due = bool(every) and ((epoch + 1) % every == 0 or last)
        if rank == 0 and split_ref is not None and (knn_due or (probe is not None and last)):
            split = split or ray.get(split_ref)
            metrics.update(online_metrics(method, split, cfg, probe, device, knn_due))
        done = epoch + 1 - start_epoch
        eta = (time.perf_counter() - run_start) / done * (cfg.train.epochs - epoch - 1)
        knn = (f"  online kNN {100 * metrics['eval/online_knn_top1']:.2f}%"
               if "eval/online_knn_top1" in metrics else "")
        echo(f"[raysl] epoch {epoch + 1}/{cfg.train.epochs}  loss {metrics['train/loss']:.4f}  "
            f"lr {lr:.4g}  {images_per_s:.0f} img/s{knn}  ETA {duration(eta)}")
        tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)

        # [4] Checkpoint and report: rank 0 writes, every rank calls report (it is a barrier).
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                _save(d, method, optimizer, cfg, epoch, step, s)
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=ckpt)


def _save(d: str, method: SSLMethod, optimizer: torch.optim.Optimizer, cfg: Config,
          epoch: int, step: int, s: LoopSettings) -> None:
    state = {"epoch": epoch, "step": step, "config": cfg.to_dict(), "run_name": s.run_name,
             "mlflow_run_id": s.mlflow_run_id, "world_size": distributed.world_size()}
    save_checkpoint(d, method, method.exported_encoder(), optimizer, state)


T = TypeVar("T")


def _grouped(items: Iterable[T], n: int) -> Iterator[list[T]]:
    """Consecutive groups of ``n`` items (the micro-batches of one step).

    A short tail is dropped: every rank gets the same number of rows, so drops the same tail.
    """
    group: list[T] = []
    for item in items:
        group.append(item)
        if len(group) == n:
            yield group
            group = []


