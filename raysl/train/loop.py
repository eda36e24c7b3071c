"""The Ray Train worker function: the only training code that calls ``ray.train``.

It reads as its steps: :func:`set_up` (model, optimizer, the last checkpoint), then per epoch
:func:`begin_epoch` (the method's own start-of-epoch work: DeepCluster clusters the training set),
:func:`train_epoch` (the optimizer steps over this worker's shard), :func:`epoch_metrics` (what
the epoch measured, plus online evaluation), :func:`report` (log, checkpoint, tell Ray) and
:func:`react_to_collapse` (warn, or stop, when the label-free monitors saw a collapse).
"""

from __future__ import annotations

import itertools
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import ray
import ray.train
import ray.train.torch
import torch
from torch import nn

from raysl import distributed, registry
from raysl.checkpoint import load_extra, restore, save_checkpoint
from raysl.config import Config
from raysl.console import duration, say
from raysl.eval.monitors import Collapse, RepresentationCollapsed
from raysl.eval.online import LabelFreeMonitor, OnlineProbe, online_metrics
from raysl.eval.plots import sizes_png
from raysl.eval.splits import LabeledSplit
from raysl.methods.base import (
    WORLD_KEY,
    EpochData,
    EpochStart,
    Progress,
    SSLMethod,
    build_method,
    gather_worker_state,
    take_worker_state,
)
from raysl.schedules import set_lr, warmup_cosine
from raysl.tracking.mlflow import BufferedTracker, TrackingCall
from raysl.train.optim import build_optimizer, set_weight_decay
from raysl.train.permanent import PERMANENT_ERRORS, leave_note, raise_noted
from raysl.train.step import (
    StepResult,
    autocast_dtype,
    forward_seed,
    memory_format,
    train_step,
)

PROGRESS_EVERY_S = 30.0  # a progress line inside long epochs
# The trainer's dataset of un-augmented training images, for methods with reads_training_set.
WHOLE_IMAGES = "whole_images"
WORKERS_FILE = "workers"  # checkpoint extra: every worker's own state (SwAV's queues)
TRACKING_FILE = "tracking"  # checkpoint extra: rank 0's tracking calls not yet sent
TRACKING_SETTLE_S = 0.5  # a checkpoint waits this long at most for queued calls to go out
ERROR_FLUSH_S = 30.0  # a failing worker's wait for its buffered metrics (the run is ending)


@dataclass(frozen=True)
class LoopSettings:
    """What the driver works out for the workers (beyond the config)."""

    steps_per_epoch: int
    threads_per_worker: int
    tracking_uri: str
    mlflow_run_id: str
    run_name: str
    num_classes: int = 0  # labels of the training data, for the online probe (0 = unlabeled)
    launched_at: float = 0.0  # wall-clock time the command started (time.time()); 0 = unknown
    # Where a worker notes an error no restart can fix (train/permanent.py); "" = nowhere.
    permanent_note: str = ""


