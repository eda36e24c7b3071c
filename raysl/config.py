"""Typed, frozen configuration: the only place where defaults live.

A run is described by one :class:`Config`. YAML files hold *overrides only*; ``--set a.b=value``
overrides on the command line are applied on top. :func:`Config.from_dict` rejects unknown keys,
wrong types and out-of-range values with a :class:`ConfigError` naming the field, the value and
what was expected.

Method hyperparameters live in ``method``; its class depends on ``method.name`` and is looked up in
the method registry, so a new method brings its own config dataclass (``raysl/methods/<name>.py``).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import yaml

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist


class ConfigError(ValueError):
    """A config value a user wrote is not acceptable.

    Attributes:
        field: dotted path of the offending field, e.g. ``optim.base_lr``.
        value: the value that was given.
        expected: what would have been accepted.
    """

    def __init__(self, field: str, value: Any, expected: str, source: str | None = None) -> None:
        self.field, self.value, self.expected, self.source = field, value, expected, source
        where = f" (from {source})" if source else ""
        super().__init__(f"{field}={value!r}: {expected}{where}")

    def under(self, prefix: str) -> ConfigError:
        """The same error with ``prefix.`` prepended to the field path."""
        return ConfigError(f"{prefix}.{self.field}", self.value, self.expected, self.source)


def check(ok: bool, field: str, value: Any, expected: str) -> None:
    """Raise ``ConfigError(field, value, expected)`` unless ``ok``."""
    if not ok:
        raise ConfigError(field, value, expected)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------

SourceFormat = Literal["auto", "idx", "folder", "npz", "generated"]


@dataclass(frozen=True)
class SourceConfig:
    """Where images (and optional labels) come from.

    ``format="auto"`` picks the reader from ``path``: a ``.npz`` file, a directory holding IDX files
    (``*-images-idx3-ubyte[.gz]``), or any other directory as a tree of image files (class
    sub-folders become labels). ``generated`` makes a small labeled shapes dataset (no files).
    """

    format: SourceFormat = "auto"
    path: str = FASHION_MNIST_DIR
    split: str = "train"  # IDX only: "train" or "t10k"/"test"
    limit: int = 0  # use at most this many images (first N after a seeded shuffle); 0 = all

    def __post_init__(self) -> None:
        check(self.limit >= 0, "limit", self.limit, "must be >= 0 (0 = all images)")

    @property
    def is_set(self) -> bool:
        """Whether this names any data (eval.query may be left empty to hold out from the bank)."""
        return self.format == "generated" or bool(self.path)


@dataclass(frozen=True)
class ViewConfig:
    """SimCLR-style view augmentation, drawn independently per image.

    Defaults follow SimCLR's ImageNet recipe (Chen et al. 2020, appendix A): colour-jitter
    strength 1.0 means (0.8, 0.8, 0.8, 0.2); the CIFAR recipe uses strength 0.5 and no blur.
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)  # CIFAR-sized inputs: 0.2 keeps objects visible
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2  # at most 0.5 (a half turn of the colour wheel)
    grayscale_p: float = 0.2
    blur_p: float = 0.5  # 0 for 32px inputs, where blur destroys the little detail there is
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        check(0 < lo <= hi <= 1, "crop_scale", self.crop_scale, "needs 0 < min <= max <= 1")
        lo, hi = self.crop_ratio
        check(0 < lo <= hi, "crop_ratio", self.crop_ratio, "needs 0 < min <= max")
        for name in ("hflip_p", "jitter_p", "grayscale_p", "blur_p"):
            p = getattr(self, name)
            check(0 <= p <= 1, name, p, "is a probability in [0, 1]")
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            check(0 <= v < 1, name, v, "is a jitter strength in [0, 1)")
        check(0 <= self.hue <= 0.5, "hue", self.hue, "is a hue shift in [0, 0.5]")
        lo, hi = self.blur_sigma
        check(0 < lo <= hi, "blur_sigma", self.blur_sigma, "needs 0 < min <= max")


@dataclass(frozen=True)
class DataConfig:
    """Unlabeled pretraining data and how it is turned into views."""

    source: SourceConfig = field(default_factory=SourceConfig)
    image_size: int = 224  # side of the square views fed to the encoder
    decode_size: int = 0  # image files: shorter side resized to this, centre kept; 0 = 8/7 size
    channels: Literal[1, 3] = 3  # images are converted to this many channels (1 = grayscale)
    batch_size_global: int = 256  # images per optimizer step across ALL workers
    views: ViewConfig = field(default_factory=ViewConfig)
    augment_batch_size: int = 64  # images per Ray Data map_batches call on the CPU workers
    augment_cpus: float = 0.5  # logical CPUs each augmentation actor reserves
    shuffle_buffer: int = 1024  # local shuffle buffer (rows) on each train worker; 0 = off

    def __post_init__(self) -> None:
        check(8 <= self.image_size <= 1024, "image_size", self.image_size, "must be in [8, 1024]")
        check(self.decode_size == 0 or self.decode_size >= self.image_size, "decode_size",
              self.decode_size, f"must be 0 (auto) or >= image_size ({self.image_size})")
        check(self.batch_size_global >= 2, "batch_size_global", self.batch_size_global,
              "must be >= 2 (contrastive losses need negatives)")
        check(self.augment_batch_size >= 1, "augment_batch_size", self.augment_batch_size, ">= 1")
        check(self.augment_cpus > 0, "augment_cpus", self.augment_cpus, "must be > 0")
        check(self.shuffle_buffer >= 0, "shuffle_buffer", self.shuffle_buffer, ">= 0 (0 = off)")

    @property
    def effective_decode_size(self) -> int:
        """Decode size actually used: 8/7 of the view size unless set (256 for 224, as ImageNet)."""
        return self.decode_size or round(self.image_size * 8 / 7)


