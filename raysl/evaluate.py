"""``raysl evaluate``: the evaluation suite on any encoder raysl trained, wherever it lives.

MODEL is a checkpoint directory, an MLflow run or a registry URI (``models:/name/3``,
``models:/name@champion``). Results go to a new MLflow run (metrics, table, figures) and, for a
registered model, onto the model version as tags, so registry consumers see them.
``pipelines/evaluate.py`` runs the same code under ``ray job submit``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from mlflow.tracking import MlflowClient

from raysl import catalog
from raysl.cluster.connect import connect
from raysl.config import Config, SourceConfig, merge_override, parse_override
from raysl.console import banner, redacting
from raysl.data.source import check_source, detect_format
from raysl.errors import ConfigError
from raysl.eval.data import load_eval_data
from raysl.eval.suite import EvalReport, evaluate_encoders, with_baseline
from raysl.serving.models import LoadedModel, load_model
from raysl.tracking.mlflow import (
    ensure_experiment,
    log_params_once,
    resolve_tracking_uri,
    tracking_client,
    ui_command,
)

EVAL_RUN_TAG = "raysl.evaluated_model"


@dataclass
class EvaluateResult:
    """What ``raysl evaluate`` measured and where it logged it."""

    model: str
    report: EvalReport
    mlflow_run_id: str
    tracking_uri: str
    model_version_tagged: str = ""
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """The table printed at the end."""
        top, bottom = banner("raysl evaluate")
        lines = ["", top, f"model   {self.model}",
                 f"data    {self.report.split}", "", self.report.table(), ""]
        if self.report.headline():
            lines += [self.report.headline(), ""]
        lines += [f"note    {n}" for n in self.report.notes]
        lines += [f"MLflow  run {self.mlflow_run_id}; figures under eval/",
                  f"open    {ui_command(self.tracking_uri)}"]
        if self.model_version_tagged:
            lines.append(f"tagged  {self.model_version_tagged} with eval.* results")
        lines += [f"warning {w}" for w in self.warnings]
        return "\n".join([*lines, bottom])


def evaluation_config(model_config: Config, data: str | None, protocols: str | None,
                      overrides: list[str]) -> Config:
    """The model's pretraining config with the evaluation settings the user gave on top.

    Args:
        model_config: the config the model was pretrained with (architecture, size, eval split).
        data: ``--data``: a labeled dataset path (IDX directory: train split as the bank and t10k
            as queries; otherwise ``eval.holdout`` of it is held out), or ``generated``.
        protocols: ``--protocol``, e.g. ``knn,linear``.
        overrides: ``--set eval.*=...`` / ``tracking.*=...``.

    Raises:
        ConfigError: for settings of other sections (they describe the model, not its test).
    """
    raw: dict[str, Any] = model_config.to_dict()
    ev = raw.setdefault("eval", {})
    ev["enabled"] = True
    if data == "generated":
        ev["bank"] = {**ev.get("bank", {}), "format": "generated", "limit": 2000}
        ev["query"] = {"format": "auto", "path": ""}
    elif data:  # set directly, not through --set parsing: a path is never read as YAML
        ev["bank"] = {**ev.get("bank", {}), "path": data, "format": "auto", "split": "train"}
        fmt = detect_format(SourceConfig(path=data), "--data")
        ev["query"] = ({"path": data, "format": "auto", "split": "test", "limit": 0}
                       if fmt in ("idx", "cifar") else {"path": "", "format": "auto"})
    if protocols is not None:
        ev["protocols"] = protocols
    check_overrides(overrides)
    for item in overrides:
        keys, value = parse_override(item)
        merge_override(raw, keys, value)
    cfg = Config.from_dict(raw)
    if not cfg.eval.protocols:
        raise ConfigError("eval.protocols", cfg.eval.protocols,
                          f"at least one of {catalog.names('protocol')} to evaluate")
    return cfg


def check_overrides(overrides: list[str]) -> None:
    """Raise ``ConfigError`` for ``--set`` items that do not belong to an evaluation."""
    for item in overrides:
        if not item.startswith(("eval.", "tracking.", "train.address=")):
            raise ConfigError("--set", item, "raysl evaluate takes eval.*, tracking.* and "
                              "train.address; the model's own settings come from its "
                              "pretraining run")


def evaluate(spec: str, data: str | None = None, protocols: str | None = None,
             overrides: list[str] | None = None,
             log: Callable[[str], None] = print) -> EvaluateResult:
    """Evaluate MODEL ``spec``; see :class:`EvaluateResult`.

    Raises:
        ModelNotFoundError: ``spec`` names nothing loadable.
        ConfigError, DataError: bad settings or data, before any work starts.
    """
    log = redacting(log)  # a data path or URI in a line may carry a password
    overrides = overrides or []
    check_overrides(overrides)  # before any loading: a typo fails at once
    # The settings needed before the model's own config is known: its store and the cluster.
    pre: dict[str, Any] = {}
    for item in overrides:
        if item.startswith(("tracking.", "train.address=")):
            merge_override(pre, *parse_override(item))
    pre_cfg = Config.from_dict(pre)
    uri = resolve_tracking_uri(pre_cfg.tracking)
    loaded = load_model(spec, uri)
    cfg = evaluation_config(loaded.config, data, protocols, overrides)
    check_source(cfg.eval_bank, "eval.bank" if cfg.eval.bank.is_set else "data.source")
    if cfg.eval.query.is_set:
        check_source(cfg.eval.query, "eval.query")
    # Not the pretraining run's cluster: the one this job runs on (RAY_ADDRESS), else a local
    # one, unless --set train.address=... says otherwise.
    connect(pre_cfg.train.address)
    log(f"[raysl] evaluating {loaded.description}: {', '.join(cfg.eval.protocols)}")
    torch.set_num_threads(os.cpu_count() or 1)
    split = load_eval_data(cfg)
    report = evaluate_encoders(with_baseline(cfg, loaded.encoder), split, cfg.eval,
                               cfg.data.image_size, cfg.train.seed, log)
    run_id = _log_run(cfg, loaded, spec, report, uri)
    result = EvaluateResult(loaded.description, report, run_id, uri)
    if loaded.registered_name:
        tag_model_version(tracking_client(uri), loaded.registered_name, loaded.registered_version,
                          report, run_id)
        result.model_version_tagged = (f"models:/{loaded.registered_name}/"
                                       f"{loaded.registered_version}")
    return result


def _log_run(cfg: Config, loaded: LoadedModel, spec: str, report: EvalReport, uri: str) -> str:
    client = tracking_client(uri)
    experiment_id = ensure_experiment(client, cfg.tracking.experiment, uri)
    tags = {EVAL_RUN_TAG: spec, "raysl.kind": "evaluation", "raysl.method": cfg.method.name}
    if loaded.run_id:
        tags["raysl.pretraining_run"] = loaded.run_id
    run = client.create_run(experiment_id, run_name=f"eval-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags=tags)
    run_id: str = run.info.run_id
    params = {k: v for k, v in cfg.flat().items() if k.startswith("eval.")}
    log_params_once(client, run_id, {"model": spec, **params})
    report.log_to(client, run_id)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def tag_model_version(client: MlflowClient, name: str, version: str, report: EvalReport,
                      run_id: str) -> None:
    """Put the results on the model version (``eval.knn_top1=0.7632`` ...), for consumers.

    Earlier ``eval.*`` tags go first: every tag then describes this one evaluation and its data.
    """
    for key in client.get_model_version(name, version).tags:
        if key.startswith("eval."):
            client.delete_model_version_tag(name, version, key)
    for key, value in report.tags().items():
        client.set_model_version_tag(name, version, key, value)
    client.set_model_version_tag(name, version, "eval.run_id", run_id)
    client.set_model_version_tag(name, version, "eval.data", report.split[:5000])
