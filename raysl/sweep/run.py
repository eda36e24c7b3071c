"""``raysl tune``: a sweep as a Ray Tune experiment whose trials are full pretraining runs.

Each trial is a Tune function that calls :func:`raysl.pretrain.pretrain` (the very code path of
``raysl pretrain``), which builds and fits a ``TorchTrainer``; every epoch's report reaches Tune
through ``TuneReportCallback``, so schedulers stop bad trials on the online kNN (or probe)
accuracy. MLflow gets one parent run per sweep and one child run per trial. At the end the best
completed trial is evaluated with the full suite, registered, and the alias moves to it only if it
beats the current champion on the same evaluation.

Running the same command again resumes: ``Tuner.restore`` keeps finished trials, and unfinished
ones resume their Ray Train run (named after the trial) from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import ray
import ray.train
import ray.tune
import yaml
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from ray.tune.experiment import Trial

from raysl.config import Config, ConfigError, EvalConfig, Protocol
from raysl.eval.models import (
    WEIGHTS_TAG,
    ModelNotFoundError,
    load_model,
    log_weights,
    logged_weights,
)
from raysl.eval.splits import LabeledSplit
from raysl.eval.suite import (
    TRAINED,
    EvalReport,
    evaluate_encoders,
    load_labeled_split,
    with_baseline,
)
from raysl.nn.backbones import Encoder, encoder_info
from raysl.sweep import results as res
from raysl.sweep.champion import ChampionDecision, NotComparable, crown
from raysl.sweep.spec import CHAMPION_METRICS, SearchDim, Sweep
from raysl.tracking.mlflow import (
    RUN_NAME_TAG,
    Tracker,
    ensure_experiment,
    find_or_create_run,
    log_blobs,
    log_params_once,
    resolve_tracking_uri,
    ui_command,
)
from raysl.tracking.registry import RegisteredEncoder, log_and_register
from raysl.train.trainer import cluster_resources, connect

SWEEP_TAG = "raysl.sweep"  # on the parent and every child run: the sweep's name
TRIAL_TAG = "raysl.trial_id"  # on child runs
FINGERPRINT_TAG = "raysl.sweep_fingerprint"  # parent: hash of the definition it started with
STATUS_TAG = "raysl.trial_status"  # child runs: completed / stopped early / error
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests child runs under the parent in the UI
PROGRESS_EVERY_S = 30.0


@dataclass(frozen=True)
class TrialPlan:
    """Resources of one trial and how many run at once."""

    cpus_per_worker: float
    cpus: float  # driver + Ray Data + workers
    gpus: int
    concurrent: int

    def describe(self, sweep: Sweep) -> str:
        """One line for the log."""
        t = sweep.base.train
        gpu = f" + {self.gpus} GPU" if self.gpus else ""
        return (f"each trial: {self.cpus:g} CPU{gpu} ({t.num_workers} worker(s) x "
                f"{self.cpus_per_worker:g} CPU, {t.data_cpus:g} for Ray Data, "
                f"{sweep.settings.trial_driver_cpus:g} for its driver); {self.concurrent} at once")


def plan_trials(sweep: Sweep, cluster_cpus: float, cluster_gpus: float) -> TrialPlan:
    """Per-trial resources and concurrency, so that every trial's Ray Train can start.

    Train starts only when it gets all its workers at once, and a trial's Ray Data needs CPU
    beside them, so trials are budgeted whole: Tune never starts more than fit.

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
    return TrialPlan(cpus_per_worker, cpus, gpus, concurrent)


def trial_overrides(sweep: Sweep, plan: TrialPlan, storage: str, uri: str) -> dict[str, Any]:
    """Settings the sweep imposes on every trial (dotted keys).

    Trials run in their own working directories on any node, so paths are made absolute; they
    are judged online, every epoch, so the online metric is on; the full evaluation and the
    registration happen once, for the best trial, at the end.
    """
    base = sweep.base
    out: dict[str, Any] = {
        "train.cpus_per_worker": plan.cpus_per_worker, "train.storage_path": storage,
        "tracking.tracking_uri": uri, "tracking.register": False, "eval.enabled": False,
        "eval.online_knn_every": 1,
        "eval.online_probe": base.eval.online_probe
        or sweep.settings.metric == "eval/online_probe_top1",
    }
    for name, src in (("data.source", base.data.source), ("eval.bank", base.eval.bank),
                      ("eval.query", base.eval.query)):
        if src.path and "://" not in src.path and not os.path.isabs(src.path):
            out[f"{name}.path"] = str(Path(src.path).resolve())
    return out


