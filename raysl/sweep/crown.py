"""The sweep's champion: evaluate the best trial, register it, move the alias if it wins.

The alias rule itself (score both on the same evaluation, promote only on merit) is in
:mod:`raysl.sweep.champion`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import ray.train
import torch
from mlflow.tracking import MlflowClient

from raysl.config import Config, EvalConfig
from raysl.data.source import Reading, first_images, read_source
from raysl.errors import ModelNotFoundError
from raysl.eval.data import EvalData, load_eval_data
from raysl.eval.online import LabelFreeMonitor
from raysl.eval.suite import (
    TRAINED,
    EvalReport,
    evaluate_encoders,
    with_baseline,
)
from raysl.nn.backbones import Encoder
from raysl.serving.models import LoadedModel, load_model
from raysl.sweep import results as res
from raysl.sweep.champion import NotComparable, crown
from raysl.sweep.outcome import SweepResult
from raysl.sweep.runs import SWEEP_TAG, TRIAL_TAG
from raysl.sweep.spec import (
    CHAMPION_METRICS,
    LABEL_FREE_CHAMPION_METRICS,
    Sweep,
    is_label_free,
    metric_text,
)
from raysl.tracking.model_registry import (
    RegisteredEncoder,
    log_weights,
    logged_weights,
    register_encoder,
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
    if is_label_free(champion.metric):
        _crown_label_free(sweep, result, client, loaded, log)
        return
    eval_cfg = _champion_eval(base.eval, champion.metric)
    log(f"[raysl] evaluating the best trial {best.trial_id} ({', '.join(eval_cfg.protocols)})")
    trial_cfg = dataclasses.replace(loaded.config, eval=eval_cfg)
    split = load_eval_data(dataclasses.replace(base, eval=eval_cfg))
    report = evaluate_encoders(with_baseline(trial_cfg, loaded.encoder), split, eval_cfg,
                               loaded.encoder.image_size, base.train.seed, log)
    result.report = report
    report.log_to(client, best.run_id, step=base.train.epochs)
    version = _register_best(sweep, result, client, loaded,
                             {**report.tags(), "eval.data": split.description[:5000]},
                             _description(sweep, best, loaded.encoder, report))
    ours = report.results[TRAINED][champion.metric]
    score = _scorer(base.registered_model_name, version, ours, uri,
                    _accuracy_on(split, eval_cfg, champion.metric, base))
    _crown(sweep, result, client, version, score, log)


def _register_best(sweep: Sweep, result: SweepResult, client: MlflowClient, loaded: LoadedModel,
                   evaluation: dict[str, str], description: str) -> str:
    """Register the best trial's encoder (once: a resumed end finds its version) -> version."""
    best, base, uri = result.best, sweep.base, result.tracking_uri
    assert best is not None
    name = base.registered_model_name
    earlier = client.search_model_versions(f"name='{name}' and run_id='{best.run_id}'")
    version = str(earlier[0].version) if earlier else ""  # an interrupted end of this sweep
    if not version:
        tags = {**evaluation, SWEEP_TAG: sweep.name, "raysl.sweep_run": result.parent_run_id,
                TRIAL_TAG: best.trial_id, "method": base.method.name}
        registered = register_encoder(loaded.encoder, loaded.config, best.run_id, uri, name,
                                      description, tags, logged_weights(client, best.run_id),
                                      champion_if_first=False)  # crowned on merit below
        assert registered is not None
        version = registered.version
    result.model = RegisteredEncoder(name, version, f"models:/{name}/{version}")
    return version


def _crown(sweep: Sweep, result: SweepResult, client: MlflowClient, version: str,
           score: Callable[[str], float], log: Callable[[str], None]) -> None:
    """Move the alias to ``version`` if it beats the current holder on ``score``."""
    name, champion = sweep.base.registered_model_name, sweep.settings.champion
    result.decision = crown(client, name, champion.alias, version, champion.metric, score)
    log(f"[raysl] {result.decision.summary(name, champion.metric)}")