@dataclass(frozen=True)
class ModelConfig:
    """The encoder that is pretrained and exported."""

    backbone: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    width: int = 64  # channels of the first stage; 64 is torchvision's ResNet, 16 runs on a laptop
    small_stem: bool = False  # 3x3 stride-1 stem, no max-pool: for inputs <= 64 px (CIFAR, MNIST)

    def __post_init__(self) -> None:
        check(self.width >= 4 and self.width % 4 == 0, "width", self.width,
              "must be a multiple of 4 and >= 4 (64 = standard ResNet)")


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's config; ``name`` selects the registered method."""

    name: str = "simclr"


OptimizerName = Literal["lars", "sgd", "adamw"]


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (linear warm-up, then cosine decay)."""

    name: OptimizerName = "lars"
    base_lr: float = 0.3  # per 256 images: lr = base_lr * batch_size_global / 256 (Goyal et al.)
    weight_decay: float = 1e-6  # SimCLR with LARS; ~5e-4 with SGD on CIFAR-sized data
    momentum: float = 0.9
    warmup_epochs: float = 10.0
    final_lr_ratio: float = 0.0  # lr at the end of the cosine, as a fraction of the peak
    lars_eta: float = 0.001  # LARS trust coefficient (You et al. 2017)
    exclude_bias_and_norm: bool = True  # no weight decay / LARS adaptation on biases and norms

    def __post_init__(self) -> None:
        check(self.base_lr > 0, "base_lr", self.base_lr, "must be > 0")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        check(0 <= self.momentum < 1, "momentum", self.momentum, "must be in [0, 1)")
        check(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, "must be >= 0")
        check(0 <= self.final_lr_ratio <= 1, "final_lr_ratio", self.final_lr_ratio, "in [0, 1]")
        check(self.lars_eta > 0, "lars_eta", self.lars_eta, "must be > 0")

    def peak_lr(self, batch_size_global: int) -> float:
        """Learning rate after warm-up under the linear scaling rule."""
        return self.base_lr * batch_size_global / 256


Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class TrainConfig:
    """Distributed training with Ray Train."""

    epochs: int = 100
    num_workers: int = 2  # Ray Train workers (one per GPU on a GPU cluster)
    use_gpu: bool = False
    cpus_per_worker: float = 0.0  # 0 = auto: share the CPUs left after reserving some for Ray Data
    data_cpus: float = 1.0  # logical CPUs kept free for Ray Data beside the train workers
    precision: Precision = "auto"  # auto = bf16 (fp16 on pre-Ampere) autocast on GPU, fp32 on CPU
    seed: int = 0
    run_name: str = ""  # same name again = resume that run; empty = a new unique name
    storage_path: str = ""  # checkpoints; empty = ./ray_results; shared storage on multi-node
    max_failures: int = 0  # worker-group restarts from the last checkpoint before giving up
    keep_checkpoints: int = 2
    address: str = ""  # Ray cluster to use; empty = RAY_ADDRESS if set, else start a local one

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        check(self.num_workers >= 1, "num_workers", self.num_workers, "must be >= 1")
        check(self.cpus_per_worker >= 0, "cpus_per_worker", self.cpus_per_worker, ">= 0 (0 = auto)")
        check(self.data_cpus > 0, "data_cpus", self.data_cpus,
              "must be > 0: Ray Data needs CPU beside the train workers or the job hangs")
        check(self.max_failures >= -1, "max_failures", self.max_failures, ">= -1 (-1 = forever)")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", self.keep_checkpoints, ">= 1")
        check(all(c.isalnum() or c in "-_." for c in self.run_name), "run_name", self.run_name,
              "may only contain letters, digits, '-', '_' and '.'")


@dataclass(frozen=True)
class EvalConfig:
    """Frozen-feature kNN evaluation on a labeled split after pretraining."""

    enabled: bool = True
    bank: SourceConfig = field(default_factory=lambda: SourceConfig(split="train", limit=10000))
    query: SourceConfig = field(default_factory=lambda: SourceConfig(split="t10k"))
    holdout: float = 0.2  # used when query.path is empty: this fraction of the bank, stratified
    knn_k: int = 200  # 200 as in the common CIFAR protocol (Wu et al. 2018); ~20 for large banks
    knn_temperature: float = 0.1
    batch_size: int = 512
    baselines: bool = True  # also report random-init encoder and raw pixels on the same split

    def __post_init__(self) -> None:
        check(self.knn_k >= 1, "knn_k", self.knn_k, "must be >= 1")
        check(self.knn_temperature > 0, "knn_temperature", self.knn_temperature, "must be > 0")
        check(0 < self.holdout < 1, "holdout", self.holdout, "is a fraction in (0, 1)")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking and model registry."""

    tracking_uri: str = ""  # empty = $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment: str = "raysl"
    registered_model: str = ""  # empty = raysl-<method>-<backbone>
    register: bool = True


