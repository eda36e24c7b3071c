"""Resources of a sweep's trials, and the settings the sweep imposes on each (no Ray here)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysl.errors import ConfigError
from raysl.sweep.spec import Sweep, is_label_free


@dataclass(frozen=True)
class TrialPlan:
    """Resources of one trial and how many run at once."""

    cpus_per_worker: float
    cpus: float  # driver + Ray Data + workers
    gpus: int
    concurrent: int
    # Each trial trains in its own process (train.local_mode), which then holds the worker's
    # CPUs too: no worker group to start per trial.
    in_process: bool = False

    def trial_process_resources(self, sweep: Sweep) -> dict[str, float]:
        """What a trial's own process asks Tune for.

        Its driver's CPUs; and, when it trains in process, its worker's CPUs and GPU (Ray then
        gives the process that GPU alone to see).
        """
        if not self.in_process:
            return {"CPU": sweep.settings.trial_driver_cpus}
        worker = sweep.base.train.num_workers * self.cpus_per_worker
        return {"CPU": sweep.settings.trial_driver_cpus + worker,
                **({"GPU": float(self.gpus)} if self.gpus else {})}

    def describe(self, sweep: Sweep) -> str:
        """One line for the log."""
        t = sweep.base.train
        gpu = f" + {self.gpus} GPU" if self.gpus else ""
        where = " in the trial's own process" if self.in_process else ""
        return (f"each trial: {self.cpus:g} CPU{gpu} ({t.num_workers} worker(s){where} x "
                f"{self.cpus_per_worker:g} CPU, {t.data_cpus:g} for Ray Data, "
                f"{sweep.settings.trial_driver_cpus:g} for its driver); {self.concurrent} at once")


def plan_trials(sweep: Sweep, cluster_cpus: float, cluster_gpus: float,
                in_process: bool = False) -> TrialPlan:
    """Per-trial resources and concurrency, so that every trial's Ray Train can start.

    Train starts only when it gets all its workers at once, and a trial's Ray Data needs CPU
    beside them, so trials are budgeted whole: Tune never starts more than fit.
    ``in_process``: each trial trains in its own process (see :class:`TrialPlan`).

    Raises:
        ConfigError: when not even one trial fits the cluster.
    """
    t, s = sweep.base.train, sweep.settings
    overhead = s.trial_driver_cpus + t.data_cpus
    cpus_per_worker = t.cpus_per_worker
    if not cpus_per_worker:  # auto: 1 per worker if a trial fits, else share what there is
        share = cluster_cpus / (s.max_concurrent_trials or 1)
        cpus_per_worker = (1.0 if s.max_concurrent_trials == 0
                           and overhead + t.num_workers <= cluster_cpus
                           else math.floor((share - overhead) / t.num_workers * 100) / 100)
        cpus_per_worker = max(cpus_per_worker, 0.01)
    cpus = overhead + t.num_workers * cpus_per_worker
    gpus = t.num_workers if t.use_gpu else 0
    fit = math.floor(cluster_cpus / cpus + 1e-9)
    if gpus:
        fit = min(fit, math.floor(cluster_gpus / gpus))
    if fit < 1:
        raise ConfigError("train.num_workers", t.num_workers,
                          f"a trial needs {cpus:g} CPU(s) ({t.num_workers} worker(s) x "
                          f"{cpus_per_worker:g} + train.data_cpus={t.data_cpus:g} + "
                          f"trial_driver_cpus={s.trial_driver_cpus:g})"
                          + (f" and {gpus} GPU(s)" if gpus else "")
                          + f"; the cluster has {cluster_cpus:g} CPU(s), {cluster_gpus:g} GPU(s)")
    concurrent = min(s.max_concurrent_trials or fit, fit, sweep.num_trials)
    return TrialPlan(cpus_per_worker, cpus, gpus, concurrent, in_process)


def trial_overrides(sweep: Sweep, plan: TrialPlan, storage: str, uri: str) -> dict[str, Any]:
    """Settings the sweep imposes on every trial (dotted keys).

    Trials run in their own working directories on any node, so paths are made absolute; they
    are judged online, every epoch, so the online metric is on; the full evaluation and the
    registration happen once, for the best trial, at the end.
    """
    base, label_free = sweep.base, is_label_free(sweep.settings.metric)
    out: dict[str, Any] = {
        "train.cpus_per_worker": plan.cpus_per_worker, "train.storage_path": storage,
        "train.local_mode": "on" if plan.in_process else "off",  # decided once, for all
        "tracking.tracking_uri": uri, "tracking.register": False, "eval.enabled": False,
        # The sweep's metric every epoch: the online kNN needs labels, the monitors do not (on
        # unlabeled data, the base keeps online kNN off and the sweep ranks on a monitor).
        "eval.online_knn_every": base.eval.online_knn_every if label_free else 1,
        "eval.monitor_every": 1 if label_free else base.eval.monitor_every,
        "eval.online_probe": base.eval.online_probe
        or sweep.settings.metric == "eval/online_probe_top1",
    }
    for name, src in (("data.source", base.data.source), ("eval.bank", base.eval.bank),
                      ("eval.query", base.eval.query)):
        if src.path and "://" not in src.path and not os.path.isabs(src.path):
            out[f"{name}.path"] = str(Path(src.path).resolve())
    return out