# ---------------------------------------------------------------------------------------------
# The trial
# ---------------------------------------------------------------------------------------------


def run_trial(params: dict[str, Any], sweep: dict[str, Any], overrides: dict[str, Any],
              parent_run_id: str) -> None:
    """One Tune trial: a full pretraining run with the sampled ``params``.

    The Ray Train run and the MLflow child run are named ``<sweep>-<trial id>``: a restored or
    retried trial resumes both from the last checkpoint.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    from raysl.pretrain import pretrain  # imports Ray Train; only trials need it here

    spec = Sweep.from_dict(sweep)
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = spec.trial_config(params, trial_id, overrides)
    pretrain(cfg, log=lambda line: print(f"[trial {trial_id}] {line}", flush=True),
             train_callbacks=[TuneReportCallback()],  # type: ignore[no-untyped-call]
             run_tags={PARENT_TAG: parent_run_id, SWEEP_TAG: spec.name, TRIAL_TAG: trial_id,
                       "raysl.kind": "sweep trial"})


class ProgressTable(ray.tune.Callback):
    """A live table of the trials (status, parameters, epoch, metric) every ``every_s`` seconds.

    Plus one line when a trial completes, is stopped or fails.
    """

    def __init__(self, fields: list[str], metric: str, epochs: int,
                 every_s: float = PROGRESS_EVERY_S) -> None:
        self.fields, self.metric, self.epochs, self.every_s = fields, metric, epochs, every_s
        self._last = 0.0

    def _status(self, trial: Trial) -> str:
        epoch = int((trial.last_result or {}).get("epoch", 0))
        if trial.status == Trial.TERMINATED:
            return res.ended_status(epoch, self.epochs)
        return {Trial.ERROR: res.ERROR, Trial.RUNNING: res.RUNNING}.get(trial.status,
                                                                       trial.status.lower())

    def _row(self, trial: Trial) -> res.TrialRow:
        last = trial.last_result or {}
        return res.TrialRow(trial.trial_id, {f: trial.config.get(f) for f in self.fields},
                            self._status(trial), int(last.get("epoch", 0)),
                            float(last.get(self.metric, float("nan"))))

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        """Print the table if ``every_s`` has passed (Tune calls this every loop step)."""
        if time.monotonic() - self._last >= self.every_s and trials:
            self._last = time.monotonic()
            rows = [self._row(t) for t in trials]
            print(f"[raysl] sweep progress ({res.status_counts(rows)}):\n"
                  + res.progress_table(rows, self.fields, self.metric), flush=True)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial,
                          **info: Any) -> None:
        """One line: completed, or stopped early by the scheduler."""
        row = self._row(trial)
        row.status = res.ended_status(row.epochs, self.epochs)  # Tune has not marked it yet
        print(f"[raysl] trial {trial.trial_id} {row.status} at epoch {row.epochs}: "
              f"{self.metric} {100 * row.metric:.2f}%", flush=True)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial,
                       **info: Any) -> None:
        """One line; the trial's own log above has the traceback."""
        print(f"[raysl] trial {trial.trial_id} failed (see its log above)", flush=True)


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """What a sweep produced and where it is."""

    name: str
    parent_run_id: str
    tracking_uri: str
    experiment_path: str  # Tune state: run the same command again to resume from it
    storage: str = ""  # where trials checkpoint (Tune's and Train's storage_path)
    resumed: bool = False
    rows: list[res.TrialRow] = field(default_factory=list)
    best: res.TrialRow | None = None
    report: EvalReport | None = None  # the best trial's full evaluation
    model: RegisteredEncoder | None = None
    decision: ChampionDecision | None = None
    text: str = ""  # the final summary (stored in the parent run as sweep/summary.txt)
    interrupted: bool = False  # trials left: the same command resumes the sweep
    finished_earlier: bool = False  # the sweep had already finished; nothing ran

    def summary(self) -> str:
        """The summary printed at the end."""
        return self.text


