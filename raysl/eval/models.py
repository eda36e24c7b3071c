"""Resolve the MODEL of ``raysl evaluate``: a checkpoint directory, an MLflow run or a registry URI.

Weights are always read from raysl's own ``encoder.pt`` files with ``weights_only=True`` (a model
can never run code on load), and the architecture is rebuilt from the pretraining config saved
beside them: ``state.json`` in a checkpoint, ``config.yaml`` in the MLflow run.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from raysl.checkpoint import (
    ENCODER_FILE,
    STATE_FILE,
    CheckpointError,
    load_strict,
    read_state,
)
from raysl.config import Config, TrackingConfig
from raysl.nn.backbones import Encoder, build_encoder
from raysl.tracking.mlflow import resolve_tracking_uri, tracking_client

# Pretraining logs the encoder's weights and config to checkpoint/epoch_NNNN/ of its run, one
# directory per finished training (a resumed run adds one), and tags the registered version with
# its directory, so every version keeps its own weights.
CHECKPOINT_ARTIFACTS = "checkpoint"
WEIGHTS_TAG = "raysl.weights"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class ModelNotFoundError(LookupError):
    """MODEL does not name a checkpoint, run or registered version that raysl can load."""


@dataclass
class LoadedModel:
    """An encoder ready to evaluate, with where it came from."""

    encoder: Encoder
    config: Config  # the pretraining config (architecture, image size, seed, eval split)
    description: str  # e.g. "models:/raysl-simclr/3 (run 1f2e...)"
    run_id: str = ""  # MLflow run that trained it, if known
    registered_name: str = ""
    registered_version: str = ""


def load_model(spec: str, tracking_uri: str) -> LoadedModel:
    """The encoder named by ``spec``.

    Args:
        spec: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``models:/NAME/latest``,
            ``runs:/RUN_ID`` or a bare 32-hex run id, or a path: a checkpoint directory
            (``state.json`` + ``encoder.pt``) or a Ray run directory (its latest checkpoint).
        tracking_uri: the MLflow store for run and registry lookups.

    Raises:
        ModelNotFoundError: naming what was looked for and where.
    """
    if spec.startswith("models:/"):
        return _from_registry(spec, tracking_client(tracking_uri))
    if spec.startswith("runs:/") or _RUN_ID.match(spec):
        run_id = spec.removeprefix("runs:/").strip("/").split("/")[0]
        return _from_run(run_id, tracking_client(tracking_uri), f"run {run_id}")
    path = Path(spec)
    if path.is_dir():
        return _from_checkpoint(_latest_checkpoint(path))
    raise ModelNotFoundError(
        f"MODEL={spec!r}: not a checkpoint directory, an MLflow run id (runs:/ID) or a registry "
        "URI (models:/NAME/VERSION or models:/NAME@ALIAS)")


def load_encoder(uri: str, tracking_uri: str = "") -> Encoder:
    """The encoder at ``uri`` as a torch module in eval mode, ready to embed or fine-tune.

    Safe by construction: the architecture is rebuilt from the saved config and the weights are
    read with ``weights_only=True``, whatever format the version was registered in.

    Args:
        uri: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``runs:/RUN_ID`` or a
            checkpoint directory.
        tracking_uri: the MLflow store; empty = ``$MLFLOW_TRACKING_URI``, else ./mlflow.db.

    Raises:
        ModelNotFoundError: naming what was looked for and where.
    """
    store = resolve_tracking_uri(TrackingConfig(tracking_uri=tracking_uri))
    return load_model(uri, store).encoder.eval()


def _latest_checkpoint(path: Path) -> Path:
    """``path`` itself if it holds an encoder, else its last complete ``checkpoint_*``.

    A checkpoint is complete once its ``state.json`` is written (the last file, atomically):
    one whose writing was interrupted is passed over for the one before it.
    """
    if (path / ENCODER_FILE).exists():
        return path
    found = sorted(p for p in path.glob("checkpoint_*")
                   if (p / ENCODER_FILE).exists() and (p / STATE_FILE).exists())
    if not found:
        raise ModelNotFoundError(f"MODEL={str(path)!r}: no {ENCODER_FILE} there, and no "
                                 "complete checkpoint_* directories (a Ray run directory)")
    return found[-1]  # Ray names checkpoints by time: the last sorts last


def _from_checkpoint(path: Path) -> LoadedModel:
    try:
        state = read_state(path)
    except CheckpointError as e:
        raise ModelNotFoundError(str(e)) from None
    cfg = Config.from_dict(state["config"], source=str(path / "state.json"))
    encoder = build_encoder(cfg.model, cfg.data.channels, cfg.data.image_size)
    load_strict(encoder, path / ENCODER_FILE)
    return LoadedModel(encoder, cfg, f"checkpoint {path}", run_id=state.get("mlflow_run_id", ""))


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


def _from_run(run_id: str, client: MlflowClient, description: str, weights_dir: str = ""
              ) -> LoadedModel:
    """The encoder in ``weights_dir`` of the run, or in its latest ``checkpoint/epoch_*``."""
    try:
        client.get_run(run_id)
    except MlflowException:
        raise ModelNotFoundError(f"MLflow run {run_id!r} not found at {client.tracking_uri}"
                                 ) from None
    weights_dir = weights_dir or logged_weights(client, run_id)
    if not weights_dir:
        raise ModelNotFoundError(
            f"MLflow run {run_id} has no {CHECKPOINT_ARTIFACTS}/epoch_*/ weights: it is not a "
            "raysl pretraining run, or one logged before raysl logged weights (evaluate its "
            "checkpoint directory instead)")
    with tempfile.TemporaryDirectory() as d:
        try:
            cfg_path = client.download_artifacts(run_id, f"{weights_dir}/config.yaml", d)
            weights = client.download_artifacts(run_id, f"{weights_dir}/{ENCODER_FILE}", d)
        except (MlflowException, OSError):
            raise ModelNotFoundError(f"MLflow run {run_id}: no config.yaml and {ENCODER_FILE} "
                                     f"in {weights_dir}/") from None
        with open(cfg_path) as f:
            cfg = Config.from_dict(yaml.safe_load(f), source=f"run {run_id}/{weights_dir}")
        encoder = build_encoder(cfg.model, cfg.data.channels, cfg.data.image_size)
        load_strict(encoder, weights)
    return LoadedModel(encoder, cfg, f"{description} (run {run_id}, {weights_dir})",
                       run_id=run_id)


def _from_registry(uri: str, client: MlflowClient) -> LoadedModel:
    rest = uri.removeprefix("models:/")
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = rest.partition("/")
            if version in ("", "latest"):
                versions = client.search_model_versions(f"name='{name}'")
                if not versions:
                    raise MlflowException(f"no versions of {name}")
                version = str(max(int(v.version) for v in versions))
            mv = client.get_model_version(name, version)
    except MlflowException as e:
        raise ModelNotFoundError(f"MODEL={uri!r}: not in the registry at {client.tracking_uri} "
                                 f"({str(e).splitlines()[0]})") from None
    if not mv.run_id:
        raise ModelNotFoundError(f"MODEL={uri!r}: version {mv.version} has no source run")
    loaded = _from_run(mv.run_id, client, f"models:/{mv.name}/{mv.version}",
                       mv.tags.get(WEIGHTS_TAG, ""))
    loaded.registered_name, loaded.registered_version = mv.name, str(mv.version)
    return loaded
