"""Sweep definitions: a base pretraining config, a search space over its fields, how to search.

A sweep is a small YAML file in ``tuning/`` (see ``tuning/README.md``)::

    name: simclr-temperature            # the Tune experiment; the same name again = resume it
    base: ../pipelines/configs/demo.yaml
    set: {train.epochs: 6}              # overrides of the base config, as --set
    space:
      method.temperature: {loguniform: [0.05, 1.0]}
      data.batch_size_global: {grid: [64, 128]}
    scheduler: {name: asha, grace_period: 2}
    num_samples: 4

Everything is validated before any trial starts: every field of the space must exist in the base
config, and every value (or both bounds of a range) must make a valid config, so a typo or a
negative temperature fails at once with an error naming the field. This module never imports Ray:
:mod:`raysl.sweep.run` turns a :class:`Sweep` into a Tune experiment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from raysl.config import (
    CHAMPION_ALIAS,
    Config,
    from_mapping,
    merge_override,
    parse_override,
)
from raysl.errors import ConfigError, check
from raysl.eval.monitors import MONITOR_METRICS

SearchKind = Literal["grid", "choice", "uniform", "loguniform", "randint"]
SEARCH_KINDS: tuple[str, ...] = ("grid", "choice", "uniform", "loguniform", "randint")
RANGE_KINDS = ("uniform", "loguniform", "randint")

# Metrics comparable across trials, measured every epoch: accuracies of the online evaluation on
# the same held-out split, or, with no labels, the label-free monitors on the same fixed sample
# of training images (eval/monitors.py). SSL losses are not comparable: NT-Xent at temperature
# 0.1 and at 0.5, or with 256 and with 4096 negatives, lives on different scales.
LABEL_FREE_METRICS = tuple(MONITOR_METRICS)
ONLINE_METRICS = ("eval/online_knn_top1", "eval/online_probe_top1", *LABEL_FREE_METRICS)
# What the sweep's best encoder and the current champion are compared on: an accuracy of the
# evaluation suite (its protocol), or a label-free monitor on the sweep's training sample.
CHAMPION_METRICS = {"knn_top1": "knn", "knn_top5": "knn", "linear_top1": "linear",
                    "linear_top5": "linear"}
LABEL_FREE_CHAMPION_METRICS = {"rankme": "eval/rankme", "lidar": "eval/lidar"}


def is_label_free(metric: str) -> bool:
    """Whether ``metric`` (online or champion) is a label-free monitor, not an accuracy."""
    return metric in LABEL_FREE_METRICS or metric in LABEL_FREE_CHAMPION_METRICS


def metric_scale(metric: str) -> float:
    """100 for accuracies (shown in %), 1 for the monitors (effective ranks)."""
    return 1.0 if is_label_free(metric) else 100.0


def metric_text(metric: str, value: float | None) -> str:
    """``81.20%`` for an accuracy, ``31.9`` for an effective rank, ``-`` for none/NaN."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.1f}" if is_label_free(metric) else f"{100 * value:.2f}%"

# Set by the sweep for every trial, so they cannot be swept or overridden per trial.
SWEEP_OWNED = ("train.run_name", "train.storage_path", "tracking.", "eval.enabled",
               "eval.online_knn_every", "eval.online_probe", "eval.monitor_every",
               "method.name", "train.address",
               # One schedule and one resource plan per sweep: ASHA's epochs and the trials'
               # CPU/GPU budget are computed once, and every trial is judged on the same data.
               "train.epochs", "train.num_workers", "train.use_gpu", "train.cpus_per_worker",
               "train.data_cpus", "data.source.", "eval.bank.", "eval.query.", "eval.holdout",
               "train.checkpoint_every_steps", "train.min_workers")
MAX_CHECKED_COMBINATIONS = 2000  # finite values are checked together up to this many configs


@dataclass(frozen=True)
class SearchDim:
    """One swept config field.

    ``values``: the values of ``grid`` / ``choice``; ``(low, high)`` of ``uniform``,
    ``loguniform`` and ``randint`` (``high`` excluded for ``randint``, as in Ray Tune).
    """

    field: str
    kind: SearchKind
    values: tuple[Any, ...]

    @property
    def candidates(self) -> tuple[Any, ...]:
        """Values that must each make a valid config: every listed value, or both bounds."""
        if self.kind == "randint":
            return (self.values[0], self.values[1] - 1)
        return self.values

    @property
    def log_scale(self) -> bool:
        """Whether plots should use a log axis for this field."""
        return self.kind == "loguniform"

    @property
    def finite(self) -> bool:
        """Whether the values can be enumerated (grid search)."""
        return self.kind in ("grid", "choice")

    def describe(self) -> str:
        """``loguniform(0.05, 1)``, ``grid[64, 128]``."""
        if self.kind in RANGE_KINDS:
            return f"{self.kind}({self.values[0]:g}, {self.values[1]:g})"
        return f"{self.kind}{list(self.values)}"