def run_sweep(sweep: Sweep, log: Callable[[str], None] = print) -> SweepResult:
    """Run (or resume) ``sweep``; see :class:`SweepResult`.

    Raises:
        ConfigError: settings that cannot work on this cluster, or a different sweep under the
            same name.
    """
    base = sweep.base
    storage = base.train.storage_path or str(Path("ray_results").resolve())
    uri = resolve_tracking_uri(base.tracking)
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, base.tracking.experiment, uri)
    path = f"{storage.rstrip('/')}/{sweep.name}"
    done = _finished_parent(client, experiment_id, sweep)
    if done is not None:
        return done
    connect(base.train.address)
    plan = plan_trials(sweep, *cluster_resources())
    parent_id, resumed = find_or_create_run(
        client, experiment_id, _parent_name(sweep),
        {"raysl.kind": "sweep", SWEEP_TAG: sweep.name, FINGERPRINT_TAG: sweep.fingerprint(),
         "raysl.method": base.method.name})
    result = SweepResult(sweep.name, parent_id, uri, path, storage, resumed)
    try:
        _log_definition(client, parent_id, sweep)
        log(f"[raysl] sweep {sweep.name}{' (resuming)' if resumed else ''}: "
            f"{sweep.num_trials} trial(s) of {base.method.name}, {sweep.settings.search} search, "
            f"{sweep.settings.scheduler.name} on {sweep.settings.metric}; MLflow parent run "
            f"{parent_id} at {uri}")
        log(f"[raysl] {plan.describe(sweep)}")
        grid = _tuner(sweep, plan, path, storage, uri, parent_id, log).fit()
        result.rows = _rows(grid, sweep)
        # Unfinished trials, or trials not even created yet (Tune creates them lazily).
        if (len(result.rows) > grid.num_terminated + grid.num_errors
                or len(result.rows) < sweep.num_trials):
            log(f"[raysl] sweep {sweep.name} interrupted: run the same command to resume it")
            result.interrupted = True
            result.text = _summary(sweep, result)
            return result
        _close_child_runs(client, experiment_id, parent_id, result.rows)
        result.best = res.best_trial(result.rows)
        if result.best is not None and sweep.settings.champion.register:
            _crown_best(sweep, result, client, log)
        result.text = _summary(sweep, result)
        _log_results(client, parent_id, sweep, result)
    except BaseException:
        client.set_terminated(parent_id, "FAILED")
        raise
    client.set_terminated(parent_id, "FINISHED")
    return result


def _parent_name(sweep: Sweep) -> str:
    return f"sweep-{sweep.name}"


def _finished_parent(client: MlflowClient, experiment_id: str, sweep: Sweep
                     ) -> SweepResult | None:
    """A sweep of this name that already finished: its stored summary (nothing is re-run).

    Raises:
        ConfigError: a sweep of this name exists with a different definition.
    """
    found = client.search_runs([experiment_id],
                               f"tags.`{RUN_NAME_TAG}` = '{_parent_name(sweep)}'", max_results=1)
    if not found:
        return None
    run = found[0]
    if run.data.tags.get(FINGERPRINT_TAG, sweep.fingerprint()) != sweep.fingerprint():
        raise ConfigError("name", sweep.name,
                          f"a sweep named {sweep.name!r} already exists (MLflow run "
                          f"{run.info.run_id}) with a different definition; resuming it would "
                          "mix two searches. Pick a new name (--set name=...) or restore the "
                          "original file")
    if run.info.status != RunStatus.to_string(RunStatus.FINISHED):
        return None
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        text = Path(client.download_artifacts(run.info.run_id, "sweep/summary.txt", d)).read_text()
    note = (f"\n[raysl] sweep {sweep.name} had already finished (MLflow run {run.info.run_id}); "
            "nothing was re-run. For a new sweep, choose a new name: --set name=...")
    return SweepResult(sweep.name, run.info.run_id, client.tracking_uri, "", resumed=True,
                       text=text + note, finished_earlier=True)


