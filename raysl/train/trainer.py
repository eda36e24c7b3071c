"""Driver side of training: plan resources on the cluster's nodes, build the ``TorchTrainer``.

Shared by ``raysl pretrain``, ``pipelines/pretrain.py`` and sweeps, so that every entry point
trains the same way. Joining Ray and the nodes themselves are :mod:`raysl.cluster`'s.
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
import ray.util.client
from ray.train.torch import TorchConfig, TorchTrainer

from raysl.cluster.nodes import (
    DATA_MARKER,
    MARKER_REQUEST,
    TRAIN_MARKER,
    Node,
    cluster_resources,
)
from raysl.config import Config
from raysl.console import verbose
from raysl.errors import ConfigError
from raysl.train.loop import WHOLE_IMAGES, LoopSettings, train_in_process, train_loop_per_worker
from raysl.train.session import InProcessSession


@dataclass(frozen=True)
class ResourcePlan:
    """How the cluster's CPUs/GPUs are split between train workers and Ray Data."""

    cpus_per_worker: float
    gpus_per_worker: int
    threads_per_worker: int  # torch intra-op threads per train worker
    augment_tasks: int  # augmentation tasks Ray Data runs at once, at most
    train_marker: str = ""  # custom resource pinning train workers to their node type ("" = any)
    data_marker: str = ""  # the same for augmentation tasks

    def worker_resources(self) -> dict[str, float]:
        """``resources_per_worker`` of the train workers."""
        res = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            res["GPU"] = self.gpus_per_worker
        if self.train_marker:
            res[self.train_marker] = MARKER_REQUEST
        return res

    def augment_resources(self) -> dict[str, float]:
        """Custom resources each augmentation task asks for (pins it to the data nodes)."""
        return {self.data_marker: MARKER_REQUEST} if self.data_marker else {}

    def describe(self, cfg: Config) -> str:
        """One line for the log."""
        gpu = f" + {self.gpus_per_worker} GPU" if self.gpus_per_worker else ""
        on_train = f" on the {self.train_marker} nodes" if self.train_marker else ""
        on_data = f" on the {self.data_marker} nodes" if self.data_marker else ""
        workers = (f"{cfg.train.min_workers}-{cfg.train.num_workers} (elastic)"
                   if cfg.train.elastic else str(cfg.train.num_workers))
        return (f"{workers} train worker(s) x {self.cpus_per_worker:g} CPU{gpu} "
                f"({self.threads_per_worker} thread(s) each){on_train}; Ray Data: up to "
                f"{self.augment_tasks} augmentation task(s) x {cfg.data.augment_cpus:g} CPU"
                f"{on_data}")


