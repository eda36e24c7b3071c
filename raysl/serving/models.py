"""Resolve the MODEL of ``raysl evaluate``: a checkpoint directory, an MLflow run or a registry URI.

Weights are always read from raysl's own ``encoder.pt`` files with ``weights_only=True`` (a model
can never run code on load), and the architecture is rebuilt from the pretraining config saved
beside them: ``state.json`` in a checkpoint, ``config.yaml`` in the MLflow run.

A registered version is read from its own model (``artifacts/encoder.pt`` and
``artifacts/config.yaml`` of the model MLflow wrote when the version was created), never from a
place its tags name: whoever may edit a registered model can change its versions' tags, not
what a version holds. Versions registered in MLflow's pickle format (before raysl registered
pyfunc models) hold no state dict; for those alone the ``raysl.weights`` tag names the weights,
and only as a ``checkpoint/epoch_NNNN`` directory of the version's own run.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow.artifacts
import yaml
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from raysl.checkpoint import ENCODER_FILE, STATE_FILE, load_strict, read_state
from raysl.config import Config, TrackingConfig
from raysl.errors import CheckpointError, ModelNotFoundError
from raysl.nn.backbones import Encoder, build_encoder
from raysl.tracking.mlflow import resolve_tracking_uri, tracking_client
from raysl.tracking.model_registry import (
    CHECKPOINT_ARTIFACTS,
    WEIGHTS_TAG,
    logged_weights,
)

_CHECKPOINT_DIR = re.compile(rf"{CHECKPOINT_ARTIFACTS}/epoch_[0-9]{{4}}")  # to fullmatch
# What a registered version's own model holds (tracking.model_registry): MLflow copies each
# pyfunc artifact to artifacts/<its file name>.
VERSION_ARTIFACTS = "artifacts"
VERSION_WEIGHTS = f"{VERSION_ARTIFACTS}/{ENCODER_FILE}"
VERSION_CONFIG = f"{VERSION_ARTIFACTS}/config.yaml"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


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
        return _from_checkpoint(latest_checkpoint(path))
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


def latest_checkpoint(path: Path) -> Path:
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
    loaded = _from_version(mv, client)
    loaded.registered_name, loaded.registered_version = mv.name, str(mv.version)
    return loaded


def _from_version(mv: ModelVersion, client: MlflowClient) -> LoadedModel:
    """The encoder in the version's own model, or (pickle format) in its run's checkpoint."""
    name = f"models:/{mv.name}/{mv.version}"
    with tempfile.TemporaryDirectory() as d:
        try:
            files = _version_files(mv, client, d)
        except (MlflowException, OSError) as e:
            raise ModelNotFoundError(f"MODEL={name!r}: its model's {VERSION_CONFIG} and "
                                     f"{VERSION_WEIGHTS} cannot be read ({str(e).splitlines()[0]})"
                                     ) from None
        if files is None:
            return _from_pickle_version(mv, client, name)
        cfg_path, weights = files
        with open(cfg_path) as f:
            cfg = Config.from_dict(yaml.safe_load(f), source=f"{name}/{VERSION_CONFIG}")
        encoder = build_encoder(cfg.model, cfg.data.channels, cfg.data.image_size)
        load_strict(encoder, weights)
    tag = mv.tags.get(WEIGHTS_TAG, "")  # what pretraining logged, for people only
    logged = f"; {WEIGHTS_TAG}={tag}" if _CHECKPOINT_DIR.fullmatch(tag) else ""
    return LoadedModel(encoder, cfg, f"{name} (run {mv.run_id}, its own {VERSION_WEIGHTS}{logged})",
                       run_id=mv.run_id or "")


def _version_files(mv: ModelVersion, client: MlflowClient, dst: str) -> tuple[str, str] | None:
    """The version's own config and weights, downloaded to ``dst``; None if its model has none.

    The model is where MLflow wrote it when the version was created (its ``source``), which no
    later call changes.
    """
    model = client.get_model_version_download_uri(mv.name, str(mv.version))
    held = mlflow.artifacts.list_artifacts(artifact_uri=f"{model}/{VERSION_ARTIFACTS}",
                                           tracking_uri=client.tracking_uri)
    if ENCODER_FILE not in {Path(f.path).name for f in held}:
        return None

    def fetch(path: str) -> str:
        return mlflow.artifacts.download_artifacts(artifact_uri=f"{model}/{path}", dst_path=dst,
                                                   tracking_uri=client.tracking_uri)

    return fetch(VERSION_CONFIG), fetch(VERSION_WEIGHTS)


def _from_pickle_version(mv: ModelVersion, client: MlflowClient, name: str) -> LoadedModel:
    """A version in MLflow's pickle format: never unpickled; the run's weights its tag names."""
    weights_dir = mv.tags.get(WEIGHTS_TAG, "")
    if not mv.run_id or not _CHECKPOINT_DIR.fullmatch(weights_dir):
        raise ModelNotFoundError(
            f"MODEL={name!r}: its model holds no {VERSION_WEIGHTS} (not registered by raysl, or "
            f"in MLflow's pickle format), and its {WEIGHTS_TAG} tag {weights_dir!r} names no "
            f"{CHECKPOINT_ARTIFACTS}/epoch_NNNN directory of its run {mv.run_id!r}")
    return _from_run(mv.run_id, client, name, weights_dir)