@dataclass
class Worker:
    """What one train worker holds from set-up to the last epoch."""

    cfg: Config
    settings: LoopSettings
    rank: int
    world: int
    device: torch.device
    layout: torch.memory_format  # of the views and 4-D weights (channels-last or contiguous)
    method: SSLMethod  # the module itself
    model: nn.Module  # the same, DDP-wrapped: what the step calls
    optimizer: torch.optim.Optimizer
    amp: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    tracker: BufferedTracker  # never blocks training: a thread sends, retrying outages
    probe: OnlineProbe | None
    split_ref: ray.ObjectRef[LabeledSplit] | None  # the labeled split of online evaluation
    monitor: LabelFreeMonitor | None = None  # RankMe / LiDAR on a fixed sample (no labels)
    collapse_warned: bool = False
    start_epoch: int = 0
    resumed_epoch_steps: int = 0  # steps of start_epoch its checkpoint had taken (mid-epoch)
    # The current epoch's start-of-epoch metrics (DeepCluster's clustering), logged with the
    # epoch's end; a checkpoint inside the epoch keeps them, since a resume there does not redo
    # that work.
    start_logs: dict[str, float] = field(default_factory=dict)
    run_config: dict[str, Any] = field(default_factory=dict)  # as given: what checkpoints keep
    step: int = 0  # optimizer steps done, over all epochs
    split: LabeledSplit | None = None  # fetched by rank 0 at its first online evaluation
    started: float = field(default_factory=time.perf_counter)

    @property
    def batch_global(self) -> int:
        """Images per step over the workers that actually run (elastic restarts may differ)."""
        return self.cfg.batch_size_per_worker * self.world

    @property
    def peak_lr(self) -> float:
        """The linear scaling rule on the global batch that actually runs."""
        return self.cfg.optim.peak_lr(self.batch_global)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run."""
        return self.cfg.train.epochs * self.settings.steps_per_epoch

    def say(self, line: str) -> None:
        """A progress line, from rank 0 only."""
        if self.rank == 0:
            say(line)


@dataclass
class EpochStats:
    """What one epoch's steps measured on this worker."""

    losses: list[float] = field(default_factory=list)
    extras: dict[str, list[float]] = field(default_factory=dict)  # the method's own logs
    last: StepResult | None = None
    lr: float = 0.0
    seconds: float = 0.0
    data_wait_s: float = 0.0  # time spent waiting for the next batch of views
    comm_s: float = 0.0  # time in collectives (gradient all-reduce, gathers); 0 on one worker

    def breakdown(self) -> dict[str, float]:
        """Where the epoch's time went, as fractions: data wait, communication, compute.

        Compute is the rest (forward, backward, update, probe). DDP's gradient all-reduce
        overlaps backward, so where it does, the overlap is counted as communication.
        """
        total = max(self.seconds, 1e-9)
        data, comm = self.data_wait_s / total, min(self.comm_s / total, 1.0)
        return {"train/data_wait_fraction": data, "train/comm_fraction": comm,
                "train/compute_fraction": max(0.0, 1.0 - data - comm)}


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Pretrain on this worker's shard; checkpoint and report every epoch.

    Args:
        loop_config: ``{"config": Config.to_dict(), "settings": LoopSettings.__dict__,
            "eval_split": ObjectRef of a LabeledSplit or None, "monitor_sample": ObjectRef of
            (N, H, W, C) uint8 images or None}`` (online kNN's split, the monitors' sample).
    """
    settings = LoopSettings(**loop_config["settings"])
    if settings.permanent_note:
        raise_noted(settings.permanent_note)  # an earlier attempt hit it: no point retrying
    try:
        _train(loop_config, settings)
    except PERMANENT_ERRORS as error:
        if settings.permanent_note:
            try:
                leave_note(settings.permanent_note, error)
            except Exception as unwritable:  # the run's own error matters more
                say(f"[raysl] WARNING: could not note {type(error).__name__} for restarted "
                    f"workers ({type(unwritable).__name__}: {unwritable})")
        raise


def _train(loop_config: dict[str, Any], settings: LoopSettings) -> None:
    """:func:`train_loop_per_worker` itself."""
    w = set_up(Config.from_dict(loop_config["config"]), settings,
               loop_config.get("eval_split"), loop_config.get("monitor_sample"))
    shard = ray.train.get_dataset_shard("train")  # this worker's equal share of the views
    whole = ray.train.get_dataset_shard(WHOLE_IMAGES) if w.method.reads_training_set else None
    finished = False
    try:
        for epoch in range(w.start_epoch, w.cfg.train.epochs):
            start = begin_epoch(w, epoch, whole)
            if start.logs or epoch != w.start_epoch or not w.resumed_epoch_steps:
                w.start_logs = dict(start.logs)  # else: the checkpoint's, from this epoch's start
            stats = train_epoch(w, epoch, shard)
            metrics, collapses = epoch_metrics(w, epoch, stats)
            report(w, epoch, {**metrics, **w.start_logs})
            react_to_collapse(w, epoch, collapses)
        finished = True
    finally:
        flush_tracking(w, w.cfg.tracking.flush_timeout_s if finished else ERROR_FLUSH_S)


def flush_tracking(w: Worker, timeout: float) -> None:
    """Wait (up to ``timeout`` s) for the buffered metrics to reach the tracking server."""
    if not w.tracker.pending:
        return
    w.say(f"[raysl] sending {w.tracker.pending} buffered tracking call(s) before finishing")
    unsent = w.tracker.flush(timeout)
    if unsent:
        w.say(f"[raysl] WARNING: the tracking server took none of the last {unsent} call(s) "
              f"in {timeout:.0f}s (tracking.flush_timeout_s); their metrics are lost")


def set_up(cfg: Config, s: LoopSettings, split_ref: ray.ObjectRef[LabeledSplit] | None,
           monitor_ref: ray.ObjectRef[Any] | None = None) -> Worker:
    """The model (DDP-wrapped on its device), optimizer, and state of the last checkpoint if any."""
    torch.set_num_threads(s.threads_per_worker)
    torch.manual_seed(cfg.train.seed)  # same initial weights everywhere (DDP also broadcasts)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # An elastic run's group may be smaller than train.num_workers: the same global batch,
    # shared by the workers there are. Checkpoints keep the run's config, not this group's.
    run_config, cfg = cfg.public_dict(), cfg.with_workers(world)
    method = build_method(cfg)
    if cfg.train.sync_bn and world > 1:
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(method)  # type: ignore[no-untyped-call]
        method = cast(SSLMethod, synced)
    device = ray.train.torch.get_device()
    layout = memory_format(cfg.train.channels_last, device, cfg.model.is_vit)
    method = method.to(memory_format=layout)
    # Buffers are synced once at start, never in forward. Needed for correctness: SwAV's queue
    # differs per rank by design (each holds its own embeddings) and a sync would overwrite it
    # with rank 0's. The others (MoCo's queue, DINO's center) stay identical through collectives,
    # and broadcasting a 65536-key queue each step would cost more than the step. BatchNorm
    # running statistics are exported from rank 0.
    model = ray.train.torch.prepare_model(
        method, parallel_strategy_kwargs={"forward_sync_buffers": False})
    if isinstance(model, nn.parallel.DistributedDataParallel):
        # The same averaging as DDP's own all-reduce, timed for the epoch's breakdown.
        model.register_comm_hook(None, distributed.timed_allreduce_hook)
    peak_lr = cfg.optim.peak_lr(cfg.batch_size_per_worker * world)
    optimizer = build_optimizer(model, cfg.optim, peak_lr, method.fixed_lr_parameters())
    amp = autocast_dtype(cfg.train.precision, device)
    probe = None
    if cfg.eval.online_probe:  # after prepare_model: hooks on the module DDP calls
        probe = OnlineProbe(method, method.encoder, method.encoder.num_features, s.num_classes,
                            cfg.eval.online_probe_lr).to(device)
    w = Worker(cfg, s, rank, world, device, layout, method, model, optimizer, amp,
               torch.amp.GradScaler(device.type) if amp == torch.float16 else None,
               BufferedTracker(s.tracking_uri, s.mlflow_run_id, active=rank == 0, warn=say),
               probe, split_ref, run_config=run_config)
    if monitor_ref is not None:
        w.monitor = LabelFreeMonitor(ray.get(monitor_ref), cfg, rank, world)
    if (checkpoint := ray.train.get_checkpoint()) is not None:
        with checkpoint.as_directory() as d:
            state = restore(d, method, optimizer)
            _restore_extras(d, w)
        w.start_epoch, w.step = state["epoch"] + 1, state["step"]
        w.resumed_epoch_steps = state.get("epoch_steps", 0)  # a mid-epoch checkpoint's
        w.start_logs = dict(state.get("start_logs", {}))
        if w.resumed_epoch_steps >= s.steps_per_epoch:  # data or batch changed since: it holds
            w.start_epoch, w.resumed_epoch_steps = w.start_epoch + 1, 0  # this run's whole epoch
        within = (f", after {w.resumed_epoch_steps} of its steps" if w.resumed_epoch_steps
                  else "")
        w.say(f"[raysl] resuming {s.run_name} at epoch {w.start_epoch + 1}{within} "
              f"(step {w.step})")
        w.tracker.log_metrics({"time/resumed_at_step": w.step}, step=w.start_epoch)
        if state.get("world_size", world) != world:
            w.say(f"[raysl] the checkpoint's run had {state['world_size']} worker(s), this one "
                  f"has {world}: data.batch_size_global, and so the learning-rate schedule, "
                  f"stay the same ({cfg.batch_size_per_worker} images per worker now)")
    return w


def _extras(w: Worker) -> dict[str, dict[str, Any]]:
    """Training state beyond the model and optimizer that a checkpoint keeps (by file name)."""
    extras: dict[str, dict[str, Any]] = {}
    if w.probe is not None:
        extras["probe"] = w.probe.training_state()
    if w.scaler is not None:
        extras["scaler"] = w.scaler.state_dict()
    # The epoch's metrics were queued just now: a server that is up takes them in this wait.
    w.tracker.flush(TRACKING_SETTLE_S)
    if unsent := w.tracker.unsent():  # the server is away: a restarted rank 0 sends them
        extras[TRACKING_FILE] = {"calls": [call.state() for call in unsent]}
    return extras


def _restore_extras(directory: str, w: Worker) -> None:
    """Load what :func:`_extras` and the workers' own state saved, where this run has it."""
    if w.probe is not None and (probe := load_extra(directory, "probe")) is not None:
        w.probe.load_training_state(probe)
    if w.scaler is not None and (scaler := load_extra(directory, "scaler")) is not None:
        w.scaler.load_state_dict(scaler)
    if w.rank == 0 and (kept := load_extra(directory, TRACKING_FILE)):
        w.say(f"[raysl] {len(kept['calls'])} tracking call(s) the tracking server had not "
              "received when the checkpoint was written: sending them again")
        w.tracker.resend([TrackingCall.from_state(call) for call in kept["calls"]])
    workers = load_extra(directory, WORKERS_FILE)
    if workers and not take_worker_state(w.method, workers, w.rank, w.world):
        names = ", ".join(sorted(k for k in workers if k != WORLD_KEY))
        w.say(f"[raysl] the checkpoint's per-worker state ({names}; "
              f"{int(workers[WORLD_KEY])} worker(s), this run {w.world}) does not fit this "
              f"run: not restored, {w.cfg.method.name} rebuilds it as it trains")