def _log_definition(client: MlflowClient, parent_id: str, sweep: Sweep) -> None:
    s = sweep.settings
    params = {"search": s.search, "scheduler": s.scheduler.name, "metric": s.metric,
              "mode": s.mode, "num_samples": s.num_samples, "num_trials": sweep.num_trials,
              "grace_period": s.scheduler.grace_period,
              "reduction_factor": s.scheduler.reduction_factor, "method": sweep.base.method.name,
              **{f"space.{d.field}": d.describe() for d in sweep.space}}
    log_params_once(client, parent_id, params)
    client.log_text(parent_id, sweep.definition(), "sweep/definition.yaml")


def _tuner(sweep: Sweep, plan: TrialPlan, path: str, storage: str, uri: str, parent_id: str,
           log: Callable[[str], None]) -> ray.tune.Tuner:
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, sweep=sweep.to_dict(),
                                 overrides=trial_overrides(sweep, plan, storage, uri),
                                 parent_run_id=parent_id),
        {"CPU": sweep.settings.trial_driver_cpus})
    if ray.tune.Tuner.can_restore(path):
        log(f"[raysl] restoring the sweep from {path}: finished trials are kept, unfinished ones "
            "resume from their checkpoints")
        return ray.tune.Tuner.restore(path, trainable, resume_unfinished=True,
                                      resume_errored=True)
    s = sweep.settings
    return ray.tune.Tuner(
        trainable,
        param_space={d.field: _domain(d, s.search) for d in sweep.space},
        tune_config=ray.tune.TuneConfig(
            metric=s.metric, mode=s.mode, num_samples=s.num_samples,
            max_concurrent_trials=plan.concurrent, scheduler=_scheduler(sweep),
            search_alg=_searcher(sweep, plan)),
        run_config=ray.tune.RunConfig(
            name=sweep.name, storage_path=storage, verbose=0,
            failure_config=ray.tune.FailureConfig(max_failures=s.max_failures),
            callbacks=[ProgressTable(sweep.fields, s.metric, sweep.base.train.epochs)]))


def _domain(dim: SearchDim, search: str) -> Any:
    values = list(dim.values)
    if dim.kind == "grid" or (dim.kind == "choice" and search == "grid"):
        return ray.tune.grid_search(values)
    if dim.kind == "choice":
        return ray.tune.choice(values)
    if dim.kind == "uniform":
        return ray.tune.uniform(*values)
    if dim.kind == "loguniform":
        return ray.tune.loguniform(*values)
    return ray.tune.randint(*values)


def _scheduler(sweep: Sweep) -> Any:
    sc, epochs = sweep.settings.scheduler, sweep.base.train.epochs
    if sc.name == "asha":
        # Time in epochs (the `epoch` every report carries), not Tune iterations: a resumed
        # trial's first report is its next epoch, not iteration 1.
        return ray.tune.schedulers.ASHAScheduler(time_attr="epoch", max_t=epochs,
                                                 grace_period=sc.grace_period,
                                                 reduction_factor=sc.reduction_factor)
    if sc.name == "median":
        return ray.tune.schedulers.MedianStoppingRule(
            time_attr="epoch", grace_period=sc.grace_period,
            min_samples_required=sc.min_samples_required,
            # Never PAUSE a trial to let others catch up: a paused trial restarts its Ray Train
            # run from a checkpoint, every epoch.
            min_time_slice=epochs + 1)
    return ray.tune.schedulers.FIFOScheduler()  # type: ignore[no-untyped-call]


def _searcher(sweep: Sweep, plan: TrialPlan) -> Any:
    seed = sweep.base.train.seed
    if sweep.settings.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Its own concurrency limit: Tune ignores max_concurrent_trials for a generator instance.
    # The same seed samples the same trials.
    return BasicVariantGenerator(max_concurrent=plan.concurrent, random_state=seed)


# ---------------------------------------------------------------------------------------------
# After the trials
# ---------------------------------------------------------------------------------------------

_TRIAL_ID = re.compile(r"_([0-9a-f]{5}_\d{5})_")


