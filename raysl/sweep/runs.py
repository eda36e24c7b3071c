"""A sweep's MLflow runs: one parent per sweep, one child per trial, found again on resume."""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from raysl.errors import ConfigError
from raysl.sweep import results as res
from raysl.sweep.spec import Sweep
from raysl.tracking.mlflow import RUN_NAME_TAG, find_or_create_run, log_params_once

SWEEP_TAG = "raysl.sweep"  # on the parent and every child run: the sweep's name
TRIAL_TAG = "raysl.trial_id"  # on child runs
FINGERPRINT_TAG = "raysl.sweep_fingerprint"  # parent: hash of the definition it started with
STATUS_TAG = "raysl.trial_status"  # child runs: completed / stopped early / error
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests child runs under the parent in the UI


def parent_name(sweep: Sweep) -> str:
    """The parent run's name (its resume key): ``sweep-<name>``."""
    return f"sweep-{sweep.name}"


def finished_summary(client: MlflowClient, experiment_id: str, sweep: Sweep
                     ) -> tuple[str, str] | None:
    """``(run id, stored summary)`` of a sweep of this name that already finished, else None.

    Raises:
        ConfigError: a sweep of this name exists with a different definition.
    """
    found = client.search_runs([experiment_id],
                               f"tags.`{RUN_NAME_TAG}` = '{parent_name(sweep)}'", max_results=1)
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
    with tempfile.TemporaryDirectory() as d:
        text = Path(client.download_artifacts(run.info.run_id, "sweep/summary.txt", d)).read_text()
    return run.info.run_id, text


def open_parent(client: MlflowClient, experiment_id: str, sweep: Sweep) -> tuple[str, bool]:
    """The sweep's parent run, created or found again: ``(run id, resumed)``.

    Its params and ``sweep/definition.yaml`` describe the search (logged once).
    """
    run_id, resumed = find_or_create_run(
        client, experiment_id, parent_name(sweep),
        {"raysl.kind": "sweep", SWEEP_TAG: sweep.name, FINGERPRINT_TAG: sweep.fingerprint(),
         "raysl.method": sweep.base.method.name})
    s = sweep.settings
    params = {"search": s.search, "scheduler": s.scheduler.name, "metric": s.metric,
              "mode": s.mode, "num_samples": s.num_samples, "num_trials": sweep.num_trials,
              "grace_period": s.scheduler.grace_period,
              "reduction_factor": s.scheduler.reduction_factor, "method": sweep.base.method.name,
              **{f"space.{d.field}": d.describe() for d in sweep.space}}
    log_params_once(client, run_id, params)
    client.log_text(run_id, sweep.definition(), "sweep/definition.yaml")
    return run_id, resumed


def close_child_runs(client: MlflowClient, experiment_id: str, parent_id: str,
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