def begin_epoch(w: Worker, epoch: int, whole: Any) -> EpochStart:
    """The method's start-of-epoch work (DeepCluster's clustering), then what it asks for.

    Re-initialised parameters lose their optimizer state (a fresh classifier starts without
    the old one's momentum); histograms are plotted into the MLflow run.

    Args:
        w: the worker.
        epoch: the epoch about to start, from 0.
        whole: this worker's shard of the un-augmented training images, or None.
    """
    def images() -> Iterable[dict[str, torch.Tensor]]:
        if whole is None:
            raise RuntimeError(f"{type(w.method).__name__} reads the training set but does not "
                               "declare reads_training_set")
        batches: Iterable[dict[str, torch.Tensor]] = whole.iter_torch_batches(
            batch_size=w.cfg.eval.batch_size, device=w.device, prefetch_batches=2)
        return batches

    # The in-model randomness (masks, corruption, drop path) of an epoch depends only on the
    # seed, the rank and the step it starts at: a resumed run draws what an uninterrupted one
    # would have drawn.
    torch.manual_seed(forward_seed(w.cfg.train.seed, w.rank, w.step))
    start = w.method.on_epoch_start(EpochData(epoch, images, w.cfg.train.seed))
    for parameter in start.reset:
        w.optimizer.state.pop(parameter, None)
    if start.summary:
        w.say(f"[raysl] epoch {epoch + 1}/{w.cfg.train.epochs}: {start.summary}")
    if start.histograms and w.rank == 0:
        w.tracker.log_files({
            f"clusters/{name}_epoch_{epoch + 1:03d}.png": sizes_png(
                counts.cpu().numpy(), f"{name.replace('_', ' ')}, epoch {epoch + 1}")
            for name, counts in start.histograms.items()})
    return start


