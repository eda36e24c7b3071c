"""Driver side of training: connect to Ray, plan resources, build the ``TorchTrainer``.

Shared by ``raysl pretrain``, ``pipelines/pretrain.py`` and (later) sweeps, so that every entry
point trains the same way.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import ray
import ray.data
import ray.train
from ray.train.torch import TorchTrainer

from raysl.config import Config, ConfigError
from raysl.train.loop import LoopSettings, train_loop_per_worker


@dataclass(frozen=True)
class ResourcePlan:
    """How the cluster's CPUs/GPUs are split between train workers and Ray Data."""

    cpus_per_worker: float
    gpus_per_worker: int
    threads_per_worker: int  # torch intra-op threads per train worker
    augment_tasks: int  # augmentation tasks Ray Data runs at once, at most

    def describe(self, cfg: Config) -> str:
        """One line for the log."""
        gpu = f" + {self.gpus_per_worker} GPU" if self.gpus_per_worker else ""
        return (f"{cfg.train.num_workers} train worker(s) x {self.cpus_per_worker:g} CPU{gpu} "
                f"({self.threads_per_worker} thread(s) each); Ray Data: up to "
                f"{self.augment_tasks} augmentation task(s) x {cfg.data.augment_cpus:g} CPU")


def plan_resources(cfg: Config, cluster_cpus: float, cluster_gpus: float,
                   nodes: Sequence[tuple[float, float]] = ()) -> ResourcePlan:
    """Split the cluster so that Ray Data always has CPU beside the train workers.

    Train V2 keeps the train workers' CPUs out of Ray Data's budget, so a plan that gives every CPU
    to training makes augmentation wait forever. We reserve ``train.data_cpus`` for Ray Data
    and divide the rest between the workers (unless ``train.cpus_per_worker`` is set).

    A worker runs on one node, so with ``nodes`` ((CPUs, GPUs) of each node) the automatic share
    is lowered until every worker fits on some node: 4 GPU workers on a 48-CPU GPU node next to a
    32-CPU data node get 12 CPUs each, not (80 - data) / 4, which only 2 of them could get.

    Raises:
        ConfigError: when the request cannot be scheduled on this cluster (instead of hanging).
    """
    t, d = cfg.train, cfg.data
    if t.use_gpu and cluster_gpus < t.num_workers:
        raise ConfigError("train.num_workers", t.num_workers,
                          f"needs one GPU per worker with train.use_gpu=true; the cluster has "
                          f"{cluster_gpus:g} GPU(s)")
    if d.augment_cpus > t.data_cpus:
        raise ConfigError("data.augment_cpus", d.augment_cpus,
                          f"must be <= train.data_cpus={t.data_cpus:g} (CPUs kept for Ray Data)")
    available = cluster_cpus - t.data_cpus
    cpus = t.cpus_per_worker or available / t.num_workers
    # Keep 0.01 CPU of slack: logical CPUs are floats and exact fits fail on rounding.
    if cpus <= 0 or cpus * t.num_workers > available + 1e-9:
        raise ConfigError("train.num_workers", t.num_workers,
                          f"cannot be scheduled: the cluster has {cluster_cpus:g} CPU(s), "
                          f"train.data_cpus={t.data_cpus:g} are kept for Ray Data, leaving "
                          f"{max(available, 0):g} for the workers ({cpus:g} each requested)")
    cpus = math.floor(cpus * 100) / 100
    if nodes:
        cpus = _fit_on_nodes(cfg, cpus, nodes)
    threads = max(1, int(cpus))
    tasks = max(1, int(t.data_cpus // d.augment_cpus))
    return ResourcePlan(cpus, 1 if t.use_gpu else 0, threads, tasks)


def _workers_fitting(cpus: float, gpus: int, nodes: Sequence[tuple[float, float]]) -> int:
    """How many workers of ``cpus`` (> 0) CPUs and ``gpus`` GPUs the nodes hold, node by node."""
    total = 0
    for node_cpus, node_gpus in nodes:
        fit = math.floor(node_cpus / cpus + 1e-9)
        if gpus:
            fit = min(fit, math.floor(node_gpus / gpus + 1e-9))
        total += fit
    return total


def _fit_on_nodes(cfg: Config, cpus: float, nodes: Sequence[tuple[float, float]]) -> float:
    """``cpus`` per worker, lowered (when automatic) until every worker fits on some node.

    Raises:
        ConfigError: no share fits (a set ``train.cpus_per_worker`` too large for the nodes,
            or GPU workers on nodes without enough GPUs).
    """
    t = cfg.train
    gpus = 1 if t.use_gpu else 0
    if _workers_fitting(cpus, gpus, nodes) >= t.num_workers:
        return cpus
    candidates = sorted({math.floor(c / k * 100) / 100 for c, g in nodes if c and (g or not gpus)
                         for k in range(1, t.num_workers + 1)}, reverse=True)
    fits = [c for c in candidates if 0 < c <= cpus
            and _workers_fitting(c, gpus, nodes) >= t.num_workers]
    described = ", ".join(f"{c:g} CPU" + (f" + {g:g} GPU" if g else "") for c, g in nodes)
    if t.cpus_per_worker or not fits:
        raise ConfigError("train.cpus_per_worker" if t.cpus_per_worker else "train.num_workers",
                          t.cpus_per_worker or t.num_workers,
                          f"cannot be scheduled: {t.num_workers} worker(s) of {cpus:g} CPU"
                          f"{' + 1 GPU' if gpus else ''} each do not fit on the nodes "
                          f"({described}); a worker runs on one node"
                          + (f". At most {fits[0]:g} CPU each would fit" if fits else ""))
    return fits[0]


def connect(address: str = "") -> None:
    """Use the running Ray (tests), the cluster at ``address``/``$RAY_ADDRESS``, or start one.

    Under ``ray job submit`` the job supervisor sets ``RAY_ADDRESS``, so the job joins the cluster
    it was submitted to; run directly, raysl starts a local in-process cluster.
    """
    # Per process (a sweep trial is its own process): our epoch lines instead of Ray Data's bars.
    ray.data.DataContext.get_current().enable_progress_bars = False
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # The dashboard also serves the state API that Train's placement-group cleaner polls;
        # without it the cleaner logs a warning every few seconds for the whole run.
        ray.init(address="local", include_dashboard=True, log_to_driver=True)


def node_resources() -> list[tuple[float, float]]:
    """(CPUs, GPUs) of every node that is up."""
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return [(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
            for n in nodes if n.get("Alive")]


def cluster_resources() -> tuple[float, float]:
    """(CPUs, GPUs) of the connected cluster."""
    res = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return float(res.get("CPU", 0)), float(res.get("GPU", 0))


def build_trainer(cfg: Config, dataset: ray.data.Dataset, plan: ResourcePlan,
                  settings: LoopSettings, storage_path: str,
                  eval_split: ray.ObjectRef[Any] | None = None,
                  callbacks: Sequence[ray.train.UserCallback] = ()) -> TorchTrainer:
    """The ``TorchTrainer`` for one pretraining run.

    Re-running with the same ``settings.run_name`` and ``storage_path`` resumes from the last
    checkpoint (Ray Train V2 restores the run's state from ``storage_path/run_name``).
    ``eval_split`` is the labeled split (in the object store) for online kNN evaluation.
    ``callbacks`` are Ray Train callbacks, e.g. the one forwarding each report to a Tune trial.
    """
    resources = {"CPU": plan.cpus_per_worker}
    if plan.gpus_per_worker:
        resources["GPU"] = plan.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "settings": asdict(settings),
                           "eval_split": eval_split},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.num_workers,
                                               use_gpu=cfg.train.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=settings.run_name, storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=list(callbacks)),  # type: ignore[arg-type]  # UserCallback is one
        datasets={"train": dataset},
    )
