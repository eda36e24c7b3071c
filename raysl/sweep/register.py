"""The sweep's champion: evaluate the best trial, register it, move the alias if it wins.

The alias rule itself (score both on the same evaluation, promote only on merit) is in
:mod:`raysl.sweep.champion`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ray.train
from mlflow.tracking import MlflowClient

from raysl.config import Config, EvalConfig
from raysl.eval.data import EvalData, load_eval_data
from raysl.eval.models import (
    WEIGHTS_TAG,
    ModelNotFoundError,
    load_model,
    log_weights,
    logged_weights,
)
from raysl.eval.suite import (
    TRAINED,
    EvalReport,
    evaluate_encoders,
    with_baseline,
)
from raysl.nn.backbones import Encoder
from raysl.sweep import results as res
from raysl.sweep.champion import NotComparable, crown
from raysl.sweep.outcome import SweepResult
from raysl.sweep.runs import SWEEP_TAG, TRIAL_TAG
from raysl.sweep.spec import CHAMPION_METRICS, Sweep
from raysl.tracking.registry import (
    RegisteredEncoder,
    lineage_tags,
    log_and_register,
    version_description,
)


def crown_best(sweep: Sweep, result: SweepResult, client: MlflowClient,
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
    trial_cfg = dataclasses.replace(loaded.config, eval=eval_cfg)
    split = load_eval_data(dataclasses.replace(base, eval=eval_cfg))
    report = evaluate_encoders(with_baseline(trial_cfg, loaded.encoder), split, eval_cfg,
                               loaded.encoder.image_size, base.train.seed, log)
    result.report = report
    report.log_to(client, best.run_id, step=base.train.epochs)
    name = base.registered_model_name
    earlier = client.search_model_versions(f"name='{name}' and run_id='{best.run_id}'")
    version = str(earlier[0].version) if earlier else ""  # an interrupted end of this sweep
    if not version:
        tags = {**report.tags(), WEIGHTS_TAG: logged_weights(client, best.run_id),
                **lineage_tags(loaded.config, loaded.encoder,
                               client.get_run(best.run_id).data.tags),
                SWEEP_TAG: sweep.name,
                "raysl.sweep_run": result.parent_run_id, TRIAL_TAG: best.trial_id,
                "method": base.method.name, "eval.data": split.description[:5000]}
        registered = log_and_register(loaded.encoder, loaded.config, best.run_id, uri, name,
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
    return dataclasses.replace(cfg, enabled=True, protocols=protocols)


def _scorer(name: str, version: str, ours: float, split: EvalData, eval_cfg: EvalConfig,
            metric: str, uri: str, base: Config) -> Callable[[str], float]:
    """Scores registry URIs on the sweep's split: the challenger's score is already known."""
    protocol = CHAMPION_METRICS[metric]
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
    results = "; ".join(f"{k} {100 * v:.2f}%" for k, v in report.results[TRAINED].items())
    return version_description(
        sweep.base, encoder, best.run_id,
        f"{sweep.settings.metric} {100 * best.metric:.2f}% during training; on {report.split}: "
        f"{results}. ", context=f"Best trial ({best.trial_id}: {best.params_text()}) of sweep "
                                f"{sweep.name}: ")