def train_epoch(w: Worker, epoch: int, shard: Any) -> EpochStats:
    """One pass over this worker's shard: schedule, step, probe, in groups of micro-batches.

    Raises:
        RuntimeError: no full batch reached this worker.
    """
    cfg, stats = w.cfg, EpochStats()
    accum, num_views = cfg.train.grad_accumulation, len(cfg.view_sizes)
    warmup_steps = round(cfg.optim.warmup_epochs * w.settings.steps_per_epoch)
    batches = _grouped(shard.iter_torch_batches(
        batch_size=cfg.micro_batch_size, drop_last=True, device=w.device,
        prefetch_batches=2 * accum, local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
        pin_memory=w.device.type == "cuda"), accum)
    done = w.resumed_epoch_steps if epoch == w.start_epoch else 0  # steps a checkpoint took
    if done:  # read past them, untrained, so the epoch has an uninterrupted run's steps
        w.say(f"[raysl] epoch {epoch + 1}: reading past the {done} step(s) of data its "
              "checkpoint had trained on")
        for _ in itertools.islice(batches, done):
            pass
    t0 = last_print = time.perf_counter()  # the epoch's clock starts after any skipped data
    comm0 = distributed.comm_seconds()
    every = cfg.train.checkpoint_every_steps
    for micro_batches in _timed(batches, stats):
        stats.lr = warmup_cosine(w.step, w.total_steps, warmup_steps, w.peak_lr,
                                 w.peak_lr * cfg.optim.final_lr_ratio)
        set_lr(w.optimizer, stats.lr)
        progress = Progress(w.step, w.total_steps, w.settings.steps_per_epoch)
        set_weight_decay(w.optimizer, cfg.optim.weight_decay_at(progress.fraction))
        views = [[_in_layout(mb[f"view{i}"], w.layout) for i in range(num_views)]
                 for mb in micro_batches]
        targets = [{c: mb[c] for c in w.method.target_columns} for mb in micro_batches]
        result = train_step(w.model, views, w.optimizer, progress, w.amp, w.scaler,
                            cfg.optim.clip_grad, cfg.optim.clip_mode == "per_param",
                            targets if w.method.target_columns else ())
        if w.probe is not None:
            result.logs.update(w.probe.step([mb["label"] for mb in micro_batches]))
        stats.losses.append(result.loss)
        for k, v in result.logs.items():
            stats.extras.setdefault(k, []).append(v)
        stats.last = result
        if len(stats.losses) == 1 and epoch == w.start_epoch:
            _first_step(w)
        w.step += 1
        in_epoch = done + len(stats.losses)
        if every and w.step % every == 0 and in_epoch < w.settings.steps_per_epoch:
            checkpoint_mid_epoch(w, epoch, in_epoch, stats.losses)
        if time.perf_counter() - last_print > PROGRESS_EVERY_S:
            last_print = time.perf_counter()
            w.say(f"[raysl] epoch {epoch + 1}/{cfg.train.epochs} step {in_epoch}/"
                  f"{w.settings.steps_per_epoch} loss {result.loss:.4f}")
    if not stats.losses:
        raise RuntimeError(f"epoch {epoch + 1}: no full batch of {cfg.batch_size_per_worker} "
                           "views reached this worker; lower data.batch_size_global or add "
                           "images")
    stats.seconds = time.perf_counter() - t0
    stats.comm_s = distributed.comm_seconds() - comm0
    return stats


