"""The train loop: the Ray Train worker function, or the one worker of a run in this process.

It reads as Ray Train's examples do; what it asks of Ray Train goes through ``session.py``.
:func:`train_loop_per_worker` sets up (:func:`set_up`: the model, optimizer and online
evaluation, and the last checkpoint's state; then this worker's data shard), then per epoch runs
:func:`begin_epoch` (the method's own start-of-epoch work: DeepCluster clusters the training
set), :func:`train_epoch` (the optimizer steps over the shard) and :func:`report` (metrics and a
checkpoint). Beside it:

- ``state.py``: the checkpointed state (weights, optimizer, where training stands) and restore;
- ``watch.py``: online evaluation, the label-free monitors and what a collapse does;
- ``log.py``: the epoch's measurements and rank 0's progress lines and MLflow calls;
- ``step.py``: one optimizer step, plain torch; ``optim.py``: the optimizers;
- ``session.py``: who runs the loop, a Ray Train worker group or the command's own process
  (``train.local_mode``); ``in_process.py``: the latter's checkpoints, committed to disk.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import ray
import ray.train
import ray.train.torch
import torch
from torch import nn

from raysl import distributed
from raysl.config import Config
from raysl.console import say
from raysl.eval.splits import LabeledSplit
from raysl.methods.base import (
    EpochData,
    InitWeights,
    Progress,
    SSLMethod,
    TeacherWeights,
    build_method,
)
from raysl.schedules import set_lr, warmup_cosine
from raysl.tracking.buffered import BufferedTracker
from raysl.train import in_process
from raysl.train.log import EpochStats, RunLog
from raysl.train.optim import build_optimizer, set_weight_decay
from raysl.train.permanent import PERMANENT_ERRORS, leave_note, raise_noted
from raysl.train.session import InProcessSession, Session, WorkerGroupSession
from raysl.train.state import TrainState
from raysl.train.step import autocast_dtype, forward_seed, in_layout, memory_format, train_step
from raysl.train.watch import Watchers

# The trainer's dataset of un-augmented training images, for methods with reads_training_set.
WHOLE_IMAGES = "whole_images"
ERROR_FLUSH_S = 30.0  # a failing worker's wait for its buffered metrics (the run is ending)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Pretrain on this worker's shard; checkpoint and report every epoch.

    Args:
        loop_config: ``{"config": Config.to_dict(), "settings": LoopSettings.__dict__,
            "eval_split": ObjectRef of a LabeledSplit or None, "monitor_sample": ObjectRef of
            (N, H, W, C) uint8 images or None, "init_weights": ObjectRef of InitWeights or
            None, "teacher_weights": ObjectRef of TeacherWeights or None}`` (online kNN's
            split, the monitors' sample, model.init_from's weights, a distillation's teacher).
    """
    settings = LoopSettings(**loop_config["settings"])
    if settings.permanent_note:
        raise_noted(settings.permanent_note)  # an earlier attempt hit it: no point retrying
    try:
        _train(loop_config, settings, WorkerGroupSession())
    except PERMANENT_ERRORS as error:
        if settings.permanent_note:
            try:
                leave_note(settings.permanent_note, error)
            except Exception as unwritable:  # the run's own error matters more
                say(f"[raysl] WARNING: could not note {type(error).__name__} for restarted "
                    f"workers ({type(unwritable).__name__}: {unwritable})")
        raise


def train_in_process(loop_config: dict[str, Any], session: InProcessSession) -> None:
    """The same loop, as the one worker of a run trained in this process (``train.local_mode``).

    Errors are raised as they are (no worker group restarts); ``session`` keeps the last
    report's metrics and checkpoint.
    """
    _train(loop_config, LoopSettings(**loop_config["settings"]), session)


