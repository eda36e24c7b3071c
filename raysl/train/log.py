"""What a train worker measures of an epoch, and what rank 0 tells of it.

:class:`EpochStats` collects one epoch's steps on this worker (losses, the method's logs, time
waiting for data and in collectives) and turns them into the ``train/*`` metrics.
:class:`RunLog` is the loop's one voice: on rank 0 it prints the ``[raysl]`` lines (first step,
progress inside long epochs, the epoch line) and queues MLflow calls on a
:class:`~raysl.tracking.buffered.BufferedTracker`, whose thread sends them, so training never
waits for the server; on the other ranks both do nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from torch import Tensor

from raysl import distributed
from raysl.config import OptimConfig
from raysl.console import duration, say
from raysl.eval.plots import sizes_png
from raysl.tracking.buffered import BufferedTracker
from raysl.train.step import StepResult

PROGRESS_EVERY_S = 30.0  # a progress line inside long epochs

T = TypeVar("T")


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
    # The epoch's clock and communication counter start when its stats are made.
    started: float = field(default_factory=time.perf_counter)
    comm_at_start: float = field(default_factory=distributed.comm_seconds)

    def add(self, result: StepResult, lr: float) -> None:
        """One optimizer step's loss and logs, at learning rate ``lr``."""
        self.losses.append(result.loss)
        for k, v in result.logs.items():
            self.extras.setdefault(k, []).append(v)
        self.last, self.lr = result, lr

    def timed(self, items: Iterable[T],
              clock: Callable[[], float] = time.perf_counter) -> Iterator[T]:
        """``items``, adding the time spent waiting for each one to ``data_wait_s``."""
        it = iter(items)
        while True:
            t0 = clock()
            try:
                item = next(it)
            except StopIteration:
                return
            self.data_wait_s += clock() - t0
            yield item

    @property
    def loss(self) -> float:
        """The mean loss of the steps so far."""
        return sum(self.losses) / len(self.losses)

    def stop(self) -> None:
        """The epoch's steps are done: its wall time and its time in collectives."""
        self.seconds = time.perf_counter() - self.started
        self.comm_s = distributed.comm_seconds() - self.comm_at_start

    def breakdown(self) -> dict[str, float]:
        """Where the epoch's time went, as fractions: data wait, communication, compute.

        Compute is the rest (forward, backward, update, probe). DDP's gradient all-reduce
        overlaps backward, so where it does, the overlap is counted as communication.
        """
        total = max(self.seconds, 1e-9)
        data, comm = self.data_wait_s / total, min(self.comm_s / total, 1.0)
        return {"train/data_wait_fraction": data, "train/comm_fraction": comm,
                "train/compute_fraction": max(0.0, 1.0 - data - comm)}

    def metrics(self, epoch: int, batch_global: int, world: int, optim: OptimConfig,
                fraction: float) -> dict[str, float]:
        """The epoch's ``train/*`` metrics (and ``epoch``, from 1); rank 0's are the run's.

        Args:
            epoch: the epoch, from 0.
            batch_global: images per step over all workers.
            world: the number of workers.
            optim: the optimizer's settings (weight-decay schedule, clipping).
            fraction: of training done after the epoch's last step.
        """
        steps = len(self.losses)
        out = {"train/loss": self.loss, "train/lr": self.lr,
                "train/images_per_s": steps * batch_global / self.seconds,
                "train/epoch_s": self.seconds, **self.breakdown(),
                "train/step_s": self.seconds / steps,
                "train/workers": world,  # an elastic run's group size may change
                **{f"train/{k}": sum(v) / len(v) for k, v in self.extras.items()},
                "epoch": epoch + 1}
        if optim.weight_decay_schedule != "constant":
            out["train/weight_decay"] = optim.weight_decay_at(fraction)
        if optim.clip_grad > 0 and self.last is not None:
            out["train/grad_norm"] = self.last.grad_norm
        return out