def _in_layout(view: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """An image batch (B, C, S, S) in the model's memory layout.

    Jigsaw tiles (B, T, C, t, t) are only made contiguous: channels-last is a 4-D layout.
    """
    if view.ndim != 4:
        return view.contiguous()
    return view.contiguous(memory_format=layout)


def _first_step(w: Worker) -> None:
    """Log how long the command took to reach its first optimizer step (start-up cost)."""
    if not w.settings.launched_at:
        return
    seconds = time.time() - w.settings.launched_at
    w.say(f"[raysl] first step {seconds:.1f}s after the command started")
    w.tracker.log_metrics({"time/first_step_s": seconds}, step=w.start_epoch)


def epoch_metrics(w: Worker, epoch: int, stats: EpochStats
                  ) -> tuple[dict[str, float], list[Collapse]]:
    """The epoch's metrics (rank 0's), with monitors and online kNN / probe accuracy when due.

    Returns:
        The metrics, and the collapses the label-free monitors saw (the same on every rank).
    """
    cfg = w.cfg
    metrics = {"train/loss": sum(stats.losses) / len(stats.losses), "train/lr": stats.lr,
               "train/images_per_s": len(stats.losses) * w.batch_global / stats.seconds,
               "train/epoch_s": stats.seconds, **stats.breakdown(),
               "train/step_s": stats.seconds / len(stats.losses),
               "train/workers": w.world,  # an elastic run's group size may change
               **{f"train/{k}": sum(v) / len(v) for k, v in stats.extras.items()},
               "epoch": epoch + 1}
    if cfg.optim.weight_decay_schedule != "constant":
        fraction = Progress(w.step, w.total_steps, w.settings.steps_per_epoch).fraction
        metrics["train/weight_decay"] = cfg.optim.weight_decay_at(fraction)
    if cfg.optim.clip_grad > 0 and stats.last is not None:
        metrics["train/grad_norm"] = stats.last.grad_norm
    last = epoch + 1 == cfg.train.epochs
    collapses: list[Collapse] = []
    if w.monitor is not None and _due(epoch, cfg.eval.monitor_every, last):
        started = time.perf_counter()
        values, collapses = w.monitor.measure(w.method, w.device)
        metrics.update({**values, "time/monitors_s": time.perf_counter() - started})
    knn_due = _due(epoch, cfg.eval.online_knn_every, last)
    if w.rank == 0 and w.split_ref is not None and (knn_due or (w.probe is not None and last)):
        w.split = w.split or ray.get(w.split_ref)
        metrics.update(online_metrics(w.method, w.split, cfg, w.probe, w.device, knn_due))
    return metrics, collapses


def _due(epoch: int, every: int, last: bool) -> bool:
    """Whether something run every ``every`` epochs (and at the last; 0 = never) is due."""
    return bool(every) and ((epoch + 1) % every == 0 or last)


def report(w: Worker, epoch: int, metrics: dict[str, float]) -> None:
    """Print the epoch line, log to MLflow, checkpoint, and report to Ray Train.

    Rank 0 writes the checkpoint; every rank calls ``ray.train.report`` (it is a barrier).
    """
    epochs = w.cfg.train.epochs
    eta = (time.perf_counter() - w.started) / (epoch + 1 - w.start_epoch) * (epochs - epoch - 1)
    knn = (f"  online kNN {100 * metrics['eval/online_knn_top1']:.2f}%"
           if "eval/online_knn_top1" in metrics else "")
    if "eval/rankme" in metrics:
        knn += f"  RankMe {metrics['eval/rankme']:.1f}"
    if "eval/lidar" in metrics:
        knn += f"  LiDAR {metrics['eval/lidar']:.1f}"
    w.say(f"[raysl] epoch {epoch + 1}/{epochs}  loss {metrics['train/loss']:.4f}  "
          f"lr {metrics['train/lr']:.4g}  {metrics['train/images_per_s']:.0f} img/s  "
          f"time: data {100 * metrics['train/data_wait_fraction']:.0f}% "
          f"comm {100 * metrics['train/comm_fraction']:.0f}% "
          f"compute {100 * metrics['train/compute_fraction']:.0f}%{knn}  "
          f"ETA {duration(eta)}")
    w.tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch + 1)
    checkpoint_and_report(w, epoch, 0, metrics)


