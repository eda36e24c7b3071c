"""Registering encoders in the MLflow model registry, with their evaluation in the description."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow.tracking import MlflowClient

from raysl.config import Config
from raysl.nn.backbones import Encoder, encoder_info

RAYSL_PACKAGE = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RegisteredEncoder:
    """Where an encoder landed in the registry."""

    name: str
    version: str
    model_uri: str  # models:/<name>/<version>, what consumers load


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


def log_and_register(encoder: Encoder, run_id: str, uri: str, model_name: str | None,
                     description: str, tags: dict[str, str]) -> RegisteredEncoder | None:
    """Log ``encoder`` to the run and register it as a new version of ``model_name``.

    The model is saved in MLflow's pickle format so that ``mlflow.pytorch.load_model`` returns the
    :class:`Encoder` module itself (fine-tunable), not a traced inference graph; raysl's own code
    is shipped with it (``code_paths``), so consumers need torch and torchvision but not raysl.

    Returns:
        The registered version, or ``None`` if ``model_name`` is None (logged only).
    """
    mlflow.set_tracking_uri(uri)
    example = np.random.default_rng(0).random(
        (2, encoder.in_channels, encoder.image_size, encoder.image_size), dtype=np.float32)
    encoder = encoder.cpu().eval()
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            encoder, name="encoder", registered_model_name=model_name,
            serialization_format="pickle", code_paths=[str(RAYSL_PACKAGE)],
            input_example=example,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "torchvision", "numpy"],
        )
    if model_name is None:
        return None
    version = str(info.registered_model_version)
    client = MlflowClient(uri)
    client.update_model_version(model_name, version, description=description)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    return RegisteredEncoder(model_name, version, f"models:/{model_name}/{version}")
