"""What a sweep produced: :class:`SweepResult`, its printed summary, and its record in MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml
from mlflow.tracking import MlflowClient

from raysl.console import banner
from raysl.eval.suite import EvalReport
from raysl.sweep import results as res
from raysl.sweep.champion import ChampionDecision
from raysl.sweep.spec import Sweep, metric_text
from raysl.tracking.mlflow import Tracker, log_blobs, ui_command
from raysl.tracking.model_registry import RegisteredEncoder


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


def summary_text(sweep: Sweep, result: SweepResult) -> str:
    """The framed summary: the trials table, the best trial, its evaluation and the alias."""
    s, rows = sweep.settings, result.rows
    sc = s.scheduler
    how = {"asha": f"ASHA (grace {sc.grace_period} epoch(s), reduction {sc.reduction_factor:g})",
           "median": f"median stopping (grace {sc.grace_period} epoch(s))",
           "fifo": "no early stopping"}[sc.name]
    best_id = result.best.trial_id if result.best else ""
    top, bottom = banner("raysl tune: summary")
    lines = ["", top,
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
                     f"{metric_text(s.metric, b.metric)} (MLflow run {b.run_id})")
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
    return "\n".join([*lines, bottom])



def log_results(client: MlflowClient, parent_id: str, sweep: Sweep, result: SweepResult
                ) -> None:
    """Tables, plots, best parameters and config, champion decision: into the parent run."""
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