@dataclass(frozen=True)
class Config:
    """Everything a pretraining run needs. Build it with :meth:`from_dict` or :func:`load`."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        # `Config()` gets the bare base MethodConfig; swap in the registered method's own defaults.
        if type(self.method) is MethodConfig:
            object.__setattr__(self, "method", method_config_class(self.method.name)())
        for name, src in (("data.source", self.data.source), ("eval.bank", self.eval.bank)):
            if not src.is_set:
                raise ConfigError(f"{name}.path", src.path,
                                  "must name a file or directory unless format is 'generated'")
        b, w = self.data.batch_size_global, self.train.num_workers
        if b % w:
            raise ConfigError("data.batch_size_global", b,
                              f"must be divisible by train.num_workers={w} (equal shards)")

    @property
    def batch_size_per_worker(self) -> int:
        """Images per step on each worker."""
        return self.data.batch_size_global // self.train.num_workers

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str | None = None) -> Config:
        """Build and validate a Config from nested plain data (YAML, JSON, ``to_dict`` output)."""
        try:
            return _build(cls, raw, "")
        except ConfigError as e:
            raise ConfigError(e.field, e.value, e.expected, source) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict; ``Config.from_dict(c.to_dict()) == c``."""
        out: dict[str, Any] = _plain(dataclasses.asdict(self))
        return out

    def to_yaml(self) -> str:
        """The effective config as YAML (logged to MLflow, saved in checkpoints)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """``{"optim.base_lr": 0.3, ...}`` for MLflow params."""
        return dict(_flatten(self.to_dict()))


# ---------------------------------------------------------------------------------------------
# Building from plain data
# ---------------------------------------------------------------------------------------------

D = TypeVar("D")


def method_config_class(name: str) -> type[MethodConfig]:
    """The config dataclass of the registered method ``name``."""
    # Imported here, not at the top: methods import this module to define their configs.
    from raysl import methods, registry

    del methods  # imported for its side effect: registering every method
    try:
        method_cls = registry.get("method", name)
    except KeyError:
        raise ConfigError("method.name", name,
                          f"must be one of {registry.names('method')}") from None
    config_cls: type[MethodConfig] = method_cls.Config
    return config_cls


def _build(cls: type[D], raw: Any, path: str) -> D:
    if not isinstance(raw, Mapping):
        raise ConfigError(path or "<root>", raw, "must be a mapping of fields")
    if cls is MethodConfig:
        name = raw.get("name", MethodConfig.name)
        cls = method_config_class(name)  # type: ignore[assignment]
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in known:
            raise ConfigError(where, value, f"unknown field; known fields here: {sorted(known)}")
        kwargs[key] = _coerce(hints[key], value, where)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise (e.under(path) if path and not e.field.startswith(path + ".") else e) from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)  # type: ignore[arg-type]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices or type(value) is not type(choices[0]):
            raise ConfigError(where, value, f"must be one of {list(choices)}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(where, value, f"must be a list of {len(args)} values")
        pairs = enumerate(zip(args, value, strict=True))
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in pairs)
    if origin in (types.UnionType, typing.Union):
        raise TypeError(f"unsupported annotation {tp} for {where}")  # keep configs simple
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(where, value, f"must be of type {tp.__name__}, not a boolean")
    if not isinstance(value, tp):
        got = type(value).__name__
        raise ConfigError(where, value, f"must be of type {tp.__name__}, got {got}")
    return value


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [_plain(v) for v in obj]
    return obj


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            yield from _flatten(v, key + ".")
        else:
            yield key, v


# ---------------------------------------------------------------------------------------------
# Files and overrides
# ---------------------------------------------------------------------------------------------


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"optim.base_lr=0.5"`` -> ``(["optim", "base_lr"], 0.5)``; the value is read as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", item, "must look like section.field=value")
    return key.strip().split("."), yaml.safe_load(text) if text.strip() else ""


def merge_override(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set ``raw[k0][k1]...[kn] = value``, creating intermediate mappings."""
    node = raw
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if isinstance(child, str) and k == "method":  # `method: simclr` shorthand in YAML
            child = node[k] = {"name": child}
        if not isinstance(child, dict):
            raise ConfigError(".".join(keys), value, f"'{k}' is not a section")
        node = child
    node[keys[-1]] = value


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
