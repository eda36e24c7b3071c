"""The Ray Tune objects of a sweep: the trial function, its search space, scheduler and searcher.

Each trial is a Tune function that calls :func:`raysl.pretrain.pretrain` (the very code path of
``raysl pretrain``); every epoch's report reaches Tune through ``TuneReportCallback``, so the
scheduler stops bad trials on the online accuracy. A one-worker trial on one machine trains in
the trial's own process (``train.local_mode``) and reports to Tune itself (:class:`ReportToTune`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray.train
import ray.tune

from raysl.sweep.plan import TrialPlan, trial_overrides
from raysl.sweep.progress import ProgressTable
from raysl.sweep.runs import PARENT_TAG, SWEEP_TAG, TRIAL_TAG
from raysl.sweep.spec import SearchDim, Sweep


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
    # A worker group reports through its controller, which hands Tune the report on a queue;
    # a trial training in this process reports from this very thread, as a Tune function does.
    report = (ReportToTune() if cfg.train.local_mode == "on"
              else TuneReportCallback())  # type: ignore[no-untyped-call]
    pretrain(cfg, log=lambda line: print(f"[trial {trial_id}] {line}", flush=True),
             train_callbacks=[report],
             run_tags={PARENT_TAG: parent_run_id, SWEEP_TAG: spec.name, TRIAL_TAG: trial_id,
                       "raysl.kind": "sweep trial"})



class ReportToTune(ray.train.UserCallback):
    """Each epoch's report of a trial trained in its own process, to Tune, from the trial's thread.

    ``ray.tune.report`` returns once Tune has taken the result, so the last epoch's is in before
    the trial ends (``TuneReportCallback`` hands it over on a queue that Tune may not read once
    the trial function has returned). The checkpoint is named, not copied: it is in the run's
    directory already.
    """

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: ray.train.Checkpoint | None) -> None:
        """Report rank 0's metrics, with the checkpoint's path as ``checkpoint_path``."""
        result = dict(metrics[0])
        if checkpoint is not None:
            result["checkpoint_path"] = checkpoint.path
        ray.tune.report(result)


def build_tuner(sweep: Sweep, plan: TrialPlan, path: str, storage: str, uri: str,
                parent_id: str, log: Callable[[str], None]) -> ray.tune.Tuner:
    """A new Tuner for ``sweep``, or the one at ``path`` restored (the same command resumes)."""
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, sweep=sweep.to_dict(),
                                 overrides=trial_overrides(sweep, plan, storage, uri),
                                 parent_run_id=parent_id),
        plan.trial_process_resources(sweep))
    if ray.tune.Tuner.can_restore(path):
        log(f"[raysl] restoring the sweep from {path}: finished trials are kept, unfinished ones "
            "resume from their checkpoints")
        return ray.tune.Tuner.restore(path, trainable, resume_unfinished=True,
                                      resume_errored=True)
    s = sweep.settings
    return ray.tune.Tuner(
        trainable,
        param_space={d.field: domain(d, s.search) for d in sweep.space},
        tune_config=ray.tune.TuneConfig(
            metric=s.metric, mode=s.mode, num_samples=s.num_samples,
            max_concurrent_trials=plan.concurrent, scheduler=scheduler(sweep),
            search_alg=searcher(sweep, plan)),
        run_config=ray.tune.RunConfig(
            name=sweep.name, storage_path=storage, verbose=0,
            failure_config=ray.tune.FailureConfig(max_failures=s.max_failures),
            callbacks=[ProgressTable(sweep.fields, s.metric, sweep.base.train.epochs)]))


def domain(dim: SearchDim, search: str) -> Any:
    """The Tune search domain of one swept field (grids stay grids under random search)."""
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


def scheduler(sweep: Sweep) -> Any:
    """The trial scheduler: ASHA, median stopping or FIFO, with time counted in epochs."""
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


def searcher(sweep: Sweep, plan: TrialPlan) -> Any:
    """The search algorithm: seeded random/grid variants, or Optuna's TPE."""
    seed = sweep.base.train.seed
    if sweep.settings.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Its own concurrency limit: Tune ignores max_concurrent_trials for a generator instance.
    # The same seed samples the same trials.
    return BasicVariantGenerator(max_concurrent=plan.concurrent, random_state=seed)

