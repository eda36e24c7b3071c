"""MLflow's model registry: how raysl registers an encoder, and the run artifacts a version names.

:func:`register_encoder` is the one way in (pretraining, a sweep's best trial, ``raysl
register``). Loading a version back is the consumers' side: :mod:`raysl.serving.models`. Not to
be confused with :mod:`raysl.catalog`, the catalog of methods, readers and protocols by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Array, ColSpec, DataType, Schema, TensorSpec

from raysl.checkpoint import ENCODER_FILE, read_state
from raysl.config import CHAMPION_ALIAS, Config
from raysl.nn.backbones import Encoder, encoder_info
from raysl.tracking.mlflow import tracking_client

RAYSL_PACKAGE = Path(__file__).resolve().parents[1]
# On a training run: the source commit and version of raysl, and which images trained it.
RUN_COMMIT_TAG, RUN_VERSION_TAG = "raysl.commit", "raysl.version"
RUN_FINGERPRINT_TAG = "raysl.data_fingerprint"
RUN_PARENT_TAG = "raysl.init_from"  # a continued pretraining's source (model.init_from)
RUN_TEACHER_TAG = "raysl.teacher"  # a distillation's teacher (method.teacher)
# The model's code: a path, not an import (the serving layer sits above this one).
MODEL_CODE = RAYSL_PACKAGE / "serving" / "model_code.py"

# Pretraining logs the encoder's weights and config to checkpoint/epoch_NNNN/ of its run, one
# directory per finished training (a resumed run adds one), and tags the registered version with
# its directory (for people; versions in the pickle format are loaded from it).
CHECKPOINT_ARTIFACTS = "checkpoint"
WEIGHTS_TAG = "raysl.weights"


@dataclass(frozen=True)
class RegisteredEncoder:
    """Where an encoder landed in the registry."""

    name: str
    version: str
    model_uri: str  # models:/<name>/<version>, what consumers load
    alias: str = ""  # the alias registering it set ("" if none)


def version_description(cfg: Config, encoder: Encoder, run_id: str, results: str,
                        context: str = "", data: str = "") -> str:
    """A registered version's description: what was trained, how it scored, how to call it.

    Args:
        cfg: the pretraining config.
        encoder: the registered encoder (its input and output sizes).
        run_id: the MLflow run that trained it.
        results: the evaluation, as sentences (e.g. ``"kNN top-1 76.2% (...). "``).
        context: what the version is, before the model (e.g. a sweep's best trial).
        data: what it was pretrained on.
    """
    info = encoder_info(encoder)
    on = f" on {data}" if data else ""
    return (f"{context}{cfg.method.name} {cfg.model.backbone} (width "
            f"{cfg.model.effective_width}) pretrained {cfg.train.epochs} epochs{on}. {results}"
            f"Input: (B, {info['in_channels']}, H, W) images, float in [0, 1] or uint8, "
            f"pretrained at {info['image_size']} px; output: (B, {info['num_features']}) "
            f"features. MLflow run {run_id}.")


def run_lineage_tags(data_fingerprint: str) -> dict[str, str]:
    """Tags a training run carries so that whoever registers it later knows its code and data."""
    return {RUN_COMMIT_TAG: source_commit(), RUN_VERSION_TAG: _version(),
            RUN_FINGERPRINT_TAG: data_fingerprint}


def lineage_tags(cfg: Config, encoder: Encoder, run_tags: dict[str, str]) -> dict[str, str]:
    """What a consumer needs to know about a version: code, data, settings, inputs and outputs.

    Tags ``raysl.commit`` (the git commit of raysl's source that trained it, ``-dirty`` with
    local changes), ``raysl.version``, ``data.source`` and ``data.fingerprint`` (which images, see
    ``ImageSource.fingerprint``), ``config.sha256`` (of the effective config, logged as
    ``config.yaml``), ``method``, ``input.*`` (channels, size, value range, normalisation) and
    ``output.dim``; and ``parent``, the encoder a continued pretraining started from
    (``model.init_from``, resolved: e.g. ``models:/raysl-simclr/3 (run ...)``), and ``teacher``,
    the frozen encoder a distillation learned from (``method.teacher``, resolved).

    Args:
        cfg: the pretraining config.
        encoder: the registered encoder (its input and output sizes, its normalisation).
        run_tags: the training run's tags (``run_lineage_tags``); a run made before them gives
            "unknown" for the commit, version and fingerprint.
    """
    info = encoder_info(encoder)
    mean = [round(float(v), 4) for v in encoder.mean.flatten()]
    std = [round(float(v), 4) for v in encoder.std.flatten()]
    return {"raysl.commit": run_tags.get(RUN_COMMIT_TAG, "unknown"),
            "raysl.version": run_tags.get(RUN_VERSION_TAG, "unknown"),
            "data.source": cfg.data.source.path or cfg.data.source.format,
            "data.fingerprint": run_tags.get(RUN_FINGERPRINT_TAG, "unknown"),
            "config.sha256": hashlib.sha256(cfg.to_yaml().encode()).hexdigest()[:16],
            "method": cfg.method.name, "backbone": cfg.model.backbone,
            "input.channels": str(info["in_channels"]), "input.size": str(info["image_size"]),
            "input.range": "float in [0, 1] or uint8 in [0, 255], (B, C, H, W)",
            "input.normalisation": f"inside the model: (x - {mean}) / {std}",
            "output.dim": str(info["num_features"]),
            **({"parent": run_tags[RUN_PARENT_TAG]} if RUN_PARENT_TAG in run_tags else {}),
            **({"teacher": run_tags[RUN_TEACHER_TAG]} if RUN_TEACHER_TAG in run_tags else {})}


def source_commit() -> str:
    """The git commit of raysl's source (``-dirty`` if it has local changes), or "unknown"."""
    try:
        sha = subprocess.run(["git", "-C", str(RAYSL_PACKAGE), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", str(RAYSL_PACKAGE), "status", "--porcelain",
                                "--", "."], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _version() -> str:
    try:
        return importlib.metadata.version("raysl")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def input_signature(encoder: Encoder) -> ModelSignature:
    """Images in (a base64-encoded file, or a uint8 (H, W, C) array), a D-float embedding out.

    ``image`` is base64 text, decoded by the model itself, so a row that is not an image is
    refused naming its index and the reason. Both columns are optional; a request uses one.
    """
    inputs = Schema([ColSpec(DataType.string, "image", required=False),
                     ColSpec(Array(Array(Array(DataType.long))), "pixels", required=False)])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, encoder.num_features))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def register_encoder(encoder: Encoder, cfg: Config, run_id: str, uri: str, name: str | None,
                     description: str, tags: dict[str, str], weights: str,
                     champion_if_first: bool = True) -> RegisteredEncoder | None:
    """Register ``encoder`` as a new version of ``name``: the one way raysl registers an encoder.

    Pretraining's end, a sweep's best trial and ``raysl register`` all come here, so every
    version carries the same things: the pyfunc model (:func:`log_and_register`), the
    ``description``, its lineage (code, data, settings, from the run's tags), the run's weights
    directory (``raysl.weights``) and the caller's ``tags``.

    Args:
        encoder: the encoder to register (on any device; it is saved from the CPU).
        cfg: its pretraining config (rebuilds the architecture on load).
        run_id: the MLflow run that trained it; the model is logged there.
        uri: the tracking URI.
        name: the registered model; None logs the model to the run only.
        description: the version's description (:func:`version_description`).
        tags: the caller's version tags (evaluation, sweep, provenance), over the lineage's.
        weights: the run's ``checkpoint/epoch_NNNN`` directory (:func:`log_weights`).
        champion_if_first: give the model's first version the ``champion`` alias, so
            ``models:/NAME@champion`` loads from the first run on. A sweep passes False: it
            moves its alias only on merit (:mod:`raysl.sweep.champion`).

    Returns:
        The registered version, or ``None`` if ``name`` is None (``tracking.register=false``:
        the model is logged to the run only).
    """
    client = tracking_client(uri)
    version_tags = {**lineage_tags(cfg, encoder, client.get_run(run_id).data.tags),
                    WEIGHTS_TAG: weights, **tags}
    registered = log_and_register(encoder, cfg, run_id, uri, name, description, version_tags)
    if registered is None:
        return None
    aliases = client.get_registered_model(registered.name).aliases
    if champion_if_first and CHAMPION_ALIAS not in aliases:
        client.set_registered_model_alias(registered.name, CHAMPION_ALIAS, registered.version)
        registered = dataclasses.replace(registered, alias=CHAMPION_ALIAS)
    return registered


