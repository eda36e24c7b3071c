"""``Config``: every section of a pretraining run, and :func:`load` (YAML + ``--set``)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from raysl.config.build import (
    _build,
    flatten,
    merge_override,
    method_spec,
    parse_override,
    plain,
)
from raysl.config.data import DataConfig
from raysl.config.eval import EvalConfig
from raysl.config.method import DEFAULT_METHOD, MethodConfig
from raysl.config.model import ModelConfig
from raysl.config.optim import OptimConfig
from raysl.config.presets import VIEW_PRESETS
from raysl.config.source import SourceConfig
from raysl.config.tracking import TrackingConfig
from raysl.config.train import TrainConfig
from raysl.errors import ConfigError
from raysl.redact import redact_values


def _default_method() -> MethodConfig:
    config: MethodConfig = method_spec(DEFAULT_METHOD).Config()
    return config


def _default_data() -> DataConfig:
    preset: str = method_spec(DEFAULT_METHOD).default_preset
    return DataConfig(preset=preset, views=VIEW_PRESETS[preset])


@dataclass(frozen=True)
class Config:
    """Everything a pretraining run needs. Build it with :meth:`from_dict` or :func:`load`.

    ``Config()`` is the default method (SimCLR) with its own defaults and augmentation preset,
    the same as ``Config.from_dict({})``.
    """

    data: DataConfig = field(default_factory=_default_data)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=_default_method)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        """Checks across sections that need no method (those that do: ``SSLMethod.validate``)."""
        if not self.data.source.is_set:
            raise ConfigError("data.source.path", self.data.source.path,
                              "must name a file or directory unless format is 'generated'")
        b, a = self.data.batch_size_global, self.train.grad_accumulation
        for w in self.train.worker_counts:
            if b % (w * a) == 0:
                continue
            if w == self.train.num_workers:
                raise ConfigError("data.batch_size_global", b,
                                  f"must be divisible by train.num_workers x "
                                  f"train.grad_accumulation = {w} x {a} (equal micro-batches on "
                                  "every worker)")
            raise ConfigError("data.batch_size_global", b,
                              f"must be divisible by every worker count of the elastic run "
                              f"(train.min_workers={self.train.min_workers} to "
                              f"train.num_workers={self.train.num_workers}) x "
                              f"train.grad_accumulation; {w} x {a} is not")
        if self.model.is_vit:
            p = self.model.effective_patch_size
            local = self.data.views.local_crops
            for name, size in (("data.image_size", self.data.image_size),
                               ("data.views.local_size", self.data.effective_local_size)):
                if size % p and (local or name == "data.image_size"):
                    raise ConfigError(name, size, f"must be a multiple of the ViT patch size "
                                                  f"model.patch_size={p}")

    def with_workers(self, workers: int) -> Config:
        """This config for a worker group of ``workers`` (an elastic run's current size).

        The global batch stays: each worker's share of it follows the group's size.
        """
        if workers == self.train.num_workers:
            return self
        train = dataclasses.replace(self.train, num_workers=workers, min_workers=0)
        return dataclasses.replace(self, train=train)

    @property
    def batch_size_per_worker(self) -> int:
        """Images per optimizer step on each worker."""
        return self.data.batch_size_global // self.train.num_workers

    @property
    def micro_batch_size(self) -> int:
        """Images per forward pass on each worker (per_worker / grad_accumulation)."""
        return self.batch_size_per_worker // self.train.grad_accumulation

    @property
    def view_sizes(self) -> list[int]:
        """Side of each view the method receives: the global views, then the local crops.

        A jigsaw view is the tiles of an ``image_size`` crop (``data.jigsaw_tile_size`` each).
        """
        local = [self.data.effective_local_size] * self.data.views.local_crops
        return [self.data.image_size] * self.data.views.global_views + local

    @property
    def eval_bank(self) -> SourceConfig:
        """The labeled bank: ``eval.bank``, or, its path empty, the training data."""
        return self.eval.bank if self.eval.bank.is_set else self.data.source

    @property
    def registered_model_name(self) -> str:
        """Registry name of the encoder: ``tracking.registered_model``, else method-backbone."""
        return self.tracking.registered_model or f"raysl-{self.method.name}-{self.model.backbone}"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str | None = None) -> Config:
        """Build and validate a Config from nested plain data (YAML, JSON, ``to_dict`` output).

        The method's own checks (its view layout, queue sizes...) run here too, through the
        registry (``SSLMethod.validate``).
        """
        try:
            cfg = _build(cls, _with_derived(_with_view_preset(raw)), "")
            method_spec(cfg.method.name).validate(cfg)
            for workers in cfg.train.worker_counts:  # an elastic run's smaller groups too
                if workers != cfg.train.num_workers:
                    _validate_with_workers(cfg, workers)
        except ConfigError as e:
            raise ConfigError(e.field, e.value, e.expected, source) from None
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict; ``Config.from_dict(c.to_dict()) == c``."""
        out: dict[str, Any] = plain(dataclasses.asdict(self))
        return out

    def public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with credentials in URIs hidden: what is shown or stored."""
        out: dict[str, Any] = redact_values(self.to_dict())
        return out

    def to_yaml(self) -> str:
        """The effective config as YAML, credentials hidden (logged, saved in checkpoints)."""
        return yaml.safe_dump(self.public_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """``{"optim.base_lr": 0.3, ...}`` for MLflow params, credentials hidden."""
        return dict(flatten(self.public_dict()))


def _with_view_preset(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """``raw`` with ``data.views`` = the preset's fields, then the user's ``data.views`` on top.

    The preset is ``data.preset`` or, if unset, the method's own; so a BYOL config gets BYOL's
    asymmetric blur and solarization without writing them out, and any field can still be set.
    """
    data = raw.get("data", {}) if isinstance(raw, Mapping) else None
    method = raw.get("method", {}) if isinstance(raw, Mapping) else None
    if not isinstance(data, Mapping) or not isinstance(method, Mapping):
        return raw  # _build reports the malformed section
    views = data.get("views", {})
    if not isinstance(views, Mapping):
        return raw
    preset = data.get("preset") or method_spec(method.get("name", DEFAULT_METHOD)).default_preset
    if preset not in VIEW_PRESETS:
        raise ConfigError("data.preset", preset, f"must be one of {sorted(VIEW_PRESETS)}")
    merged = {**plain(dataclasses.asdict(VIEW_PRESETS[preset])), **views}
    return {**raw, "data": {**data, "preset": preset, "views": merged}}


def _with_derived(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """``raw`` with the values derived from other fields filled in, computed once here.

    A ViT's automatic local-crop size (96/224 of the global one) is rounded to whole patches.
    """
    if not isinstance(raw, Mapping) or not isinstance(raw.get("data", {}), Mapping):
        return raw  # _build reports the malformed section
    model = _build(ModelConfig, raw.get("model", {}), "model")
    data = _build(DataConfig, raw.get("data", {}), "data")
    views = data.views
    if not (model.is_vit and views.local_crops and not views.local_size):
        return raw
    p = model.effective_patch_size
    size = max(p, round(data.effective_local_size / p) * p)
    raw_data = raw["data"]
    return {**raw, "data": {**raw_data, "views": {**raw_data.get("views", {}),
                                                  "local_size": size}}}


def _validate_with_workers(cfg: Config, workers: int) -> None:
    """The method's checks for ``workers`` workers (their micro-batches are larger).

    Raises:
        ConfigError: naming the worker count that fails, from train.min_workers.
    """
    try:
        method_spec(cfg.method.name).validate(cfg.with_workers(workers))
    except ConfigError as e:
        raise ConfigError(e.field, e.value, f"{e.expected}; with {workers} workers, which this "
                          f"elastic run may have (train.min_workers={cfg.train.min_workers})"
                          ) from None


def load(path: str | os.PathLike[str] | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML file of overrides (optional), apply ``key=value`` overrides, validate.

    Raises:
        ConfigError: on unknown keys, wrong types or out-of-range values, naming the field.
        FileNotFoundError: if ``path`` does not exist.
    """
    raw: dict[str, Any] = {}
    source = None
    if path is not None:
        source = str(path)
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ConfigError("<root>", loaded, "a YAML mapping of sections", source)
        raw = loaded
    if isinstance(raw.get("method"), str):
        raw["method"] = {"name": raw["method"]}
    for item in overrides:
        keys, value = parse_override(item)
        merge_override(raw, keys, value)
    return Config.from_dict(raw, source)
