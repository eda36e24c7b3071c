"""Weights a run starts from or learns from, resolved on the driver before the cluster starts.

``model.init_from`` (continued pretraining) and a distillation's ``method.teacher``.

A run starts from a registered version, an MLflow run, a raysl checkpoint directory, or a local
state-dict file in torchvision's or timm's layout. Everything is read with ``weights_only=True``
(through :mod:`raysl.serving.models` and :mod:`raysl.checkpoint`) and checked here, before the
cluster starts: a source that does not fit fails in seconds, naming the settings or keys that
differ. The workers receive tensors, never a path they would each have to read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raysl import catalog
from raysl.checkpoint import METHOD_FILE, load_tensors
from raysl.config import Config
from raysl.errors import CheckpointError, ConfigError
from raysl.methods.base import InitWeights, TeacherWeights, build_method
from raysl.nn.backbones import build_encoder
from raysl.nn.layouts import detect_layout, load_exactly, mismatch, to_raysl_layout, unwrap
from raysl.serving.models import LoadedModel, latest_checkpoint, load_model

FIELD = "model.init_from"
# What must agree between the source's config and this run's for its encoder to fit.
_ARCHITECTURE = ("backbone", "width", "small_stem", "depth", "patch_size", "pos_embed")


def resolve_init(cfg: Config, tracking_uri: str, teacher: TeacherWeights | None = None
                 ) -> InitWeights | None:
    """The weights this run starts from, checked against its encoder; None without init_from.

    ``teacher``: a distillation's (:func:`resolve_teacher`), to build the method whose heads a
    checkpoint of the same method may carry.

    Raises:
        ConfigError: a raysl source of another architecture (naming the settings to change).
        ModelNotFoundError: a URI or path that names nothing.
        CheckpointError: a file whose keys or shapes do not fit, naming them.
    """
    spec = cfg.model.init_from
    if not spec:
        return None
    path = Path(spec)
    if path.is_file():
        return _from_file(cfg, path)
    loaded = load_model(spec, tracking_uri)  # registry, run or checkpoint directory
    _check_architecture(cfg, loaded, spec)
    encoder = build_encoder(cfg.model, cfg.data.channels, cfg.data.image_size)
    state = loaded.encoder.state_dict()
    load_exactly(encoder, state, f"{FIELD}={spec!r}")
    heads = _method_state(cfg, loaded, path, teacher) if path.is_dir() else None
    return InitWeights(state, heads, loaded.description)


def resolve_teacher(cfg: Config, tracking_uri: str) -> TeacherWeights | None:
    """The frozen teacher of a distillation (``method.teacher``); None for other methods.

    Raises:
        ModelNotFoundError: a URI or path that names nothing.
        ConfigError: a teacher pretrained on images of another number of channels.
    """
    if not catalog.get("method", cfg.method.name).takes_teacher:
        return None
    spec = getattr(cfg.method, "teacher", "")
    loaded = load_model(spec, tracking_uri)
    channels = loaded.config.data.channels
    if channels != cfg.data.channels:
        raise ConfigError("method.teacher", spec,
                          f"a teacher of {cfg.data.channels}-channel images (data.channels); "
                          f"{loaded.description} was pretrained on {channels}-channel images")
    return TeacherWeights(loaded.config.model, channels, loaded.config.data.image_size,
                          loaded.encoder.state_dict(), loaded.description)


def describe(init: InitWeights) -> str:
    """One line for the run's log: what it starts from and whether the heads come along."""
    heads = ("with its heads" if init.method is not None else "heads fresh")
    return f"starting from {init.source} ({heads})"


def _from_file(cfg: Config, path: Path) -> InitWeights:
    """A torchvision-, timm- or raysl-layout state dict saved with ``torch.save``."""
    try:
        raw: Any = load_tensors(path)  # weights_only=True: a file can never run code
    except Exception as e:  # torch refuses pickled objects with an UnpicklingError
        raise CheckpointError(f"{FIELD}={str(path)!r}: not a state dict torch can load with "
                              f"weights_only=True ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{FIELD}={str(path)!r}: holds a {type(raw).__name__}, not a "
                              "state dict")
    try:
        tensors = unwrap(raw)
    except CheckpointError as e:
        raise CheckpointError(f"{FIELD}={str(path)!r}: {e}") from None
    encoder = build_encoder(cfg.model, cfg.data.channels, cfg.data.image_size)
    state = to_raysl_layout(tensors, encoder)
    layout = detect_layout(tensors)
    load_exactly(encoder, state, f"{FIELD}={str(path)!r} ({layout} layout)")
    return InitWeights(state, None, f"{path} ({layout} layout)")


def _check_architecture(cfg: Config, loaded: LoadedModel, spec: str) -> None:
    """A raysl source must have been built as this run builds its encoder."""
    source = loaded.config
    differ = [f"model.{name}={getattr(source.model, name)!r}" for name in _ARCHITECTURE
              if getattr(source.model, name) != getattr(cfg.model, name)]
    if source.data.channels != cfg.data.channels:
        differ.append(f"data.channels={source.data.channels}")
    if cfg.model.is_vit and source.data.image_size != cfg.data.image_size:
        differ.append(f"data.image_size={source.data.image_size}")  # the position embeddings
    if differ:
        raise ConfigError(FIELD, spec, "an encoder of this run's architecture; it was built "
                          f"with other settings: add --set {' '.join(differ)}")


def _method_state(cfg: Config, loaded: LoadedModel, directory: Path,
                  teacher: TeacherWeights | None) -> dict[str, Any] | None:
    """The checkpoint's whole method (heads, EMA target) when it is this run's method and fits.

    A checkpoint of another method, or of this one with other head sizes, gives None: the heads
    start fresh, as they do from a registered version (which holds the encoder alone).
    """
    if loaded.config.method.name != cfg.method.name:
        return None
    found = latest_checkpoint(directory) / METHOD_FILE
    if not found.is_file():
        return None
    state = load_tensors(found)
    return state if not mismatch(state, build_method(cfg, teacher=teacher)) else None