def _train(loop_config: dict[str, Any], settings: LoopSettings, session: Session) -> None:
    """:func:`train_loop_per_worker` itself."""
    # [1] The model (DDP-wrapped), optimizer, online evaluation, and the last checkpoint's state.
    w = set_up(Config.from_dict(loop_config["config"]), settings,
               loop_config.get("eval_split"), loop_config.get("monitor_sample"),
               loop_config.get("init_weights"), loop_config.get("teacher_weights"), session)
    # [2] This worker's equal share of the views (and of the whole images, for the methods
    # that read the training set between epochs).
    shard = session.dataset("train")
    whole = session.dataset(WHOLE_IMAGES) if w.state.method.reads_training_set else None
    finished = False
    try:
        for epoch in range(w.state.start_epoch, w.cfg.train.epochs):
            begin_epoch(w, epoch, whole)
            trained = train_epoch(w, epoch, shard)  # [3] the optimizer steps
            evaluated, collapses = w.watch.epoch_end(epoch)
            # [4] The epoch's metrics to MLflow and, with a checkpoint, to Ray Train.
            metrics = {**trained, **evaluated, **w.state.start_logs}
            w.log.epoch_end(epoch, w.state.start_epoch, metrics)
            report(w, metrics, last_epoch=epoch)
            w.watch.react_to_collapse(epoch, collapses)
        finished = True
    finally:
        w.log.flush(w.cfg.tracking.flush_timeout_s if finished else ERROR_FLUSH_S)


def set_up(cfg: Config, s: LoopSettings, split_ref: ray.ObjectRef[LabeledSplit] | None,
           monitor_ref: ray.ObjectRef[Any] | None = None,
           init_ref: ray.ObjectRef[InitWeights] | None = None,
           teacher_ref: ray.ObjectRef[TeacherWeights] | None = None,
           session: Session | None = None) -> Worker:
    """The model (DDP-wrapped on its device), optimizer, online evaluation, last checkpoint.

    The model starts from ``init_ref``'s weights (``model.init_from``) when given; a
    checkpoint of the run itself, when there is one, replaces them.
    """
    session = session or WorkerGroupSession()
    torch.set_num_threads(s.threads_per_worker)
    torch.manual_seed(cfg.train.seed)  # same initial weights everywhere (DDP also broadcasts)
    rank, world = session.rank_and_world()
    # An elastic run's group may be smaller than train.num_workers: the same global batch,
    # shared by the workers there are. Checkpoints keep the run's config, not this group's.
    run_config, cfg = cfg.public_dict(), cfg.with_workers(world)
    method = build_method(cfg, ray.get(init_ref) if init_ref is not None else None,
                          ray.get(teacher_ref) if teacher_ref is not None else None)
    if cfg.train.sync_bn and world > 1:
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(method)  # type: ignore[no-untyped-call]
        method = cast(SSLMethod, synced)
    device = session.device()
    layout = memory_format(cfg.train.channels_last, device, cfg.model.is_vit)
    method = method.to(memory_format=layout)
    # Buffers are synced once at start, never in forward. Needed for correctness: SwAV's queue
    # differs per rank by design (each holds its own embeddings) and a sync would overwrite it
    # with rank 0's. The others (MoCo's queue, DINO's center) stay identical through collectives,
    # and broadcasting a 65536-key queue each step would cost more than the step. BatchNorm
    # running statistics are exported from rank 0.
    model = session.prepare(method)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        # The same averaging as DDP's own all-reduce, timed for the epoch's breakdown.
        model.register_comm_hook(None, distributed.timed_allreduce_hook)
    peak_lr = cfg.optim.peak_lr(cfg.batch_size_per_worker * world)
    optimizer = build_optimizer(model, cfg.optim, peak_lr, method.fixed_lr_parameters())
    amp = autocast_dtype(cfg.train.precision, device)
    log = RunLog(rank, BufferedTracker(s.tracking_uri, s.mlflow_run_id, active=rank == 0,
                                       warn=say), cfg.train.epochs, s.launched_at)
    watch = Watchers.set_up(cfg, method, device, rank, world, log, s.num_classes, split_ref,
                            monitor_ref)
    state = TrainState(method, optimizer,
                       torch.amp.GradScaler(device.type) if amp == torch.float16 else None,
                       watch.probe, log, rank, run_config, s.run_name, s.mlflow_run_id)
    resumed_from = _resume(state, s, cfg, world, session.recorded_checkpoint())
    if resumed_from is not None and isinstance(session, InProcessSession):
        # A run with nothing left to train reports nothing: its result is where it stands.
        session.checkpoint = ray.train.Checkpoint.from_directory(resumed_from)
    return Worker(cfg, s, rank, world, device, layout, model, amp, state, watch, log, session)