def log_and_register(encoder: Encoder, cfg: Config, run_id: str, uri: str,
                     model_name: str | None, description: str, tags: dict[str, str]
                     ) -> RegisteredEncoder | None:
    """Log ``encoder`` to the run as a pyfunc model and register it as a version of ``model_name``.

    The model is raysl's code (``raysl/serving/model_code.py``, the package shipped beside it),
    the weights as a state dict and the pretraining config: loading it rebuilds the encoder and
    reads the weights with ``weights_only=True``; no model object is pickled.

    Returns:
        The registered version, or ``None`` if ``model_name`` is None (logged only).
    """
    mlflow.set_tracking_uri(uri)
    size = max(8, cfg.data.min_image_side)
    example = pd.DataFrame({"pixels": [np.zeros((size, size, cfg.data.channels), np.uint8)
                                       .tolist()]})
    with tempfile.TemporaryDirectory() as d:
        weights, config = Path(d) / ENCODER_FILE, Path(d) / "config.yaml"
        torch.save(encoder.cpu().state_dict(), weights)
        config.write_text(cfg.to_yaml())
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="encoder", python_model=str(MODEL_CODE),
                artifacts={"weights": str(weights), "config": str(config)},
                code_paths=[str(RAYSL_PACKAGE)], signature=input_signature(encoder),
                input_example=example, registered_model_name=model_name,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                  "numpy", "pandas", "pillow", "pyyaml", "pyarrow"])
    if model_name is None:
        return None
    version = str(info.registered_model_version)
    client = tracking_client(uri)
    client.update_model_version(model_name, version, description=description)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    return RegisteredEncoder(model_name, version, f"models:/{model_name}/{version}")