@dataclass
class RunLog:
    """Rank 0's progress lines and MLflow calls; nothing on the other ranks."""

    rank: int
    tracker: BufferedTracker  # never blocks training: a thread sends, retrying outages
    epochs: int  # train.epochs, for "epoch 3/10"
    launched_at: float = 0.0  # wall-clock time the command started (time.time()); 0 = unknown
    started: float = field(default_factory=time.perf_counter)
    line_at: float = 0.0  # when the last progress line was said, or the epoch's steps started
    first_step_told: bool = False

    def say(self, line: str) -> None:
        """A progress line, from rank 0 only."""
        if self.rank == 0:
            say(line)

    def first_step(self, epoch: int) -> None:
        """Once per worker group: how long the command took to reach its first optimizer step."""
        if self.first_step_told:
            return
        self.first_step_told = True
        if not self.launched_at:
            return
        seconds = time.time() - self.launched_at
        self.say(f"[raysl] first step {seconds:.1f}s after the command started")
        self.tracker.log_metrics({"time/first_step_s": seconds}, step=epoch)

    def progress(self, epoch: int, step: int, steps_per_epoch: int, loss: float) -> None:
        """A line every ``PROGRESS_EVERY_S`` inside an epoch (from :attr:`line_at`)."""
        if time.perf_counter() - self.line_at > PROGRESS_EVERY_S:
            self.line_at = time.perf_counter()
            self.say(f"[raysl] epoch {epoch + 1}/{self.epochs} step {step}/{steps_per_epoch} "
                     f"loss {loss:.4f}")

    def histograms(self, epoch: int, counts: dict[str, Tensor]) -> None:
        """Plot a start of epoch's histograms (cluster sizes) into the MLflow run."""
        if counts and self.rank == 0:
            self.tracker.log_files({
                f"clusters/{name}_epoch_{epoch + 1:03d}.png": sizes_png(
                    c.cpu().numpy(), f"{name.replace('_', ' ')}, epoch {epoch + 1}")
                for name, c in counts.items()})

    def epoch_end(self, epoch: int, first_epoch: int, metrics: dict[str, float]) -> None:
        """The epoch line, and the epoch's metrics to MLflow at step ``epoch + 1``.

        The line gives the loss, learning rate, throughput, where the time went, the online
        evaluation (when the epoch had it) and the ETA.

        Args:
            epoch: the epoch done, from 0.
            first_epoch: this worker group's first epoch (the ETA's clock started there).
            metrics: the epoch's metrics, ``epoch`` among them (not logged).
        """
        eta = (time.perf_counter() - self.started) / (epoch + 1 - first_epoch) * (
            self.epochs - epoch - 1)
        evaluated = (f"  online kNN {100 * metrics['eval/online_knn_top1']:.2f}%"
                     if "eval/online_knn_top1" in metrics else "")
        if "eval/rankme" in metrics:
            evaluated += f"  RankMe {metrics['eval/rankme']:.1f}"
        if "eval/lidar" in metrics:
            evaluated += f"  LiDAR {metrics['eval/lidar']:.1f}"
        self.say(f"[raysl] epoch {epoch + 1}/{self.epochs}  loss {metrics['train/loss']:.4f}  "
                 f"lr {metrics['train/lr']:.4g}  {metrics['train/images_per_s']:.0f} img/s  "
                 f"time: data {100 * metrics['train/data_wait_fraction']:.0f}% "
                 f"comm {100 * metrics['train/comm_fraction']:.0f}% "
                 f"compute {100 * metrics['train/compute_fraction']:.0f}%{evaluated}  "
                 f"ETA {duration(eta)}")
        self.tracker.log_metrics({k: v for k, v in metrics.items() if k != "epoch"},
                                 step=epoch + 1)

    def flush(self, timeout: float) -> None:
        """Wait (up to ``timeout`` s) for the buffered metrics to reach the tracking server."""
        if not self.tracker.pending:
            return
        self.say(f"[raysl] sending {self.tracker.pending} buffered tracking call(s) before "
                 "finishing")
        unsent = self.tracker.flush(timeout)
        if unsent:
            self.say(f"[raysl] WARNING: the tracking server took none of the last {unsent} "
                     f"call(s) in {timeout:.0f}s (tracking.flush_timeout_s); their metrics are "
                     "lost")