@dataclass(frozen=True)
class SchedulerConfig:
    """Early stopping of bad trials. Time is counted in epochs (each epoch reports once).

    ``asha``: asynchronous successive halving (Li et al. 2020): at epochs ``grace_period`` x
    ``reduction_factor``^k a trial continues only if it is in the top 1/``reduction_factor`` of
    the trials that reached that epoch. ``median``: stop a trial whose best result so far is below
    the median of the others' running averages at the same epoch. ``fifo``: no early stopping.
    """

    name: Literal["asha", "median", "fifo"] = "asha"
    grace_period: int = 1  # epochs every trial runs before it can be stopped
    reduction_factor: float = 3.0  # asha: keep the top 1/reduction_factor at each rung
    min_samples_required: int = 3  # median: trials needed at an epoch before it stops any

    def __post_init__(self) -> None:
        check(self.grace_period >= 1, "grace_period", self.grace_period, ">= 1 epoch")
        check(self.reduction_factor > 1, "reduction_factor", self.reduction_factor, "must be > 1")
        check(self.min_samples_required >= 1, "min_samples_required", self.min_samples_required,
              ">= 1")


@dataclass(frozen=True)
class ChampionConfig:
    """Registering the sweep's best encoder and moving the alias to it if it wins."""

    register: bool = True  # register the best trial's encoder (tracking.registered_model)
    alias: str = CHAMPION_ALIAS
    # Compared between the best trial and the current champion, both evaluated now: on the base
    # config's eval split (knn_top1, knn_top5, linear_top1, linear_top5), or without labels on
    # the training data's monitor sample (rankme, lidar; higher is better).
    metric: str = "knn_top1"

    def __post_init__(self) -> None:
        known = [*CHAMPION_METRICS, *LABEL_FREE_CHAMPION_METRICS]
        check(self.metric in known, "metric", self.metric,
              f"one of {known} (the evaluation suite's accuracies, which need a labeled split, "
              "or a label-free monitor on the training images)")
        check(bool(self.alias) and all(c.isalnum() or c in "-_" for c in self.alias)
              and self.alias != "latest" and not re.fullmatch(r"[vV]\d+", self.alias), "alias",
              self.alias, "letters, digits, '-' and '_'; not 'latest' or v<number> (MLflow "
              "reserves them)")


@dataclass(frozen=True)
class SweepSettings:
    """How the space is searched; the scalar part of a sweep file (defaults live here)."""

    name: str = ""  # Tune experiment name (storage_path/name); empty = the file's stem
    base: str = ""  # pretraining YAML of overrides, relative to the sweep file; empty = defaults
    method: str = ""  # fills "{method}" in name and base; the base's method.name otherwise
    search: Literal["random", "grid", "optuna"] = "random"
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    metric: str = "eval/online_knn_top1"
    mode: Literal["max"] = "max"
    num_samples: int = 1  # random/optuna: trials; grid: repeats of the whole grid
    max_concurrent_trials: int = 0  # 0 = as many as the cluster holds at once
    trial_driver_cpus: float = 0.25  # each trial's driver (waits on its Ray Train workers)
    max_failures: int = 1  # restarts of a failed trial (it resumes from its last checkpoint)
    champion: ChampionConfig = field(default_factory=ChampionConfig)

    def __post_init__(self) -> None:
        check(all(c.isalnum() or c in "-_.{}" for c in self.name), "name", self.name,
              "letters, digits, '-', '_' and '.'")
        check(self.metric in ONLINE_METRICS, "metric", self.metric,
              f"one of {list(ONLINE_METRICS)}: early stopping needs an accuracy (or, without "
              "labels, a label-free monitor) that compares across trials, measured every epoch; "
              "SSL losses do not compare across temperatures or batch sizes")
        check(self.num_samples >= 1, "num_samples", self.num_samples, ">= 1")
        check(self.max_concurrent_trials >= 0, "max_concurrent_trials",
              self.max_concurrent_trials, ">= 0 (0 = as many as fit)")
        check(self.trial_driver_cpus >= 0, "trial_driver_cpus", self.trial_driver_cpus, ">= 0")
        check(self.max_failures >= 0, "max_failures", self.max_failures, ">= 0")


