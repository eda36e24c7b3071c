"""Watching the representation while it trains: online evaluation, monitors, collapse.

:class:`Watchers` is the one object the loop asks about the representation. It holds the online
probe (a linear head on the online encoder's features of view 0, trained beside the SSL loss),
periodic kNN on a held-out labeled split, and the label-free monitors (RankMe, LiDAR) with the
collapse they may show. The loop calls it at three points: :meth:`~Watchers.after_step` (the
probe's step), :meth:`~Watchers.epoch_end` (the metrics due this epoch, and any collapse) and,
once the epoch is checkpointed, :meth:`~Watchers.react_to_collapse` (warn, or stop the run).
The measurements themselves are :mod:`raysl.eval.online`'s.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ray
import torch

from raysl import catalog
from raysl.config import Config
from raysl.errors import RepresentationCollapsed
from raysl.eval.monitors import Collapse
from raysl.eval.online import LabelFreeMonitor, OnlineProbe, online_metrics
from raysl.eval.splits import LabeledSplit
from raysl.methods.base import SSLMethod
from raysl.train.log import RunLog


@dataclass
class Watchers:
    """The online probe, online kNN and the label-free monitors of one train worker."""

    cfg: Config
    method: SSLMethod
    device: torch.device
    rank: int
    log: RunLog
    probe: OnlineProbe | None = None
    monitor: LabelFreeMonitor | None = None  # RankMe / LiDAR on a fixed sample (no labels)
    split_ref: ray.ObjectRef[LabeledSplit] | None = None  # the labeled split of online kNN
    split: LabeledSplit | None = None  # fetched by rank 0 at its first online evaluation
    collapse_warned: bool = False

    @classmethod
    def set_up(cls, cfg: Config, method: SSLMethod, device: torch.device, rank: int,
               world: int, log: RunLog, num_classes: int,
               split_ref: ray.ObjectRef[LabeledSplit] | None,
               monitor_ref: ray.ObjectRef[Any] | None) -> Watchers:
        """What ``cfg.eval`` asks for.

        Call after ``prepare_model``: the probe hooks the module that DDP calls.

        Args:
            cfg: the worker group's config (``eval.*``).
            method: the SSL method, unwrapped.
            device: this worker's.
            rank: this worker's.
            world: the number of workers (each embeds its share of the monitors' sample).
            log: rank 0's voice (the collapse warning).
            num_classes: labels of the training data, for the probe.
            split_ref: the labeled split of online kNN (and the probe's accuracy), or None.
            monitor_ref: (N, H, W, C) uint8 images of the label-free monitors, or None.
        """
        probe = None
        if cfg.eval.online_probe:
            probe = OnlineProbe(method, method.encoder, method.encoder.num_features, num_classes,
                                cfg.eval.online_probe_lr).to(device)
        monitor = None
        if monitor_ref is not None:
            monitor = LabelFreeMonitor(ray.get(monitor_ref), cfg, rank, world)
        return cls(cfg, method, device, rank, log, probe, monitor, split_ref)

    def after_step(self, micro_batches: Sequence[Mapping[str, torch.Tensor]]
                   ) -> dict[str, float]:
        """The probe's step on the features the SSL step just computed; its logs ({} without)."""
        if self.probe is None:
            return {}
        return self.probe.step([mb["label"] for mb in micro_batches])

    def epoch_end(self, epoch: int) -> tuple[dict[str, float], list[Collapse]]:
        """The monitors and online kNN / probe accuracy when due (rank 0's metrics are kept).

        Returns:
            The metrics, and the collapses the label-free monitors saw (the same on every rank).
        """
        cfg, last = self.cfg, epoch + 1 == self.cfg.train.epochs
        metrics: dict[str, float] = {}
        collapses: list[Collapse] = []
        if self.monitor is not None and _due(epoch, cfg.eval.monitor_every, last):
            started = time.perf_counter()
            values, collapses = self.monitor.measure(self.method, self.device)
            metrics.update({**values, "time/monitors_s": time.perf_counter() - started})
        knn_due = _due(epoch, cfg.eval.online_knn_every, last)
        if self.rank == 0 and self.split_ref is not None and (
                knn_due or (self.probe is not None and last)):
            self.split = self.split or ray.get(self.split_ref)
            metrics.update(online_metrics(self.method, self.split, cfg, self.probe, self.device,
                                          knn_due))
        return metrics, collapses

    def react_to_collapse(self, epoch: int, collapses: list[Collapse]) -> None:
        """Warn once (and tag the MLflow run) about a collapse seen after warm-up; or stop the run.

        Raises:
            RepresentationCollapsed: on every rank at once (the monitors' values are gathered,
                so every rank sees the same collapse), with ``train.stop_on_collapse``.
        """
        cfg = self.cfg
        if not collapses or epoch + 1 < max(1, math.ceil(cfg.optim.warmup_epochs)):
            return  # during warm-up a representation may still be finding its feet
        method = catalog.get("method", cfg.method.name)
        message = (f"epoch {epoch + 1}: {'; '.join(c.describe() for c in collapses)}. For "
                   f"{cfg.method.name} this usually means {method.collapse_hint}")
        if cfg.train.stop_on_collapse:
            raise RepresentationCollapsed(f"{message} (stopped: train.stop_on_collapse)")
        if not self.collapse_warned:
            self.collapse_warned = True
            self.log.say(f"[raysl] WARNING: {message}; train.stop_on_collapse=true ends such "
                         "runs early")
            self.log.tracker.set_tags({"raysl.collapse": message})


def _due(epoch: int, every: int, last: bool) -> bool:
    """Whether something run every ``every`` epochs (and at the last; 0 = never) is due."""
    return bool(every) and ((epoch + 1) % every == 0 or last)