def _rows(grid: ray.tune.ResultGrid, sweep: Sweep) -> list[res.TrialRow]:
    metric, epochs = sweep.settings.metric, sweep.base.train.epochs
    rows = []
    for r in (grid[i] for i in range(len(grid))):
        metrics = r.metrics or {}
        match = _TRIAL_ID.search(Path(r.path).name)
        trial_id = str(metrics.get("trial_id") or (match.group(1) if match else r.path))
        params = {f: (r.config or {}).get(f) for f in sweep.fields}  # {} if it never started
        history: list[tuple[int, float]] = []
        df = r.metrics_dataframe  # one row per report (None before the first)
        if df is not None and metric in df.columns and "epoch" in df.columns:
            history = [(int(e), float(v)) for e, v in zip(df["epoch"], df[metric], strict=True)
                       if e == e]  # e != e: NaN
        reached = int(metrics.get("epoch", 0))
        status = res.ERROR if r.error is not None else res.ended_status(reached, epochs)
        error = str(r.error).strip().splitlines()[-1][:200] if r.error is not None else ""
        try:  # the trial's batch and lr, for the table
            cfg = sweep.config_with(params)
        except ConfigError:  # a trial that never started has no sampled params
            cfg = sweep.base
        rows.append(res.TrialRow(trial_id, params, status, reached,
                                 float(metrics.get(metric, float("nan"))), history,
                                 cfg.data.batch_size_global, cfg.batch_size_per_worker,
                                 cfg.optim.peak_lr(cfg.data.batch_size_global), error=error,
                                 checkpoint=str(metrics.get("checkpoint_path") or "")))
    return rows


def _close_child_runs(client: MlflowClient, experiment_id: str, parent_id: str,
                      rows: list[res.TrialRow]) -> None:
    """Link rows to their MLflow child runs; close them FINISHED, KILLED (stopped) or FAILED.

    Tune ends a stopped trial abruptly (its run is left RUNNING or FAILED) and may end a
    completed one at its last report, before pretraining closes its run; the sweep closes them.
    """
    children = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}'",
                                  max_results=10000)
    by_trial = {c.data.tags.get(TRIAL_TAG): c for c in children}
    for row in rows:
        child = by_trial.get(row.trial_id)
        if child is None:
            continue
        row.run_id = child.info.run_id
        client.set_tag(row.run_id, STATUS_TAG, row.status)
        final = {res.COMPLETED: "FINISHED", res.STOPPED: "KILLED"}.get(row.status, "FAILED")
        if child.info.status != final:
            client.set_terminated(row.run_id, final)


def _crown_best(sweep: Sweep, result: SweepResult, client: MlflowClient,
                log: Callable[[str], None]) -> None:
    """Evaluate the best trial's encoder, register it, move the alias if it wins."""
    best = result.best
    assert best is not None
    if not best.run_id:
        log(f"[raysl] no MLflow run found for the best trial {best.trial_id}: nothing registered")
        return
    base, champion = sweep.base, sweep.settings.champion
    uri = result.tracking_uri
    if not logged_weights(client, best.run_id):
        # Tune ends a trial at its last report (ASHA's max_t), before pretraining logs the
        # weights: adopt them from the trial's last Ray Train checkpoint.
        with _checkpoint(best.checkpoint, result.storage).as_directory() as d:
            log_weights(client, best.run_id, d)
    loaded = load_model(f"runs:/{best.run_id}", uri)
    eval_cfg = _champion_eval(base.eval, champion.metric)
    log(f"[raysl] evaluating the best trial {best.trial_id} ({', '.join(eval_cfg.protocols)})")
    split = load_labeled_split(eval_cfg, base.data.channels, base.data.effective_decode_size,
                               base.train.seed)
    trial_cfg = dataclasses.replace(loaded.config, eval=eval_cfg)
    report = evaluate_encoders(with_baseline(trial_cfg, loaded.encoder), split, eval_cfg,
                               loaded.encoder.image_size, base.train.seed, log)
    result.report = report
    report.log_to(client, best.run_id, step=base.train.epochs)
    name = base.tracking.registered_model or f"raysl-{base.method.name}-{base.model.backbone}"
    earlier = client.search_model_versions(f"name='{name}' and run_id='{best.run_id}'")
    version = str(earlier[0].version) if earlier else ""  # an interrupted end of this sweep
    if not version:
        tags = {**report.tags(), WEIGHTS_TAG: logged_weights(client, best.run_id),
                SWEEP_TAG: sweep.name,
                "raysl.sweep_run": result.parent_run_id, TRIAL_TAG: best.trial_id,
                "method": base.method.name, "eval.data": split.description[:5000]}
        registered = log_and_register(loaded.encoder, best.run_id, uri, name,
                                      _description(sweep, best, loaded.encoder, report),
                                      tags)
        assert registered is not None
        version = registered.version
    result.model = RegisteredEncoder(name, version, f"models:/{name}/{version}")
    ours = report.results[TRAINED][champion.metric]
    score = _scorer(name, version, ours, split, eval_cfg, champion.metric, uri, base)
    result.decision = crown(client, name, champion.alias, version, champion.metric, score)
    log(f"[raysl] {result.decision.summary(name, champion.metric)}")


