"""``raysl tune``: a sweep as a Ray Tune experiment whose trials are full pretraining runs.

The jobs of a sweep, one module each: resources (:mod:`~raysl.sweep.plan`), the Tune objects
(:mod:`~raysl.sweep.tuner`), live progress (:mod:`~raysl.sweep.progress`), the MLflow parent and
child runs (:mod:`~raysl.sweep.runs`), the champion (:mod:`~raysl.sweep.crown`) and the
result and its summary (:mod:`~raysl.sweep.outcome`). This module runs them in order.

Running the same command again resumes: ``Tuner.restore`` keeps finished trials, and unfinished
ones resume their Ray Train run (named after the trial) from its last checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import ray.tune

from raysl.cluster.connect import connect
from raysl.cluster.nodes import cluster_resources, node_resources
from raysl.cluster.storage import storage_path
from raysl.console import redacting
from raysl.errors import ConfigError
from raysl.sweep import results as res
from raysl.sweep.crown import crown_best
from raysl.sweep.outcome import SweepResult, log_results, summary_text
from raysl.sweep.plan import plan_trials
from raysl.sweep.runs import close_child_runs, finished_summary, open_parent
from raysl.sweep.spec import Sweep
from raysl.sweep.tuner import build_tuner
from raysl.tracking.mlflow import ensure_experiment, resolve_tracking_uri, tracking_client


def run_sweep(sweep: Sweep, log: Callable[[str], None] = print) -> SweepResult:
    """Run (or resume) ``sweep``; see :class:`SweepResult`.

    Raises:
        ConfigError: settings that cannot work on this cluster, or a different sweep under the
            same name.
    """
    log = redacting(log)  # a data path or URI in a line may carry a password
    base = sweep.base
    storage = storage_path(base)
    uri = resolve_tracking_uri(base.tracking)
    client = tracking_client(uri)
    experiment_id = ensure_experiment(client, base.tracking.experiment, uri)
    path = f"{storage.rstrip('/')}/{sweep.name}"
    done = finished_summary(client, experiment_id, sweep)
    if done is not None:
        run_id, text = done
        note = (f"\n[raysl] sweep {sweep.name} had already finished (MLflow run {run_id}); "
                "nothing was re-run. For a new sweep, choose a new name: --set name=...")
        return SweepResult(sweep.name, run_id, uri, "", resumed=True, text=text + note,
                           finished_earlier=True)
    connect(base.train.address)
    plan = plan_trials(sweep, *cluster_resources(), in_process=_trials_in_process(sweep, storage))
    parent_id, resumed = open_parent(client, experiment_id, sweep)
    result = SweepResult(sweep.name, parent_id, uri, path, storage, resumed)
    try:
        log(f"[raysl] sweep {sweep.name}{' (resuming)' if resumed else ''}: "
            f"{sweep.num_trials} trial(s) of {base.method.name}, {sweep.settings.search} search, "
            f"{sweep.settings.scheduler.name} on {sweep.settings.metric}; MLflow parent run "
            f"{parent_id} at {uri}")
        log(f"[raysl] {plan.describe(sweep)}")
        grid = build_tuner(sweep, plan, path, storage, uri, parent_id, log).fit()
        result.rows = _rows(grid, sweep)
        # Unfinished trials, or trials not even created yet (Tune creates them lazily).
        if (len(result.rows) > grid.num_terminated + grid.num_errors
                or len(result.rows) < sweep.num_trials):
            log(f"[raysl] sweep {sweep.name} interrupted: run the same command to resume it")
            result.interrupted = True
            result.text = summary_text(sweep, result)
            return result
        close_child_runs(client, experiment_id, parent_id, result.rows)
        result.best = res.best_trial(result.rows)
        if result.best is not None and sweep.settings.champion.register:
            crown_best(sweep, result, client, log)
        result.text = summary_text(sweep, result)
        log_results(client, parent_id, sweep, result)
    except BaseException:
        client.set_terminated(parent_id, "FAILED")
        raise
    client.set_terminated(parent_id, "FINISHED")
    return result


def _trials_in_process(sweep: Sweep, storage: str) -> bool:
    """Whether every trial trains in its own process (one worker, one node; ``train.local_mode``).

    Decided once, on the base config: not when the worker count is itself swept.
    """
    from raysl.train.trainer import trains_in_process  # torch and Ray Train: the sweep's own

    swept = {"train.num_workers", "train.min_workers"} & set(sweep.fields)
    if swept and sweep.base.train.local_mode == "on":
        raise ConfigError("train.local_mode", "on", f"cannot hold for every trial: the sweep "
                          f"varies {sorted(swept)}; use auto or off")
    return not swept and bool(trains_in_process(sweep.base, node_resources(), storage))


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