def checkpoint_mid_epoch(w: Worker, epoch: int, epoch_steps: int, losses: list[float]) -> None:
    """A checkpoint after ``epoch_steps`` steps of ``epoch`` (``train.checkpoint_every_steps``).

    Reported to Ray Train at a fractional epoch with the epoch's loss so far; nothing is logged
    to MLflow (the epoch's metrics come at its end).
    """
    fraction = epoch_steps / w.settings.steps_per_epoch
    checkpoint_and_report(w, epoch - 1, epoch_steps, {
        "epoch": epoch + fraction, "step": w.step, "train/loss": sum(losses) / len(losses)})


def checkpoint_and_report(w: Worker, last_epoch: int, epoch_steps: int,
                          metrics: dict[str, float]) -> None:
    """Rank 0 writes a checkpoint; every rank reports it to Ray Train (a barrier).

    Args:
        w: the worker.
        last_epoch: the last whole epoch done, from 0 (-1: none yet).
        epoch_steps: steps of the next epoch done too (0 at an epoch's end).
        metrics: what Ray Train records with the checkpoint (``epoch`` among them).
    """
    workers = gather_worker_state(w.method)  # a collective: SwAV's per-worker queues
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if w.rank == 0:
            state = {"epoch": last_epoch, "epoch_steps": epoch_steps, "step": w.step,
                     "config": w.run_config,
                     "start_logs": w.start_logs if epoch_steps else {},
                     "run_name": w.settings.run_name,
                     "mlflow_run_id": w.settings.mlflow_run_id,
                     "world_size": distributed.world_size()}
            save_checkpoint(d, w.method, w.method.exported_encoder(), w.optimizer, state,
                            {**_extras(w), **({WORKERS_FILE: workers} if workers else {})})
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=checkpoint)


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