def _checkpoint(path: str, storage: str) -> ray.train.Checkpoint:
    """The Ray Train checkpoint at ``path`` (as Tune reported it), on ``storage``'s filesystem."""
    if not path:
        raise RuntimeError("the best trial reported no checkpoint")
    filesystem = None
    if "://" in storage:
        import pyarrow.fs

        filesystem = pyarrow.fs.FileSystem.from_uri(storage)[0]
    return ray.train.Checkpoint(path, filesystem=filesystem)


def _champion_eval(cfg: EvalConfig, metric: str) -> EvalConfig:
    """The suite run on the best trial: the base's protocols plus the champion metric's."""
    needed = CHAMPION_METRICS[metric]
    protocols = cfg.protocols if needed in cfg.protocols else (*cfg.protocols, needed)
    return dataclasses.replace(cfg, enabled=True, protocols=protocols)  # type: ignore[arg-type]


def _scorer(name: str, version: str, ours: float, split: LabeledSplit, eval_cfg: EvalConfig,
            metric: str, uri: str, base: Config) -> Callable[[str], float]:
    """Scores registry URIs on the sweep's split: the challenger's score is already known."""
    protocol = cast(Protocol, CHAMPION_METRICS[metric])
    just_metric = dataclasses.replace(eval_cfg, protocols=(protocol,),
                                      baselines=False, plots=False)

    def score(model_uri: str) -> float:
        if model_uri == f"models:/{name}/{version}":
            return ours
        try:
            other = load_model(model_uri, uri)
        except ModelNotFoundError as e:
            raise NotComparable(str(e)) from None
        channels = other.encoder.in_channels
        if channels != base.data.channels:
            raise NotComparable(f"it takes {channels}-channel images, this sweep's split has "
                                f"{base.data.channels}")
        report = evaluate_encoders({TRAINED: other.encoder}, split, just_metric,
                                   other.encoder.image_size, base.train.seed, lambda _: None)
        return report.results[TRAINED][metric]

    return score


def _description(sweep: Sweep, best: res.TrialRow, encoder: Encoder, report: EvalReport) -> str:
    base, info = sweep.base, encoder_info(encoder)
    results = "; ".join(f"{k} {100 * v:.2f}%" for k, v in report.results[TRAINED].items())
    return (f"Best trial ({best.trial_id}: {best.params_text()}) of sweep {sweep.name}: "
            f"{base.method.name} {base.model.backbone} (width {base.model.effective_width}), "
            f"{base.train.epochs} epochs. {sweep.settings.metric} "
            f"{100 * best.metric:.2f}% during training; on {report.split}: {results}. "
            f"Input: (B, {info['in_channels']}, H, W) images, float in [0, 1] or uint8, "
            f"pretrained at {info['image_size']} px; output: (B, {info['num_features']}) "
            f"features. MLflow run {best.run_id}.")