def _resume(state: TrainState, s: LoopSettings, cfg: Config, world: int,
            recorded: ray.train.Checkpoint | None) -> str | None:
    """Continue from the run's newest checkpoint, if it has one (see :func:`in_process.pick`).

    ``recorded``: the one Ray Train hands a worker group (None in process).

    Returns:
        The directory resumed from, or None.
    """
    if recorded is None:
        chosen = in_process.pick(None, s.run_dir, s.in_process)
        if chosen is not None:
            state.restore(chosen, cfg, world, s.steps_per_epoch)
        return chosen
    with recorded.as_directory() as d:
        chosen = in_process.pick(d, s.run_dir, s.in_process)
        if chosen is not None:
            state.restore(chosen, cfg, world, s.steps_per_epoch)
        return recorded.path if chosen == d else chosen


def begin_epoch(w: Worker, epoch: int, whole: Any) -> None:
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
            raise RuntimeError(f"{type(w.state.method).__name__} reads the training set but "
                               "does not declare reads_training_set")
        batches: Iterable[dict[str, torch.Tensor]] = whole.iter_torch_batches(
            batch_size=w.cfg.eval.batch_size, device=w.device, prefetch_batches=2)
        return batches

    # The in-model randomness (masks, corruption, drop path) of an epoch depends only on the
    # seed, the rank and the step it starts at: a resumed run draws what an uninterrupted one
    # would have drawn.
    torch.manual_seed(forward_seed(w.cfg.train.seed, w.rank, w.state.step))
    start = w.state.method.on_epoch_start(EpochData(epoch, images, w.cfg.train.seed))
    for parameter in start.reset:
        w.state.optimizer.state.pop(parameter, None)
    if start.summary:
        w.log.say(f"[raysl] epoch {epoch + 1}/{w.cfg.train.epochs}: {start.summary}")
    w.log.histograms(epoch, start.histograms)
    w.state.keep_start_logs(epoch, start.logs)


