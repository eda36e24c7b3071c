"""What a checkpoint keeps of a train worker, and how a restarted worker gets it back.

:class:`TrainState` holds the trained objects and where training stands.
:meth:`~TrainState.checkpoint` writes them (rank 0) as the files of :mod:`raysl.checkpoint`:
``method.pt``, ``encoder.pt``, ``optimizer.pt`` and ``state.json`` (the last whole epoch, the
steps of the next one a mid-epoch checkpoint had taken, the step count, the run's config and
names, the epoch's start-of-epoch metrics, the number of workers), plus, where the run has them,
``scaler.pt`` (fp16's loss scale), ``probe.pt`` (the online probe), ``tracking.pt`` (rank 0's
tracking calls the server had not taken) and ``workers.pt`` (every worker's own state: SwAV's
queues). :meth:`~TrainState.restore` reads them back after a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ray.train
import torch

from raysl import distributed
from raysl.checkpoint import load_extra, save_checkpoint
from raysl.checkpoint import restore as load_checkpoint
from raysl.config import Config
from raysl.eval.online import OnlineProbe
from raysl.methods.base import WORLD_KEY, SSLMethod, gather_worker_state, take_worker_state
from raysl.tracking.buffered import TrackingCall
from raysl.train.log import RunLog

WORKERS_FILE = "workers"  # checkpoint extra: every worker's own state (SwAV's queues)
TRACKING_FILE = "tracking"  # checkpoint extra: rank 0's tracking calls not yet sent
TRACKING_SETTLE_S = 0.5  # a checkpoint waits this long at most for queued calls to go out


@dataclass
class TrainState:
    """The trained objects and where training stands: what a checkpoint keeps."""

    method: SSLMethod  # the module itself (the loop steps its DDP wrapper)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16's loss scaling
    probe: OnlineProbe | None  # the online probe's head and momentum (Watchers steps it)
    log: RunLog  # rank 0's lines, and its tracker, whose unsent calls a checkpoint keeps
    rank: int
    run_config: dict[str, Any]  # the run's config as given (an elastic group's may differ)
    run_name: str
    mlflow_run_id: str
    start_epoch: int = 0  # this worker group's first epoch, from 0
    resumed_epoch_steps: int = 0  # steps of start_epoch its checkpoint had taken (mid-epoch)
    step: int = 0  # optimizer steps done, over all epochs
    # The current epoch's start-of-epoch metrics (DeepCluster's clustering), logged with the
    # epoch's end; a checkpoint inside the epoch keeps them, since a resume there does not redo
    # that work.
    start_logs: dict[str, float] = field(default_factory=dict)

    def steps_trained(self, epoch: int) -> int:
        """Steps of ``epoch`` that its checkpoint had trained (0 but for a mid-epoch resume)."""
        return self.resumed_epoch_steps if epoch == self.start_epoch else 0

    def keep_start_logs(self, epoch: int, logs: dict[str, float]) -> None:
        """Keep ``epoch``'s start-of-epoch metrics, ``logs``, until the epoch's end.

        At a mid-epoch resume the method may have had nothing to redo: the checkpoint's stay.
        """
        if logs or not self.steps_trained(epoch):
            self.start_logs = dict(logs)

    def checkpoint(self, directory: str, last_epoch: int,
                   epoch_steps: int) -> ray.train.Checkpoint | None:
        """Rank 0 writes a checkpoint into ``directory``: its :class:`ray.train.Checkpoint`.

        A collective (the workers' own state is gathered): every rank calls it; the others
        get None.

        Args:
            directory: an empty directory that outlives the report of the checkpoint.
            last_epoch: the last whole epoch done, from 0 (-1: none yet).
            epoch_steps: steps of the next epoch done too (0 at an epoch's end).
        """
        workers = gather_worker_state(self.method)  # a collective: SwAV's per-worker queues
        if self.rank != 0:
            return None
        state = {"epoch": last_epoch, "epoch_steps": epoch_steps, "step": self.step,
                 "config": self.run_config,
                 "start_logs": self.start_logs if epoch_steps else {},
                 "run_name": self.run_name,
                 "mlflow_run_id": self.mlflow_run_id,
                 "world_size": distributed.world_size()}
        save_checkpoint(directory, self.method, self.method.exported_encoder(), self.optimizer,
                        state, {**self.extras(), **({WORKERS_FILE: workers} if workers else {})})
        return ray.train.Checkpoint.from_directory(directory)

    def extras(self) -> dict[str, dict[str, Any]]:
        """Training state beyond the model and optimizer that a checkpoint keeps (by file name)."""
        extras: dict[str, dict[str, Any]] = {}
        if self.probe is not None:
            extras["probe"] = self.probe.training_state()
        if self.scaler is not None:
            extras["scaler"] = self.scaler.state_dict()
        # The epoch's metrics were queued just now: a server that is up takes them in this wait.
        self.log.tracker.flush(TRACKING_SETTLE_S)
        if unsent := self.log.tracker.unsent():  # the server is away: a restarted rank 0 sends
            extras[TRACKING_FILE] = {"calls": [call.state() for call in unsent]}
        return extras

    def restore(self, directory: str, cfg: Config, world: int, steps_per_epoch: int) -> None:
        """Continue from the checkpoint in ``directory``: weights, optimizer, extras, position.

        Args:
            directory: the checkpoint's (local) directory.
            cfg: this worker group's config.
            world: workers in this group (an elastic restart's may differ from the checkpoint's).
            steps_per_epoch: this run's; a checkpoint taken after as many steps of an epoch
                (the data or batch changed since) holds that whole epoch.

        Raises:
            CheckpointError: the checkpoint is incomplete or does not fit the method.
        """
        state = load_checkpoint(directory, self.method, self.optimizer)
        self.restore_extras(directory, cfg.method.name, world)
        self.start_epoch, self.step = state["epoch"] + 1, state["step"]
        self.resumed_epoch_steps = state.get("epoch_steps", 0)  # a mid-epoch checkpoint's
        self.start_logs = dict(state.get("start_logs", {}))
        if self.resumed_epoch_steps >= steps_per_epoch:  # the data or batch changed since
            self.start_epoch, self.resumed_epoch_steps = self.start_epoch + 1, 0
        within = (f", after {self.resumed_epoch_steps} of its steps" if self.resumed_epoch_steps
                  else "")
        self.log.say(f"[raysl] resuming {self.run_name} at epoch {self.start_epoch + 1}{within} "
                     f"(step {self.step})")
        self.log.tracker.log_metrics({"time/resumed_at_step": self.step}, step=self.start_epoch)
        if state.get("world_size", world) != world:
            self.log.say(f"[raysl] the checkpoint's run had {state['world_size']} worker(s), this "
                         f"one has {world}: data.batch_size_global, and so the learning-rate "
                         f"schedule, stay the same ({cfg.batch_size_per_worker} images per "
                         "worker now)")

    def restore_extras(self, directory: str, method_name: str, world: int) -> None:
        """Load what :meth:`extras` and the workers' own state saved, where this run has it."""
        if self.probe is not None and (probe := load_extra(directory, "probe")) is not None:
            self.probe.load_training_state(probe)
        if self.scaler is not None and (scaler := load_extra(directory, "scaler")) is not None:
            self.scaler.load_state_dict(scaler)
        if self.rank == 0 and (kept := load_extra(directory, TRACKING_FILE)):
            self.log.say(f"[raysl] {len(kept['calls'])} tracking call(s) the tracking server had "
                         "not received when the checkpoint was written: sending them again")
            self.log.tracker.resend([TrackingCall.from_state(call) for call in kept["calls"]])
        workers = load_extra(directory, WORKERS_FILE)
        if workers and not take_worker_state(self.method, workers, self.rank, world):
            names = ", ".join(sorted(k for k in workers if k != WORLD_KEY))
            self.log.say(f"[raysl] the checkpoint's per-worker state ({names}; "
                         f"{int(workers[WORLD_KEY])} worker(s), this run {world}) does not fit "
                         f"this run: not restored, {method_name} rebuilds it as it trains")
