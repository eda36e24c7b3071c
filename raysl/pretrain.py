"""One pretraining run end to end: data -> Ray Train -> kNN evaluation -> MLflow registry.

``raysl pretrain`` and ``pipelines/pretrain.py`` both call :func:`pretrain`, so a job submitted
to a cluster does exactly what a local run does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch
from mlflow.tracking import MlflowClient

from raysl import catalog
from raysl.checkpoint import ENCODER_FILE, load_strict
from raysl.cluster.connect import connect
from raysl.cluster.nodes import node_resources
from raysl.cluster.storage import check_shared, check_tracking_shared, storage_path
from raysl.config import Config
from raysl.console import banner, redacting
from raysl.data.pipeline import view_stream, whole_image_stream
from raysl.data.source import (
    ImageSource,
    Reading,
    check_source,
    first_images,
    read_source,
)
from raysl.errors import ConfigError, DataError, NodesNotBack, RepresentationCollapsed
from raysl.eval.data import EvalData, load_eval_data
from raysl.eval.monitors import MONITOR_METRICS
from raysl.eval.suite import (
    PIXELS,
    RANDOM_INIT,
    TRAINED,
    EvalReport,
    evaluate_encoders,
    with_baseline,
)
from raysl.methods.base import InitWeights, TeacherWeights
from raysl.nn.backbones import Encoder, build_encoder
from raysl.redact import redact
from raysl.serving.init_from import describe as describe_init
from raysl.serving.init_from import resolve_init, resolve_teacher
from raysl.tracking.mlflow import (
    Tracker,
    ensure_experiment,
    find_or_create_run,
    log_params_once,
    resolve_tracking_uri,
    tracking_client,
    ui_command,
    wait_until_reachable,
)
from raysl.tracking.model_registry import (
    RUN_PARENT_TAG,
    RUN_TEACHER_TAG,
    RegisteredEncoder,
    log_weights,
    register_encoder,
    run_lineage_tags,
    version_description,
)
from raysl.train import in_process
from raysl.train.loop import LoopSettings
from raysl.train.permanent import PERMANENT_ERRORS, clear_note, note_path, raise_noted
from raysl.train.trainer import ResourcePlan, build_trainer, plan_resources, trains_in_process

ONLINE_KNN = "eval/online_knn_top1"


@dataclass
class PretrainResult:
    """What a run produced, and where to find it."""

    run_name: str
    resumed: bool
    mlflow_run_id: str
    tracking_uri: str
    experiment: str
    checkpoint_path: str
    final_loss: float
    images_per_s: float
    data: str
    time_split: dict[str, float] = field(default_factory=dict)  # last epoch: data/comm/compute
    eval_data: str = ""
    knn: dict[str, float] = field(default_factory=dict)  # trained / random_init / raw_pixels
    knn_k: int = 0
    knn_temperature: float = 0.0
    report: EvalReport | None = None  # every protocol run after training
    online: dict[str, float] = field(default_factory=dict)  # final / best online kNN and epoch
    weights_artifact: str = ""  # artifact directory of the encoder's weights in the MLflow run
    model: RegisteredEncoder | None = None
    alias: str = ""  # the alias this run set (the model's first version becomes its champion)
    monitors: dict[str, float] = field(default_factory=dict)  # label-free, at the last epoch
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    data_fingerprint: str = ""  # which images trained it (ImageSource.fingerprint)

    def summary(self) -> str:
        """The human-readable summary printed at the end of a run."""
        top, bottom = banner("raysl pretrain: summary")
        lines = ["", top,
                 f"run            {self.run_name}{'  (resumed)' if self.resumed else ''}",
                 f"data           {self.data}"]
        if self.skipped:
            lines.append(f"bad files      skipped {sum(self.skipped.values())}: {self.skipped}"
                         " (list: data/skipped.txt in the MLflow run)")
            lines += [f"               {e}" for e in self.skipped_examples[:3]]
        lines.append(f"training       final loss {self.final_loss:.4f}, "
                     f"{self.images_per_s:.0f} images/s in the last epoch")
        if self.time_split:
            lines.append("time per step  " + ", ".join(
                f"{100 * v:.0f}% {k}" for k, v in self.time_split.items())
                + " (train/*_fraction in MLflow)")
        if self.online:
            o = self.online
            lines.append(f"online kNN     final {100 * o['final']:.2f}% (epoch "
                         f"{o['final_epoch']:.0f}), best {100 * o['best']:.2f}% (epoch "
                         f"{o['best_epoch']:.0f})")
        if self.monitors:
            lines.append("monitors       " + ", ".join(
                f"{MONITOR_METRICS[k]} {v:.1f}" for k, v in self.monitors.items()
                if k in MONITOR_METRICS) + " at the last epoch (label-free: eval/rankme, "
                "eval/lidar)")
        if self.report is not None:
            lines.append(f"evaluation     (kNN k={self.knn_k}, T={self.knn_temperature:g}) on "
                         f"{self.eval_data}")
            lines += ["  " + row for row in self.report.table().splitlines()]
            if self.report.headline():
                lines.append(f"headline       {self.report.headline()}")
        lines += [f"MLflow run     {self.mlflow_run_id}  (experiment '{self.experiment}')",
                  f"model          {self.model.model_uri if self.model else '(not registered)'}"
                  + (f"  (alias {self.alias}: its first version; sweeps move it on merit)"
                     if self.alias else ""),
                  f"checkpoint     {self.checkpoint_path}",
                  f"open the UI    {ui_command(self.tracking_uri)}"]
        lines += [f"warning        {w}" for w in self.warnings]
        return "\n".join([*lines, bottom])


def new_run_name(cfg: Config) -> str:
    """A unique, readable run name: ``<method>-<backbone>-<YYYYmmdd-HHMMSS>``."""
    return f"{cfg.method.name}-{cfg.model.backbone}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_data_paths(cfg: Config) -> None:
    """Raise ``DataError`` naming the field if any configured data path does not exist."""
    sources = [("data.source", cfg.data.source)]
    if cfg.eval.enabled or cfg.eval.online:
        sources += [(f"eval.{name}", src) for name, src in (("bank", cfg.eval.bank),
                                                             ("query", cfg.eval.query))
                    if src.is_set]
    for name, source in sources:
        check_source(source, name)


def pretrain(cfg: Config, log: Callable[[str], None] = print,
             train_callbacks: Sequence[ray.train.UserCallback] = (),
             run_tags: dict[str, str] | None = None, launched_at: float = 0.0
             ) -> PretrainResult:
    """Run pretraining as ``cfg`` says, evaluate, register; see :class:`PretrainResult`.

    Args:
        cfg: the run's settings.
        log: progress lines (the driver's; workers print their own epoch lines).
        train_callbacks: Ray Train callbacks; a sweep trial passes the one that forwards every
            epoch's report to Tune.
        run_tags: extra tags of the MLflow run (a sweep trial: its parent run and trial id).
        launched_at: when the command started (``time.time()``), for the start-up time
            logged at the first step; 0 = now.

    Raises:
        ConfigError: a setting that cannot work (e.g. more workers than the cluster holds).
        DataError: missing or unusable data.
        ray.train.TrainingFailedError: training failed (the MLflow run is marked FAILED);
            trained in this process (``train.local_mode``), the loop's own error.
    """
    launched_at = launched_at or time.time()
    log = redacting(log)  # a data path or URI in a line may carry a password
    check_data_paths(cfg)  # a wrong path fails now, not after the cluster has started
    uri = resolve_tracking_uri(cfg.tracking)
    teacher = resolve_teacher(cfg, uri)  # so does a distillation's teacher that cannot be read
    init = resolve_init(cfg, uri, teacher)  # and a model.init_from that does not fit
    connect(cfg.train.address)
    nodes = node_resources()
    plan = plan_resources(cfg, nodes)
    run_name = cfg.train.run_name or new_run_name(cfg)
    storage = storage_path(cfg)
    # On several machines, checkpoints and the MLflow store must be reachable from all of them
    # (nodes on one machine, as in ray.cluster_utils.Cluster, share its disk).
    machines = len({n.host for n in nodes})
    check_shared("train.storage_path", storage, machines)
    check_tracking_shared(uri, machines)
    in_process = trains_in_process(cfg, nodes, storage)
    client = tracking_client(uri)
    experiment_id = ensure_experiment(client, cfg.tracking.experiment, uri)
    parent = {RUN_PARENT_TAG: redact(init.source)} if init is not None else {}
    if teacher is not None:
        parent[RUN_TEACHER_TAG] = redact(teacher.source)
    run_id, resumed = find_or_create_run(client, experiment_id, run_name,
                                         {"raysl.method": cfg.method.name, **parent,
                                          **(run_tags or {})})
    result = PretrainResult(run_name, resumed, run_id, uri, cfg.tracking.experiment, "", 0.0, 0.0,
                            "")
    changed = log_params_once(client, run_id, cfg.flat())
    if changed:
        result.warnings.append(f"resumed with changed settings {changed}; MLflow keeps the "
                               "first values as params, config.yaml has the new ones")
    client.log_text(run_id, cfg.to_yaml(), "config.yaml")
    log(f"[raysl] run {run_name}: MLflow run {run_id} at {redact(uri)}")
    log(f"[raysl] resources: {plan.describe(cfg)}")
    if in_process:
        log(f"[raysl] {in_process}")
    if init is not None:
        log(f"[raysl] model: {redact(describe_init(init))}")
    if teacher is not None:
        log(f"[raysl] teacher: {redact(teacher.source)} ({teacher.model.backbone}, "
            f"{teacher.image_size} px), frozen")
    run = _Run(cfg, plan, storage, client, result, log, train_callbacks, launched_at, init,
               teacher, bool(in_process))
    try:
        source = _read_training_data(run)
        split = _eval_data(run, source) if cfg.eval.enabled or cfg.eval.online else None
        checkpoint = _train(run, source, split)
        encoder = build_encoder(cfg.model, cfg.data.channels, cfg.data.image_size)
        with checkpoint.as_directory() as d:  # a temporary local copy when storage is remote
            load_strict(encoder, Path(d) / ENCODER_FILE)
            # Weights and config side by side, per training: `raysl evaluate` rebuilds the
            # encoder from both, and a resumed run's new version does not replace the old one's.
            result.weights_artifact = log_weights(client, run_id, d)
        if cfg.eval.online_knn_every:
            result.online = _online_summary(client, run_id)
        if cfg.eval.enabled and split is not None:
            _evaluate(run, encoder, split)
        if cfg.tracking.register:
            result.model = _register(run, encoder)
        wait_until_reachable(client, run_id, cfg.tracking.flush_timeout_s, log)
    except BaseException as e:
        _mark_failed(client, run_id, e, log)
        raise
    client.set_terminated(run_id, "FINISHED")
    return result


def _mark_failed(client: MlflowClient, run_id: str, error: BaseException,
                 log: Callable[[str], None]) -> None:
    """FAILED in MLflow, with the reason as the ``raysl.failure`` tag.

    A tracking server that fails too must not hide the error that ended the run.
    """
    reason = redact(str(error)).strip().splitlines()  # an MLflow error names its URL
    try:
        client.set_tag(run_id, "raysl.failure",
                       f"{type(error).__name__}: {reason[-1] if reason else ''}"[:5000])
        client.set_terminated(run_id, "FAILED")
    except Exception as tracking_error:  # the run's own error is re-raised by the caller
        log(f"[raysl] could not mark MLflow run {run_id} FAILED: "
            f"{redact(str(tracking_error))}")


@dataclass
class _Run:
    """One pretraining run's settings and handles, passed between its steps."""

    cfg: Config
    plan: ResourcePlan
    storage: str
    client: MlflowClient
    result: PretrainResult  # filled in step by step; holds the run's name, id and store
    log: Callable[[str], None]
    callbacks: Sequence[ray.train.UserCallback] = ()
    launched_at: float = 0.0
    init: InitWeights | None = None  # model.init_from's weights, resolved and checked
    teacher: TeacherWeights | None = None  # a distillation's frozen teacher
    in_process: bool = False  # trained in this process (train.local_mode), not a worker group


def _read_training_data(run: _Run) -> ImageSource:
    cfg, result = run.cfg, run.result
    source = read_source(cfg.data.source,
                         Reading.training(cfg.data, run.plan.augment_resources()),
                         cfg.train.seed)
    result.data, result.data_fingerprint = source.description, source.fingerprint
    Tracker(result.tracking_uri, result.mlflow_run_id, active=True).set_tags(
        run_lineage_tags(source.fingerprint))
    run.log(f"[raysl] data: {source.description}; {source.cache_reason}; {source.timing}")
    for note in source.notes:
        run.log(f"[raysl] data: {note}")
    if source.cache != "none":  # a stream counts its bad files as it decodes them
        _record_bad_files(run, source)
    return source


def _record_bad_files(run: _Run, source: ImageSource) -> None:
    """Bad files skipped, per reason: in the summary, as metrics and as data/skipped.txt."""
    result, run_id = run.result, run.result.mlflow_run_id
    result.skipped, result.skipped_examples = source.skipped, source.skipped_examples
    metrics = {"data/images": float(source.num_images)}
    metrics.update({f"data/skipped_{reason}": float(n) for reason, n in source.skipped.items()})
    Tracker(result.tracking_uri, run_id, active=True).log_metrics(metrics, step=0)
    if source.skipped_examples:
        run.client.log_text(run_id, "\n".join(source.skipped_examples) + "\n",
                            "data/skipped.txt")


def _eval_data(run: _Run, source: ImageSource) -> EvalData | None:
    """The labeled split: ``eval.bank`` (and ``eval.query``), or drawn from the training data.

    Training data without labels and no ``eval.bank`` named: evaluation is skipped with a line
    saying how to name one (an error if online evaluation was asked for).

    Raises:
        ConfigError: online evaluation on unlabeled training data with no ``eval.bank``.
    """
    cfg = run.cfg
    if not cfg.eval.bank.is_set and not source.labeled:
        why = (f"the training data ({source.description}) has no labels; name a labeled split "
               "with --set eval.bank.path=PATH (and eval.query.path=PATH for separate queries)")
        if cfg.eval.online:
            raise ConfigError("eval.bank.path", cfg.eval.bank.path,
                              f"must name labeled data for online evaluation: {why}")
        run.log(f"[raysl] evaluation skipped: {why}")
        run.result.warnings.append(f"not evaluated: {why}")
        return None
    return load_eval_data(cfg, training=None if cfg.eval.bank.is_set else source)


def _train(run: _Run, source: ImageSource, split: EvalData | None) -> ray.train.Checkpoint:
    cfg, plan, result = run.cfg, run.plan, run.result
    images_per_worker = source.num_images // cfg.train.num_workers
    steps_per_epoch = images_per_worker // cfg.batch_size_per_worker
    if steps_per_epoch == 0:
        raise ConfigError("data.batch_size_global", cfg.data.batch_size_global,
                          f"is larger than the {source.num_images} training images allow: each of "
                          f"{cfg.train.num_workers} workers needs at least one full batch")
    if cfg.eval.online_probe and not source.labeled:
        raise ConfigError("eval.online_probe", True,
                          f"needs labeled training data; {source.description} has no labels")
    if cfg.eval.online_probe and split is not None and split.class_names != source.class_names:
        raise ConfigError("eval.online_probe", True,
                          f"needs the training data's classes {source.class_names[:10]} to be "
                          f"eval.bank's {split.class_names[:10]}: the probe learns the first and "
                          "is scored on the second")
    dataset = view_stream(source, cfg.data, plan.augment_tasks, plan.augment_resources(),
                          cfg.train.seed)
    method = catalog.get("method", cfg.method.name)
    method.check_training_set(cfg, source.num_images)
    whole = (whole_image_stream(source, cfg.data, plan.augment_tasks, plan.augment_resources())
             if method.reads_training_set else None)
    note = note_path(run.storage, result.run_name)
    clear_note(note)  # this command may have fixed what stopped an earlier one
    run_dir = "" if "://" in run.storage else str(Path(run.storage) / result.run_name)
    settings = LoopSettings(steps_per_epoch, plan.threads_per_worker, result.tracking_uri,
                            result.mlflow_run_id, result.run_name, len(source.class_names),
                            run.launched_at, "" if run.in_process else note, run_dir,
                            run.in_process)
    run.log(f"[raysl] training {cfg.method.name} on {source.num_images} images: {cfg.train.epochs} "
        f"epoch(s) x {steps_per_epoch} step(s) of {cfg.data.batch_size_global} images")
    # Online evaluation runs on rank 0, in memory: a seeded subset of the split, as arrays.
    split_ref = (ray.put(split.split(cfg.eval.online_limit, cfg.train.seed))
                 if split is not None and cfg.eval.online else None)
    trainer = build_trainer(cfg, dataset, plan, settings, run.storage, split_ref, run.callbacks,
                            _monitor_sample(run, source), whole,
                            ray.put(run.init) if run.init is not None else None,
                            ray.put(run.teacher) if run.teacher is not None else None)
    threads = torch.get_num_threads()  # training in this process sets its worker's
    try:
        fit = trainer.fit()
    except ray.train.TrainingFailedError as e:
        reason = source.stream_failure()  # too many bad images in the stream: say that
        if reason:
            raise DataError(reason) from None
        collapsed = _worker_error(e, RepresentationCollapsed)
        if collapsed:
            raise RepresentationCollapsed(collapsed) from None
        if _waited_out(e):
            raise NodesNotBack(_nodes_not_back(run, plan)) from None
        try:  # a config, data or checkpoint error a worker noted: itself, not a traceback
            raise_noted(note)
        except PERMANENT_ERRORS as noted:
            raise noted from None
        raise
    except PERMANENT_ERRORS:
        raise  # in this process: the worker's own error, as it is
    except Exception:
        if run.in_process and (reason := source.stream_failure()):
            raise DataError(reason) from None
        raise
    finally:
        torch.set_num_threads(threads)  # the evaluation after it runs here too
    # Training's calls were buffered; the driver's own from here on wait for the server.
    wait_until_reachable(run.client, result.mlflow_run_id, cfg.tracking.flush_timeout_s, run.log)
    if source.cache == "none":
        source.tally()
        source.num_images -= sum(source.skipped.values())
        _record_bad_files(run, source)
    checkpoint = fit.checkpoint
    if checkpoint is None and (kept := in_process.pick(None, run_dir, run.in_process)):
        # Nothing left to train, and Ray Train recorded none (a run finished in process).
        checkpoint = ray.train.Checkpoint.from_directory(kept)
    if checkpoint is None:
        raise RuntimeError(f"run {result.run_name} finished without a checkpoint in {run.storage}")
    metrics = fit.metrics or {}
    result.final_loss = float(metrics.get("train/loss", float("nan")))
    result.images_per_s = float(metrics.get("train/images_per_s", 0.0))
    result.time_split = {
        name: float(metrics[f"train/{key}_fraction"])
        for name, key in (("waiting for data", "data_wait"), ("communicating", "comm"),
                          ("computing", "compute"))
        if f"train/{key}_fraction" in metrics}
    result.monitors = {k: float(v) for k, v in metrics.items() if k in MONITOR_METRICS}
    result.checkpoint_path = checkpoint.path
    return checkpoint


def _monitor_sample(run: _Run, source: ImageSource) -> ray.ObjectRef[np.ndarray] | None:
    """The label-free monitors' fixed sample of training images, in the object store."""
    cfg = run.cfg
    if not cfg.eval.monitor_every:
        return None
    images = first_images(source, min(cfg.eval.monitor_samples, source.num_images))
    with torch.device("meta"):  # only its size is needed
        dims = build_encoder(cfg.model, cfg.data.channels, cfg.data.image_size).num_features
    few = (f" (fewer than the encoder's {dims} dimensions: RankMe is at most {len(images)}; "
           "raise eval.monitor_samples)" if len(images) < dims else "")
    run.log(f"[raysl] monitors: RankMe and LiDAR of {len(images)} training images x "
            f"{cfg.eval.monitor_views} views every {cfg.eval.monitor_every} epoch(s){few}")
    return ray.put(images)


def _waited_out(error: ray.train.TrainingFailedError) -> bool:
    """Whether Ray Train gave up placing a worker group (``train.node_wait_s`` ran out).

    By the class's name: Ray keeps it in a private module.
    """
    failure = getattr(error, "controller_failure", None)
    return type(failure).__name__ == "WorkerGroupStartupTimeoutError"


def _nodes_not_back(run: _Run, plan: ResourcePlan) -> str:
    """What happened, where the checkpoints are, and the two ways on."""
    cfg, name = run.cfg, run.result.run_name
    kept = _committed_checkpoint(Path(run.storage) / name) if "://" not in run.storage else ""
    where = f"the last checkpoint ({kept}) is kept" if kept else \
        f"its checkpoints in {redact(run.storage)}/{name} are kept"
    what = (f"train.node_wait_s={cfg.train.node_wait_s:g}: waited that long for the resources "
            f"of {cfg.train.fewest_workers} train worker(s) ({plan.worker_resources()} each), "
            "which the cluster no longer has: a lost node did not come back.")
    resume = (f"Resume it from there once the nodes are back: the same command with --set "
              f"train.run_name={name}")
    if cfg.train.fewest_workers == 1:
        return f"{what} The run is FAILED and {where}. {resume}"
    fewer = (f"train.min_workers=K (1 <= K < {cfg.train.num_workers})" if not cfg.train.elastic
             else f"train.min_workers below its {cfg.train.min_workers}")
    return (f"{what} The run is FAILED and {where}. {resume}; or go on now with the workers "
            f"that fit: --set train.run_name={name} --set {fewer}")


def _committed_checkpoint(run_dir: Path) -> str:
    """The newest ``checkpoint_*`` directory of a local run directory, or ""."""
    found = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    return str(found[-1]) if found else ""


def _worker_error(error: ray.train.TrainingFailedError, kind: type[Exception]) -> str:
    """The message of a ``kind`` error raised on a train worker, or ""."""
    for failure in getattr(error, "worker_failures", {}).values():
        for exc in (failure, getattr(failure, "cause", None), failure.__cause__):
            if isinstance(exc, kind):
                return str(exc)
    return ""


def _online_summary(client: MlflowClient, run_id: str) -> dict[str, float]:
    """Final and best online kNN accuracy with their epochs, also logged as metrics."""
    history = sorted(client.get_metric_history(run_id, ONLINE_KNN), key=lambda m: m.step)
    if not history:
        return {}
    best = max(history, key=lambda m: m.value)
    out = {"final": history[-1].value, "final_epoch": float(history[-1].step),
           "best": best.value, "best_epoch": float(best.step)}
    Tracker(client.tracking_uri, run_id, active=True).log_metrics(
        {f"{ONLINE_KNN}_best": best.value, "eval/online_knn_best_epoch": float(best.step)},
        step=history[-1].step)
    return out


def _evaluate(run: _Run, encoder: Encoder, split: EvalData) -> None:
    cfg, result, log = run.cfg, run.result, run.log
    torch.set_num_threads(os.cpu_count() or 1)
    log(f"[raysl] evaluation ({', '.join(cfg.eval.protocols)}) on {split.description}")
    report = evaluate_encoders(with_baseline(cfg, encoder), split, cfg.eval, cfg.data.image_size,
                               cfg.train.seed, log)
    result.report = report
    result.knn = {m: r["knn_top1"] for m, r in report.results.items() if "knn_top1" in r}
    result.eval_data, result.knn_k = split.description, cfg.eval.knn_k_for(len(split.bank_labels))
    result.knn_temperature = cfg.eval.knn_temperature
    report.log_to(run.client, result.mlflow_run_id, step=cfg.train.epochs)


def _register(run: _Run, encoder: Encoder) -> RegisteredEncoder | None:
    cfg, result = run.cfg, run.result
    run_id, uri = result.mlflow_run_id, result.tracking_uri
    knn = (f"kNN top-1 {100 * result.knn[TRAINED]:.2f}% (k={result.knn_k}, "
           f"T={result.knn_temperature:g}; random init {100 * result.knn[RANDOM_INIT]:.2f}%, raw "
           f"pixels {100 * result.knn[PIXELS]:.2f}%) on {result.eval_data}. "
           if TRAINED in result.knn and RANDOM_INIT in result.knn else "")
    lin = (result.report.results.get(TRAINED, {}) if result.report else {}).get("linear_top1")
    if lin is not None:
        knn += f"Linear probe top-1 {100 * lin:.2f}%. "
    description = version_description(cfg, encoder, run_id, knn, data=result.data)
    tags = {"run_name": result.run_name, "dataset": result.data}
    if result.report is not None:
        tags.update(result.report.tags())
    registered = register_encoder(encoder, cfg, run_id, uri, cfg.registered_model_name,
                                  description, tags, weights=result.weights_artifact)
    if registered is not None:
        result.alias = registered.alias
    return registered