def weights_artifact_dir(epoch: int) -> str:
    """Artifact directory of the weights after ``epoch`` epochs: ``checkpoint/epoch_0004``."""
    return f"{CHECKPOINT_ARTIFACTS}/epoch_{epoch:04d}"


def log_weights(client: MlflowClient, run_id: str, checkpoint_dir: str | Path) -> str:
    """Log a checkpoint's ``encoder.pt`` and config to ``checkpoint/epoch_NNNN/`` of the run.

    What ``raysl evaluate`` and the registry load back. Returns the artifact directory.
    """
    state = read_state(checkpoint_dir)
    artifact_dir = weights_artifact_dir(state["epoch"] + 1)
    client.log_artifact(run_id, str(Path(checkpoint_dir) / ENCODER_FILE), artifact_dir)
    client.log_text(run_id, Config.from_dict(state["config"]).to_yaml(),
                    f"{artifact_dir}/config.yaml")
    return artifact_dir


def logged_weights(client: MlflowClient, run_id: str) -> str:
    """The run's latest ``checkpoint/epoch_NNNN`` directory, or "" if it has none."""
    dirs = sorted(a.path for a in client.list_artifacts(run_id, CHECKPOINT_ARTIFACTS)
                  if a.is_dir)
    return dirs[-1] if dirs else ""