def _summary(sweep: Sweep, result: SweepResult) -> str:
    s, rows = sweep.settings, result.rows
    sc = s.scheduler
    how = {"asha": f"ASHA (grace {sc.grace_period} epoch(s), reduction {sc.reduction_factor:g})",
           "median": f"median stopping (grace {sc.grace_period} epoch(s))",
           "fifo": "no early stopping"}[sc.name]
    best_id = result.best.trial_id if result.best else ""
    lines = ["", "=" * 30 + " raysl tune: summary " + "=" * 30,
             f"sweep          {sweep.name}{'  (resumed)' if result.resumed else ''}: "
             f"{len(rows)} trial(s): {res.status_counts(rows)}",
             "space          " + "; ".join(f"{d.field} {d.describe()}" for d in sweep.space),
             f"search         {s.search}, {how}, on {s.metric} ({s.mode})",
             f"batch sizes    data.batch_size_global is over all {sweep.base.train.num_workers} "
             f"worker(s); lr = optim.base_lr x batch_size_global / 256",
             "", res.table(rows, sweep.fields, s.metric, best_id), ""]
    if result.interrupted:
        lines.append("interrupted    run the same command again to resume "
                     f"({result.experiment_path})")
    elif result.best is None:
        lines.append("best           no trial completed: nothing registered")
    else:
        b = result.best
        lines.append(f"best           trial {b.trial_id}: {b.params_text()}; {s.metric} "
                     f"{100 * b.metric:.2f}% (MLflow run {b.run_id})")
    if result.report is not None:
        lines.append(f"evaluation     of the best trial on {result.report.split}")
        lines += ["  " + row for row in result.report.table().splitlines()]
    if result.model is not None:
        lines.append(f"registered     {result.model.model_uri}")
    if result.decision is not None and result.model is not None:
        lines.append(f"{s.champion.alias:<15}"
                     f"{result.decision.summary(result.model.name, s.champion.metric)}")
    lines += [f"MLflow         parent run {result.parent_run_id}, one child run per trial",
              f"Tune state     {result.experiment_path} (the same command resumes the sweep)",
              f"open the UI    {ui_command(result.tracking_uri)}"]
    return "\n".join([*lines, "=" * 81])


def _log_results(client: MlflowClient, parent_id: str, sweep: Sweep, result: SweepResult
                 ) -> None:
    s, rows = sweep.settings, result.rows
    best_id = result.best.trial_id if result.best else ""
    files: dict[str, bytes | str] = {
        "sweep/results.txt": res.table(rows, sweep.fields, s.metric, best_id) + "\n",
        "sweep/results.csv": res.to_csv(rows, sweep.fields, s.metric),
        "sweep/summary.txt": result.text + "\n",
    }
    if rows:
        files["sweep/params_vs_metric.png"] = res.plot_params(rows, sweep.space, s.metric,
                                                              best_id)
        files["sweep/curves.png"] = res.plot_curves(rows, s.metric, best_id)
    metrics = {f"sweep/trials_{st.replace(' ', '_')}": float(sum(r.status == st for r in rows))
               for st in (res.COMPLETED, res.STOPPED, res.ERROR)}
    tags = {}
    if result.best is not None:
        best = result.best
        metrics[f"{s.metric}_best_trial"] = best.metric
        tags.update({"raysl.best_trial": best.trial_id, "raysl.best_run_id": best.run_id})
        files["sweep/best_params.yaml"] = yaml.safe_dump(
            {"trial": best.trial_id, "mlflow_run_id": best.run_id, "params": best.params},
            sort_keys=False)
        # The base config with the best parameters: `raysl pretrain --config` on it retrains it.
        files["sweep/best_config.yaml"] = sweep.config_with(best.params).to_yaml()
        if result.report is not None:
            metrics.update({f"best/{k.removeprefix('eval/')}": v
                            for k, v in result.report.metrics().items()})
    if result.decision is not None and result.model is not None:
        tags["raysl.champion"] = result.decision.summary(result.model.name, s.champion.metric)
        metrics["champion/promoted"] = float(result.decision.promoted)
        if result.decision.incumbent_score is not None:
            metrics["champion/incumbent_score"] = result.decision.incumbent_score
        metrics["champion/challenger_score"] = result.decision.challenger_score
    tracker = Tracker(client.tracking_uri, parent_id, active=True)
    tracker.log_metrics(metrics, step=0)
    tracker.set_tags(tags)
    log_blobs(client, parent_id, files)