@dataclass(frozen=True)
class Sweep:
    """A validated sweep: its settings, its space and the base config every trial starts from."""

    settings: SweepSettings
    space: tuple[SearchDim, ...]
    base: Config
    source: str = ""  # the sweep file, for messages

    @property
    def name(self) -> str:
        """The Tune experiment name (the resume key)."""
        return self.settings.name

    @property
    def fields(self) -> list[str]:
        """The swept config fields, in file order."""
        return [d.field for d in self.space]

    @property
    def num_trials(self) -> int:
        """Trials Tune will run: the grid (every field with search=grid) x num_samples."""
        enumerated = [d for d in self.space
                      if d.kind == "grid" or (self.settings.search == "grid" and d.finite)]
        return math.prod(len(d.values) for d in enumerated) * self.settings.num_samples

    def trial_config(self, params: dict[str, Any], trial_id: str, overrides: dict[str, Any]
                     ) -> Config:
        """The config of one trial: the base, the sampled ``params``, the sweep's own settings.

        Args:
            params: ``{"method.temperature": 0.21, ...}`` as sampled by Tune.
            trial_id: Tune's trial id; the Ray Train run and MLflow child run are named after it,
                so a restored trial resumes both.
            overrides: settings the sweep owns (storage, tracking URI...), dotted keys.
        """
        values = {**params, **overrides, "train.run_name": f"{self.name}-{trial_id}"}
        return config_with(self.base, values, f"trial {trial_id} of sweep {self.name}")

    def config_with(self, params: dict[str, Any]) -> Config:
        """The base config with ``params`` set: what a trial trains, minus the sweep's settings."""
        return config_with(self.base, params)

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the settings, the space and the base config (what a trial needs)."""
        return {"settings": dataclasses.asdict(self.settings),
                "space": [dataclasses.asdict(d) for d in self.space],
                "base": self.base.to_dict(), "source": self.source}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Sweep:
        """Inverse of :meth:`to_dict`."""
        space = tuple(SearchDim(d["field"], d["kind"], tuple(d["values"])) for d in raw["space"])
        return cls(from_mapping(SweepSettings, raw["settings"]), space,
                   Config.from_dict(raw["base"]), raw.get("source", ""))

    def definition(self) -> str:
        """The sweep as YAML: logged to the parent run, and hashed to detect a changed file."""
        return yaml.safe_dump({"settings": dataclasses.asdict(self.settings),
                               "space": {d.field: {d.kind: list(d.values)} for d in self.space},
                               "base": self.base.public_dict()}, sort_keys=False)

    def fingerprint(self) -> str:
        """Short hash of :meth:`definition`: a restored sweep must match the one that started."""
        return hashlib.sha256(self.definition().encode()).hexdigest()[:16]


def load_sweep(path: str | os.PathLike[str], overrides: Sequence[str] = (),
               method: str | None = None, base_overrides: Sequence[str] = (),
               smoke: bool = False) -> Sweep:
    """Read and validate a sweep file.

    Args:
        path: the sweep YAML.
        overrides: ``--set`` items. Keys of the sweep file (``num_samples``, ``scheduler.*``,
            ``champion.*``, ...) set the sweep; any other key sets the base pretraining config.
        method: ``--method``: the method to sweep (fills ``{method}`` in name and base).
        base_overrides: applied to the base config after the file's ``set`` (smoke tests).
        smoke: a smoke test: grids become choices (``num_samples`` trials in all) and batch-size
            fields are not swept (tiny generated data cannot fill the sweep's batches).

    Raises:
        ConfigError: naming the field, the value and what was expected.
        FileNotFoundError: the sweep file or its base config does not exist.
    """
    source = str(path)
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError("<root>", raw, "a YAML mapping (name, base, set, space, ...)", source)
    raw_space = raw.pop("space", None)
    raw_set = raw.pop("set", None) or {}
    if not isinstance(raw_set, dict):
        raise ConfigError("set", raw_set, "a mapping of config fields to values", source)
    file_sets = [f"{k}={_yaml_value(v)}" for k, v in raw_set.items()]
    cli_sets = []
    setting_names = {f.name for f in dataclasses.fields(SweepSettings)}
    for item in overrides:
        keys, value = parse_override(item)
        if keys[0] in setting_names and not (keys[0] == "method" and len(keys) > 1):
            merge_override(raw, keys, value)  # `method.temperature=...` is the base config's
        else:
            cli_sets.append(item)
    if method:
        raw["method"] = method
    raw.setdefault("name", Path(path).stem)
    try:
        settings = from_mapping(SweepSettings, raw)
    except ConfigError as e:
        raise ConfigError(e.field, e.value, e.expected, source) from None
    settings = _expand_method(settings, source)
    base_path = None
    if settings.base:
        base_path = (Path(path).parent / settings.base).resolve()
        if not base_path.exists():
            raise ConfigError("base", settings.base, f"a pretraining YAML; {base_path} does not "
                              "exist", source)
    if smoke:  # never mixes with the real sweep's Tune state, runs or champion
        settings = dataclasses.replace(settings, name=f"{settings.name}-smoke")
    head = [f"method.name={settings.method}"] if settings.method else []
    base_items = [*head, *file_sets, *base_overrides, *cli_sets]
    from raysl import config as config_mod

    base = config_mod.load(base_path, base_items)
    if smoke:
        smoke_model = f"tracking.registered_model={base.registered_model_name}-smoke"
        base = config_mod.load(base_path, [*base_items, smoke_model])
    if smoke and isinstance(raw_space, dict):
        raw_space = {k: ({"choice": v["grid"]} if isinstance(v, dict) and "grid" in v else v)
                     for k, v in raw_space.items() if not str(k).startswith("data.batch_size")}
    if base.train.checkpoint_every_steps:
        raise ConfigError("train.checkpoint_every_steps", base.train.checkpoint_every_steps,
                          "0 in a sweep: trials checkpoint at epoch ends, the unit Tune's "
                          "schedulers stop and resume trials in", source)
    if base.train.elastic:
        raise ConfigError("train.min_workers", base.train.min_workers,
                          "0 in a sweep: each trial holds a fixed share of the cluster, so its "
                          "worker count cannot grow or shrink", source)
    space = parse_space(raw_space, base, source)
    _check_search(settings, space, base, source)
    return Sweep(settings, space, base, source)


def _yaml_value(value: Any) -> str:
    """A ``set:`` value as the text of a ``--set`` item (read back as YAML)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _expand_method(settings: SweepSettings, source: str) -> SweepSettings:
    """Fill ``{method}`` in ``name`` and ``base`` (one sweep file for every method)."""
    if "{method}" not in settings.name + settings.base:
        return settings
    if not settings.method:
        raise ConfigError("method", "", "needed: name or base contains {method}; pass --method "
                          "NAME or set method in the sweep file", source)
    return dataclasses.replace(settings, name=settings.name.replace("{method}", settings.method),
                               base=settings.base.replace("{method}", settings.method))


def _check_not_owned(dotted: str, value: Any, source: str) -> None:
    for owned in SWEEP_OWNED:
        if dotted == owned or (owned.endswith(".") and dotted.startswith(owned)):
            raise ConfigError(f"space.{dotted}", value, "cannot be swept: the sweep sets it for "
                              "every trial (run names, storage, tracking and online evaluation "
                              "follow the sweep)", source)


def parse_space(raw: Any, base: Config, source: str = "") -> tuple[SearchDim, ...]:
    """The ``space:`` mapping as :class:`SearchDim` s, each checked against ``base``.

    Raises:
        ConfigError: ``space.<field>`` unknown, an empty choice, bad bounds, or a value the config
            rejects (e.g. a negative temperature), naming the field and the value.
    """
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("space", raw, "a non-empty mapping of config fields to search domains, "
                          "e.g. {optim.base_lr: {loguniform: [0.1, 2.0]}}", source)
    dims = []
    for name, domain in raw.items():
        where = f"space.{name}"
        current = _field_value(base, str(name), where, source)
        if str(name) == "method.name":
            raise ConfigError(where, domain, "one method per sweep (methods differ in their "
                              "fields); run one sweep per method with --method", source)
        _check_not_owned(str(name), domain, source)
        dim = _parse_domain(str(name), domain, where, source)
        if dim.kind in ("uniform", "loguniform") and isinstance(current, int) \
                and not isinstance(current, bool):
            raise ConfigError(f"{where}.{dim.kind}", list(dim.values), f"{dim.field} is an "
                              "integer; uniform ranges sample floats: use randint, choice or "
                              "grid", source)
        for value in dim.candidates:
            _check_values(base, {dim.field: value}, source)
        dims.append(dim)
    _check_combinations(base, dims, source)
    return tuple(dims)


def config_with(base: Config, values: dict[str, Any], source: str | None = None) -> Config:
    """``base`` with ``values`` (dotted keys, e.g. a trial's parameters) set, validated."""
    raw = base.to_dict()
    for key, value in values.items():
        merge_override(raw, key.split("."), value)
    return Config.from_dict(raw, source=source)


def _check_values(base: Config, values: dict[str, Any], source: str) -> None:
    """Raise ``ConfigError("space.<field>", ...)`` unless ``values`` on ``base`` make a config."""
    try:
        config_with(base, values)
    except ConfigError as e:
        if len(values) == 1 and e.field in values:
            raise ConfigError(f"space.{e.field}", e.value, e.expected, source) from None
        combo = ", ".join(f"{k}={v!r}" for k, v in values.items())
        field = f"space.{e.field}" if e.field in values else f"space.{next(iter(values))}"
        raise ConfigError(field, e.value, f"{e.expected} (with {combo})", source) from None


def _check_combinations(base: Config, dims: list[SearchDim], source: str) -> None:
    """Every combination of the listed values (and of small integer ranges) makes a config.

    Checked up to :data:`MAX_CHECKED_COMBINATIONS` configs: beyond, each value alone was checked.
    """
    import itertools

    options = []
    for d in dims:
        if d.kind == "randint" and d.values[1] - d.values[0] <= 64:
            options.append(list(range(d.values[0], d.values[1])))
        else:
            options.append(list(d.candidates))
    if len(dims) < 2 and not any(d.kind == "randint" for d in dims):
        return
    if math.prod(len(o) for o in options) > MAX_CHECKED_COMBINATIONS:
        return
    for combo in itertools.product(*options):
        _check_values(base, {d.field: v for d, v in zip(dims, combo, strict=True)}, source)


def _field_value(base: Config, name: str, where: str, source: str) -> Any:
    """The base config's value of the dotted field ``name``; ConfigError if it is no field."""
    node: Any = base
    for i, part in enumerate(name.split(".")):
        known = [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []
        if part not in known:
            section = ".".join(name.split(".")[:i]) or "the config"
            raise ConfigError(where, name, f"unknown config field; known fields of {section}: "
                              f"{known}", source)
        node = getattr(node, part)
    if dataclasses.is_dataclass(node):
        raise ConfigError(where, name, "is a section; sweep one of its fields", source)
    return node


def _parse_domain(name: str, domain: Any, where: str, source: str) -> SearchDim:
    if not isinstance(domain, dict) or len(domain) != 1:
        raise ConfigError(where, domain, f"one of {{kind: values}} with kind in "
                          f"{list(SEARCH_KINDS)}, e.g. {{choice: [0.1, 0.2]}}", source)
    kind, values = next(iter(domain.items()))
    if kind not in SEARCH_KINDS:
        raise ConfigError(f"{where}.{kind}", values, f"kind must be one of {list(SEARCH_KINDS)}",
                          source)
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}.{kind}", values, "a non-empty list of values", source)
    if kind in RANGE_KINDS:
        if len(values) != 2 or not all(_is_number(v) for v in values) or values[0] >= values[1]:
            raise ConfigError(f"{where}.{kind}", values, "[low, high] with low < high", source)
        if kind == "loguniform" and values[0] <= 0:
            raise ConfigError(f"{where}.{kind}", values, "0 < low < high (a log scale)", source)
        if kind == "randint" and not all(isinstance(v, int) for v in values):
            raise ConfigError(f"{where}.{kind}", values, "integer [low, high) bounds", source)
    elif len(set(map(repr, values))) != len(values):
        raise ConfigError(f"{where}.{kind}", values, "distinct values", source)
    return SearchDim(name, kind, tuple(values))


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_search(settings: SweepSettings, space: tuple[SearchDim, ...], base: Config,
                  source: str) -> None:
    if settings.search == "grid":
        for d in space:
            if not d.finite:
                raise ConfigError(f"space.{d.field}", d.describe(), "search=grid needs values "
                                  "it can enumerate (grid or choice); use search=random or "
                                  "optuna for ranges", source)
    if settings.search == "optuna":
        for d in space:
            if d.kind == "grid":
                raise ConfigError(f"space.{d.field}", d.describe(), "search=optuna samples "
                                  "every field; use choice instead of grid", source)
        if importlib.util.find_spec("optuna") is None:
            raise ConfigError("search", "optuna", "needs the optuna package (pip install "
                              "optuna); or use search=random", source)
    grace = settings.scheduler.grace_period
    if settings.scheduler.name != "fifo" and grace > base.train.epochs:
        raise ConfigError("scheduler.grace_period", grace, f"<= train.epochs "
                          f"({base.train.epochs}): a trial cannot be judged after it ends",
                          source)