def _timed(items: Iterable[T], stats: EpochStats,
           clock: Callable[[], float] = time.perf_counter) -> Iterator[T]:
    """``items``, adding the time spent waiting for each one to ``stats.data_wait_s``."""
    it = iter(items)
    while True:
        t0 = clock()
        try:
            item = next(it)
        except StopIteration:
            return
        stats.data_wait_s += clock() - t0
        yield item


def react_to_collapse(w: Worker, epoch: int, collapses: list[Collapse]) -> None:
    """Warn once (and tag the MLflow run) about a collapse seen after warm-up; or stop the run.

    Raises:
        RepresentationCollapsed: on every rank at once (the monitors' values are gathered, so
            every rank sees the same collapse), with ``train.stop_on_collapse``.
    """
    cfg = w.cfg
    if not collapses or epoch + 1 < max(1, math.ceil(cfg.optim.warmup_epochs)):
        return  # during warm-up a representation may still be finding its feet
    method = registry.get("method", cfg.method.name)
    message = (f"epoch {epoch + 1}: {'; '.join(c.describe() for c in collapses)}. For "
               f"{cfg.method.name} this usually means {method.collapse_hint}")
    if cfg.train.stop_on_collapse:
        raise RepresentationCollapsed(f"{message} (stopped: train.stop_on_collapse)")
    if not w.collapse_warned:
        w.collapse_warned = True
        w.say(f"[raysl] WARNING: {message}; train.stop_on_collapse=true ends such runs early")
        w.tracker.set_tags({"raysl.collapse": message})