def _crown_label_free(sweep: Sweep, result: SweepResult, client: MlflowClient,
                      loaded: LoadedModel, log: Callable[[str], None]) -> None:
    """Register the best trial and crown it on a label-free monitor of the training sample.

    Incumbent and challenger are measured now, on the same images and views. RankMe and LiDAR
    rank encoders of one method and architecture (their scale depends on both), so an incumbent
    of another method, backbone or input cannot be compared and keeps the alias.
    """
    best, base, metric = result.best, sweep.base, sweep.settings.champion.metric
    assert best is not None
    measure, sample = _label_free_measure(base, metric)
    ours = measure(loaded.encoder)
    log(f"[raysl] the best trial {best.trial_id}: {metric} {ours:.1f} on {sample}")
    description = version_description(
        base, loaded.encoder, best.run_id,
        f"{sweep.settings.metric} {metric_text(sweep.settings.metric, best.metric)} during "
        f"training; {metric} {ours:.1f} on {sample}. ",
        context=f"Best trial ({best.trial_id}: {best.params_text()}) of sweep {sweep.name}: ")
    version = _register_best(sweep, result, client, loaded,
                             {f"eval.{metric}": f"{ours:.2f}", "eval.data": sample[:5000]},
                             description)
    def incumbent(other: LoadedModel) -> float:
        ours_is, theirs_is = _identity(loaded), _identity(other)
        if ours_is != theirs_is:
            raise NotComparable(f"{metric} compares encoders of one method and architecture; it "
                                f"is {theirs_is}, this sweep's is {ours_is}")
        return measure(other.encoder)

    score = _scorer(base.registered_model_name, version, ours, result.tracking_uri, incumbent)
    _crown(sweep, result, client, version, score, log)


def _identity(model: LoadedModel) -> str:
    """What must match for two encoders' RankMe or LiDAR to compare: method, network, input."""
    cfg, encoder = model.config, model.encoder
    return (f"{cfg.method.name} {cfg.model.backbone} width {cfg.model.effective_width}, "
            f"{encoder.in_channels}-channel {encoder.image_size} px")


def _label_free_measure(base: Config, metric: str) -> tuple[Callable[[Encoder], float], str]:
    """``encoder -> metric`` on the monitors' sample of the sweep's training data, and its text.

    The sample and views are those every trial measured during training (same source, seed and
    settings), read here once.
    """
    cfg = base.data
    # Streamed: the sample is the first units' images; caching would decode the whole set
    # (a million files) to keep a thousand of them.
    source = read_source(cfg.source, Reading.of(cfg, cache="none"), base.train.seed)
    images = first_images(source, min(base.eval.monitor_samples, source.num_images))
    monitor = LabelFreeMonitor(images, base, 0, 1)
    key = LABEL_FREE_CHAMPION_METRICS[metric]

    def measure(encoder: Encoder) -> float:
        values, _ = monitor.measure_encoder(encoder, None, torch.device("cpu"))
        return values[key]

    return measure, (f"{len(images)} training images x {base.eval.monitor_views} views of "
                     f"{source.description} (no labels)")


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


def _scorer(name: str, version: str, ours: float, uri: str,
            measure: Callable[[LoadedModel], float]) -> Callable[[str], float]:
    """Scores registry URIs the same way: the challenger's score is already known.

    ``measure`` scores another version, or raises :class:`NotComparable`.
    """
    def score(model_uri: str) -> float:
        if model_uri == f"models:/{name}/{version}":
            return ours
        try:
            other = load_model(model_uri, uri)
        except ModelNotFoundError as e:
            raise NotComparable(str(e)) from None
        return measure(other)

    return score


def _accuracy_on(split: EvalData, eval_cfg: EvalConfig, metric: str, base: Config
                 ) -> Callable[[LoadedModel], float]:
    """``metric`` of a model on the sweep's split (its protocol alone, no baselines)."""
    just_metric = dataclasses.replace(eval_cfg, protocols=(CHAMPION_METRICS[metric],),
                                      baselines=False, plots=False)

    def measure(other: LoadedModel) -> float:
        channels = other.encoder.in_channels
        if channels != base.data.channels:
            raise NotComparable(f"it takes {channels}-channel images, this sweep's split has "
                                f"{base.data.channels}")
        report = evaluate_encoders({TRAINED: other.encoder}, split, just_metric,
                                   other.encoder.image_size, base.train.seed, lambda _: None)
        return report.results[TRAINED][metric]

    return measure


def _description(sweep: Sweep, best: res.TrialRow, encoder: Encoder, report: EvalReport) -> str:
    results = "; ".join(f"{k} {100 * v:.2f}%" for k, v in report.results[TRAINED].items())
    return version_description(
        sweep.base, encoder, best.run_id,
        f"{sweep.settings.metric} {metric_text(sweep.settings.metric, best.metric)} during "
        f"training; on {report.split}: "
        f"{results}. ", context=f"Best trial ({best.trial_id}: {best.params_text()}) of sweep "
                                f"{sweep.name}: ")
