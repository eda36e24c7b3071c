"""Who runs the train loop: a Ray Train worker group, or the command's own process.

The loop asks six things of whoever runs it (:class:`Session`). :class:`WorkerGroupSession`
answers with Ray Train's worker API. :class:`InProcessSession` answers for the one worker of a
run trained in this process (``train.local_mode``): no Train controller, worker processes,
process group or split coordinator to start. Ray Train's own local mode
(``ScalingConfig(num_workers=0)``) does the same, but its ``ray.train.*`` calls raise inside a
Tune trial, where a sweep's one-worker trials gain the most from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import ray.train
import ray.train.torch
import torch
from torch import nn


class Session(Protocol):
    """What the train loop asks of whoever runs it."""

    def rank_and_world(self) -> tuple[int, int]:
        """This worker's rank and the number of workers."""
        ...

    def dataset(self, name: str) -> Any:
        """This worker's share of the dataset ``name`` (``iter_torch_batches`` reads it)."""
        ...

    def device(self) -> torch.device:
        """The device this worker trains on."""
        ...

    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` on the device, and DDP-wrapped across a group of workers."""
        ...

    def recorded_checkpoint(self) -> ray.train.Checkpoint | None:
        """The checkpoint the runner recorded for this run, to resume from."""
        ...

    def report(self, metrics: dict[str, float], checkpoint: ray.train.Checkpoint | None) -> None:
        """Report an epoch's (or a step's) metrics with its checkpoint (rank 0's; else None)."""
        ...


class WorkerGroupSession:
    """A worker of a Ray Train worker group: Ray Train's worker API."""

    def rank_and_world(self) -> tuple[int, int]:
        """From the Train context."""
        ctx = ray.train.get_context()
        return ctx.get_world_rank(), ctx.get_world_size()

    def dataset(self, name: str) -> Any:
        """Ray Train's shard: an equal part of the stream."""
        return ray.train.get_dataset_shard(name)

    def device(self) -> torch.device:
        """The GPU Ray gave this worker, or the CPU."""
        return ray.train.torch.get_device()

    def prepare(self, model: nn.Module) -> nn.Module:
        """DDP across the group; buffers synced at the start only (see the loop's ``set_up``)."""
        return ray.train.torch.prepare_model(
            model, parallel_strategy_kwargs={"forward_sync_buffers": False})

    def recorded_checkpoint(self) -> ray.train.Checkpoint | None:
        """The last one Ray Train persisted for the run."""
        checkpoint: ray.train.Checkpoint | None = ray.train.get_checkpoint()
        return checkpoint

    def report(self, metrics: dict[str, float], checkpoint: ray.train.Checkpoint | None) -> None:
        """To Ray Train, which persists the checkpoint (a barrier across the group)."""
        ray.train.report(metrics, checkpoint=checkpoint)


@dataclass
class InProcessSession:
    """The one worker of a run trained in this process; keeps what a Ray Train result holds."""

    datasets: Mapping[str, Any]  # ray.data.Dataset by name, read whole (one worker)
    use_gpu: bool
    # Ray Train callbacks that a worker group's controller would call after each report (a
    # sweep trial's report to Tune).
    callbacks: Sequence[ray.train.UserCallback] = ()
    metrics: dict[str, float] | None = None  # the last report's
    checkpoint: ray.train.Checkpoint | None = None  # the last report's

    def rank_and_world(self) -> tuple[int, int]:
        """Rank 0 of 1."""
        return 0, 1

    def dataset(self, name: str) -> Any:
        """The whole dataset."""
        return self.datasets[name]

    def device(self) -> torch.device:
        """The first GPU this process sees with ``train.use_gpu``, else the CPU.

        Raises:
            RuntimeError: ``train.use_gpu`` and no GPU here (it would train on the CPU).
        """
        if not self.use_gpu:
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise RuntimeError("train.use_gpu=true, but this process sees no GPU (torch.cuda "
                               "is not available): check CUDA_VISIBLE_DEVICES and the driver")
        return torch.device("cuda:0")

    def prepare(self, model: nn.Module) -> nn.Module:
        """On the device; nothing to wrap."""
        return model.to(self.device())

    def recorded_checkpoint(self) -> ray.train.Checkpoint | None:
        """None: in process, checkpoints are found on disk (``train/in_process.py``)."""
        return None

    def report(self, metrics: dict[str, float], checkpoint: ray.train.Checkpoint | None) -> None:
        """Kept as the result, and passed to the callbacks as Ray Train's controller would."""
        self.metrics, self.checkpoint = dict(metrics), checkpoint
        for callback in self.callbacks:  # there is no run context: TuneReportCallback needs none
            callback.after_report(None, [metrics], checkpoint)  # type: ignore[arg-type]