def plan_resources(cfg: Config, nodes: Sequence[Node]) -> ResourcePlan:
    """Split the cluster's ``nodes`` so that Ray Data always has CPU beside the train workers.

    Train V2 keeps the train workers' CPUs out of Ray Data's budget, so a plan that gives every CPU
    to training makes augmentation wait forever. We reserve ``train.data_cpus`` for Ray Data
    and divide the rest between the workers (unless ``train.cpus_per_worker`` is set).

    Node types (``train.node_markers``, cluster.yaml): when some nodes carry ``train_node``, the
    workers are pinned to them and share only their CPUs. When nodes carrying ``data_node`` are up
    as well, augmentation is pinned to those and gets all their CPUs, so nothing is reserved on
    the train nodes. Without data nodes (they autoscale from 0), ``train.data_cpus`` stay reserved.

    A worker runs on one node, so the automatic share is lowered until every worker fits on some
    node: 4 GPU workers on a 48-CPU GPU node next to a 32-CPU node get 12 CPUs each, not
    (80 - data) / 4, which only 2 of them could get.

    Raises:
        ConfigError: when the request cannot be scheduled on this cluster (instead of hanging).
    """
    t, d = cfg.train, cfg.data
    train_marker = TRAIN_MARKER if t.node_markers and _marked(nodes, TRAIN_MARKER) else ""
    pool = [n for n in nodes if TRAIN_MARKER in n.markers] if train_marker else list(nodes)
    data_nodes = [n for n in nodes if DATA_MARKER in n.markers and TRAIN_MARKER not in n.markers]
    data_marker = DATA_MARKER if train_marker and data_nodes else ""
    pool_cpus, pool_gpus = sum(n.cpus for n in pool), sum(n.gpus for n in pool)
    where = f" on the {len(pool)} {train_marker} node(s)" if train_marker else ""
    if t.use_gpu and pool_gpus < t.fewest_workers:
        raise ConfigError("train.num_workers", t.num_workers,
                          f"needs one GPU per worker with train.use_gpu=true; the cluster has "
                          f"{pool_gpus:g} GPU(s){where}")
    if data_marker:
        reserve, data_cpus, data_field = 0.0, sum(n.cpus for n in data_nodes), "data node CPUs"
    else:
        reserve, data_cpus, data_field = t.data_cpus, t.data_cpus, "train.data_cpus"
    largest = max(n.cpus for n in data_nodes) if data_marker else t.data_cpus
    if d.augment_cpus > largest:
        raise ConfigError("data.augment_cpus", d.augment_cpus,
                          f"must be <= {data_field} ({data_cpus:g} CPUs kept for Ray Data"
                          f"{', per node' if data_marker else ''})")
    available = pool_cpus - reserve
    # An elastic run plans each worker's share for num_workers and needs min_workers to fit.
    cpus = t.cpus_per_worker or available / t.num_workers
    # Keep 0.01 CPU of slack: logical CPUs are floats and exact fits fail on rounding.
    if cpus <= 0 or cpus * t.fewest_workers > available + 1e-9:
        kept = f", train.data_cpus={t.data_cpus:g} are kept for Ray Data" if reserve else ""
        raise ConfigError("train.num_workers", t.num_workers,
                          f"cannot be scheduled: the cluster has {pool_cpus:g} CPU(s){where}"
                          f"{kept}, leaving {max(available, 0):g} for the workers ({cpus:g} "
                          "each requested)")
    cpus = _fit_on_nodes(cfg, math.floor(cpus * 100) / 100, pool)
    threads = max(1, int(cpus))
    tasks = max(1, int(data_cpus // d.augment_cpus))
    return ResourcePlan(cpus, 1 if t.use_gpu else 0, threads, tasks, train_marker, data_marker)


def _marked(nodes: Sequence[Node], marker: str) -> bool:
    return any(marker in n.markers for n in nodes)


def _workers_fitting(cpus: float, gpus: int, nodes: Sequence[Node]) -> int:
    """How many workers of ``cpus`` (> 0) CPUs and ``gpus`` GPUs the nodes hold, node by node."""
    total = 0
    for node in nodes:
        fit = math.floor(node.cpus / cpus + 1e-9)
        if gpus:
            fit = min(fit, math.floor(node.gpus / gpus + 1e-9))
        total += fit
    return total


def _fit_on_nodes(cfg: Config, cpus: float, nodes: Sequence[Node]) -> float:
    """``cpus`` per worker, lowered (when automatic) until every worker fits on some node.

    Raises:
        ConfigError: no share fits (a set ``train.cpus_per_worker`` too large for the nodes,
            or GPU workers on nodes without enough GPUs).
    """
    t = cfg.train
    gpus = 1 if t.use_gpu else 0
    if _workers_fitting(cpus, gpus, nodes) >= t.fewest_workers:
        return cpus
    candidates = sorted({math.floor(n.cpus / k * 100) / 100 for n in nodes
                         if n.cpus and (n.gpus or not gpus)
                         for k in range(1, t.num_workers + 1)}, reverse=True)
    fits = [c for c in candidates if 0 < c <= cpus
            and _workers_fitting(c, gpus, nodes) >= t.fewest_workers]
    described = ", ".join(n.describe() for n in nodes)
    if t.cpus_per_worker or not fits:
        raise ConfigError("train.cpus_per_worker" if t.cpus_per_worker else "train.num_workers",
                          t.cpus_per_worker or t.num_workers,
                          f"cannot be scheduled: {t.fewest_workers} worker(s) of {cpus:g} CPU"
                          f"{' + 1 GPU' if gpus else ''} each do not fit on the nodes "
                          f"({described}); a worker runs on one node"
                          + (f". At most {fits[0]:g} CPU each would fit" if fits else ""))
    return fits[0]


def torch_backend(cfg: Config) -> str:
    """The ``torch.distributed`` backend: NCCL between GPUs, gloo on CPU.

    Ray Train picks the same by default; naming it keeps the choice visible and tested.
    """
    return "nccl" if cfg.train.use_gpu else "gloo"


# Ray Train's wait for a worker group's resources, per attempt (propagated from the driver's
# environment to its controller); each timed-out attempt is one "controller failure".
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
START_ATTEMPT_S = 60.0  # Ray's own default per attempt


def _failure_config(cfg: Config) -> ray.train.FailureConfig:
    """Restarts after a fault (``train.max_failures``); waits of at most ``train.node_wait_s``.

    A wait is for the resources of a worker group that cannot be placed (a lost node). Ray
    retries such a group without limit by default; here it gives up after about ``node_wait_s``:
    attempts of ``min(node_wait_s, 60)`` s each (or of ``$RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``
    if shorter), as many as fit.
    """
    wait = cfg.train.node_wait_s
    # A shorter attempt set in the environment (a cluster's own setting, the tests') stays.
    attempt = min(wait, float(os.environ.get(START_TIMEOUT_ENV, START_ATTEMPT_S)))
    os.environ[START_TIMEOUT_ENV] = f"{attempt:g}"
    # (Train V2's FailureConfig; mypy resolves the name to the V1 class)
    return ray.train.FailureConfig(max_failures=cfg.train.max_failures,  # type: ignore[call-arg]
                                   controller_failure_limit=math.ceil(wait / attempt) - 1)


def worker_count(cfg: Config) -> int | tuple[int, int]:
    """``ScalingConfig.num_workers``: a number, or (min, max) for an elastic run."""
    t = cfg.train
    return (t.min_workers, t.num_workers) if t.elastic else t.num_workers


def trains_in_process(cfg: Config, nodes: Sequence[Node], storage: str) -> str:
    """Why this run trains in the command's own process (``train/session.py``), or "".

    ``train.local_mode=auto`` does when nothing is lost but automatic restarts: one worker, one
    node that is this machine (the driver's process is where training then runs), and
    checkpoints on a local path (committed to disk by :mod:`raysl.train.in_process`). A sweep
    decides for its trials and sets ``train.local_mode`` on each.

    Raises:
        ConfigError: ``train.local_mode=on`` where it cannot.
    """
    t = cfg.train
    if t.local_mode == "off":
        return ""
    client = ray.util.client.ray.is_connected()  # type: ignore[no-untyped-call]
    cannot = (f"the cluster has {len(nodes)} nodes (the worker may not be this machine)"
              if len(nodes) != 1
              else "this process is a Ray Client, not on the cluster's node" if client
              else f"train.storage_path={storage!r} is not a local path" if "://" in storage
              else f"train.num_workers={t.num_workers} (one worker trains in process)"
              if t.num_workers != 1 or t.elastic else "")
    if cannot and t.local_mode == "on":
        raise ConfigError("train.local_mode", "on", f"cannot train in this process: {cannot}; "
                          "use auto or off")
    if cannot:
        return ""
    return ("one worker on this machine's one node: training in this process (no worker group "
            "to start; a fault is not retried: run the same command again to resume from the "
            "last checkpoint; train.local_mode=off for a worker group)")


def build_trainer(cfg: Config, dataset: ray.data.Dataset, plan: ResourcePlan,
                  settings: LoopSettings, storage_path: str,
                  eval_split: ray.ObjectRef[Any] | None = None,
                  callbacks: Sequence[ray.train.UserCallback] = (),
                  monitor_sample: ray.ObjectRef[Any] | None = None,
                  whole_images: ray.data.Dataset | None = None,
                  init_weights: ray.ObjectRef[Any] | None = None,
                  teacher_weights: ray.ObjectRef[Any] | None = None
                  ) -> TorchTrainer | InProcessTrainer:
    """The ``TorchTrainer`` for one pretraining run, or its stand-in in this process.

    With ``settings.in_process``, the loop runs here as the one worker
    (:class:`InProcessTrainer`); ``fit()`` either way.

    Re-running with the same ``settings.run_name`` and ``storage_path`` resumes from the last
    checkpoint (Ray Train V2 restores the run's state from ``storage_path/run_name``).
    ``eval_split`` is the labeled split (in the object store) for online kNN evaluation.
    ``callbacks`` are Ray Train callbacks, e.g. the one forwarding each report to a Tune trial.
    ``monitor_sample`` holds the images of the label-free monitors (``eval.monitor_every``).
    ``whole_images`` is the un-augmented pass over the training set that a method with
    ``reads_training_set`` reads before its epochs (split over the workers like the views).
    ``init_weights`` holds the :class:`~raysl.methods.base.InitWeights` a continued
    pretraining starts from (``model.init_from``), read and checked once by the driver;
    ``teacher_weights`` the :class:`~raysl.methods.base.TeacherWeights` a distillation learns
    from (``method.teacher``).
    """
    datasets: dict[str, ray.data.Dataset] = {"train": dataset}
    if whole_images is not None:
        datasets[WHOLE_IMAGES] = whole_images
    loop_config = {"config": cfg.to_dict(), "settings": asdict(settings), "eval_split": eval_split,
                   "monitor_sample": monitor_sample, "init_weights": init_weights,
                   "teacher_weights": teacher_weights}
    if settings.in_process:
        # A worker group's CPUs are kept from Ray Data by Ray Train; this process's must be too.
        cpus, gpus = cluster_resources()
        limits = ray.data.ExecutionResources(cpu=cpus - plan.cpus_per_worker,
                                             gpu=gpus - plan.gpus_per_worker)
        return InProcessTrainer(loop_config,
                                InProcessSession(datasets, cfg.train.use_gpu, tuple(callbacks)),
                                limits)
    return TorchTrainer(
        train_loop_per_worker,
        torch_config=TorchConfig(backend=torch_backend(cfg)),
        train_loop_config=loop_config,
        # (Train V2's ScalingConfig takes (min, max); mypy resolves the name to the V1 class)
        scaling_config=ray.train.ScalingConfig(num_workers=worker_count(cfg),  # type: ignore[arg-type]
                                               use_gpu=cfg.train.use_gpu,
                                               resources_per_worker=plan.worker_resources()),
        run_config=ray.train.RunConfig(
            name=settings.run_name, storage_path=storage_path,
            failure_config=_failure_config(cfg),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            # (Train V2's RunConfig; mypy resolves the name to the V1 class)
            logging_config=ray.train.LoggingConfig(  # type: ignore[call-arg]
                log_level="INFO" if verbose() else "WARNING"),
            callbacks=list(callbacks)),  # type: ignore[arg-type]  # UserCallback is one
        datasets=dict(datasets),
    )


@dataclass(frozen=True)
class InProcessTrainer:
    """``TorchTrainer``'s stand-in for a run trained in this process (``train.local_mode``)."""

    loop_config: dict[str, Any]
    session: InProcessSession
    data_limits: ray.data.ExecutionResources  # what Ray Data may use beside this process

    def fit(self) -> InProcessSession:
        """Run the loop here, as the one worker; the session holds the last report (a result).

        Ray Data's limits hold while it trains: the streams share their context with the
        datasets they were made from, which the evaluation afterwards reads at full width.
        """
        contexts = {id(d.context): d.context for d in self.session.datasets.values()}.values()
        before = [(c, c.execution_options.resource_limits) for c in contexts]
        for context, _ in before:
            context.execution_options.resource_limits = self.data_limits
        try:
            train_in_process(self.loop_config, self.session)
        finally:
            for context, limits in before:
                context.execution_options.resource_limits = limits
        return self.session