def train_epoch(w: Worker, epoch: int, shard: Any) -> dict[str, float]:
    """One pass over this worker's shard: schedule, step, probe, in groups of micro-batches.

    Returns:
        The epoch's ``train/*`` metrics.

    Raises:
        RuntimeError: no full batch reached this worker.
    """
    cfg, state, steps_per_epoch = w.cfg, w.state, w.settings.steps_per_epoch
    accum, num_views = cfg.train.grad_accumulation, len(cfg.view_sizes)
    warmup_steps = round(cfg.optim.warmup_epochs * steps_per_epoch)
    batches = _grouped(shard.iter_torch_batches(
        batch_size=cfg.micro_batch_size, drop_last=True, device=w.device,
        prefetch_batches=2 * accum, local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
        pin_memory=w.device.type == "cuda"), accum)
    done = state.steps_trained(epoch)  # steps a checkpoint took
    if done:  # read past them, untrained, so the epoch has an uninterrupted run's steps
        w.log.say(f"[raysl] epoch {epoch + 1}: reading past the {done} step(s) of data its "
                  "checkpoint had trained on")
        for _ in itertools.islice(batches, done):
            pass
    stats = EpochStats()  # the epoch's clock (and its progress lines') starts after any skip
    w.log.line_at = stats.started
    every = cfg.train.checkpoint_every_steps
    for micro_batches in stats.timed(batches):
        lr = warmup_cosine(state.step, w.total_steps, warmup_steps, w.peak_lr,
                           w.peak_lr * cfg.optim.final_lr_ratio)
        set_lr(state.optimizer, lr)
        progress = Progress(state.step, w.total_steps, steps_per_epoch)
        set_weight_decay(state.optimizer, cfg.optim.weight_decay_at(progress.fraction))
        views = [[in_layout(mb[f"view{i}"], w.layout) for i in range(num_views)]
                 for mb in micro_batches]
        targets = [{c: mb[c] for c in state.method.target_columns} for mb in micro_batches]
        result = train_step(w.model, views, state.optimizer, progress, w.amp, state.scaler,
                            cfg.optim.clip_grad, cfg.optim.clip_mode == "per_param",
                            targets if state.method.target_columns else ())
        result.logs.update(w.watch.after_step(micro_batches))
        stats.add(result, lr)
        w.log.first_step(epoch)
        state.step += 1
        in_epoch = done + len(stats.losses)
        if every and state.step % every == 0 and in_epoch < steps_per_epoch:
            # Reported at a fractional epoch with the epoch's loss so far; nothing is logged to
            # MLflow (the epoch's metrics come at its end).
            report(w, {"epoch": epoch + in_epoch / steps_per_epoch, "step": state.step,
                       "train/loss": stats.loss}, last_epoch=epoch - 1, epoch_steps=in_epoch)
        w.log.progress(epoch, in_epoch, steps_per_epoch, result.loss)
    if not stats.losses:
        raise RuntimeError(f"epoch {epoch + 1}: no full batch of {cfg.batch_size_per_worker} "
                           "views reached this worker; lower data.batch_size_global or add "
                           "images")
    stats.stop()
    return stats.metrics(epoch, w.batch_global, w.world, cfg.optim,
                         Progress(state.step, w.total_steps, steps_per_epoch).fraction)


def report(w: Worker, metrics: dict[str, float], last_epoch: int, epoch_steps: int = 0) -> None:
    """Rank 0 writes a checkpoint; every rank reports it to Ray Train (a barrier).

    Args:
        w: the worker.
        metrics: what Ray Train records with the checkpoint (``epoch`` among them).
        last_epoch: the last whole epoch done, from 0 (-1: none yet).
        epoch_steps: steps of the next epoch done too (0 at an epoch's end).
    """
    if isinstance(w.session, InProcessSession):  # no Ray Train to persist it: commit it here
        pending = in_process.pending_directory(w.settings.run_dir)
        try:
            w.state.checkpoint(str(pending), last_epoch, epoch_steps)
            committed = in_process.commit(pending, w.cfg.train.keep_checkpoints)
        finally:
            shutil.rmtree(pending, ignore_errors=True)  # gone already once committed
        w.session.report(metrics, ray.train.Checkpoint.from_directory(str(committed)))
        return
    with tempfile.TemporaryDirectory() as d:
        w.session.report(metrics, w.state.checkpoint(d, last_epoch, epoch_steps))


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
    # The run's checkpoint directory when it is a local path ("" = remote storage): where a
    # run trained in process commits its checkpoints, and where any run looks for them.
    run_dir: str = ""
    in_process: bool = False  # trained in the command's process (train.local_mode)


@dataclass
class Worker:
    """What one train worker holds from set-up to the last epoch."""

    cfg: Config  # this worker group's (an elastic run's may have fewer workers)
    settings: LoopSettings
    rank: int
    world: int
    device: torch.device
    layout: torch.memory_format  # of the views and 4-D weights (channels-last or contiguous)
    model: nn.Module  # the method, DDP-wrapped: what the step calls
    amp: torch.dtype | None
    state: TrainState  # the method, optimizer, scaler and step: what a checkpoint keeps
    watch: Watchers  # online probe, kNN and monitors
    log: RunLog  # rank 0's lines and MLflow calls
    session: Session  # who runs the loop: a worker group, or this process

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
