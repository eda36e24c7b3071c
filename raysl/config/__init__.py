"""Typed, frozen configuration: the only place where defaults live.

A run is described by one :class:`Config`. YAML files hold *overrides only*; ``--set a.b=value``
overrides on the command line are applied on top. :meth:`Config.from_dict` rejects unknown keys,
wrong types and out-of-range values with a :class:`ConfigError` naming the field, the value and
what was expected.

One module per section (``source``, ``views``, ``data``, ``model``, ``optim``, ``train``,
``eval``, ``tracking``; the augmentation presets in ``presets``), the generic builder in
``build`` and the whole run in ``run``. Method hyperparameters live in ``method``; their class
depends on ``method.name`` and is found in the catalog (``raysl/catalog.py``), so a new method
brings its own config dataclass (``raysl/methods/<name>.py``). The package imports nothing of
raysl but the catalog, the errors, redaction and the schedules.
"""

from raysl.config.build import (
    flatten,
    from_mapping,
    merge_override,
    method_spec,
    parse_override,
    plain,
)
from raysl.config.data import DataConfig
from raysl.config.eval import EvalConfig
from raysl.config.method import DEFAULT_METHOD, MethodConfig
from raysl.config.model import VIT_HEAD_DIM, VIT_SIZES, Backbone, ModelConfig
from raysl.config.optim import OptimConfig, OptimizerName
from raysl.config.presets import VIEW_PRESETS
from raysl.config.run import Config, load
from raysl.config.source import FASHION_MNIST_DIR, SourceConfig
from raysl.config.tracking import CHAMPION_ALIAS, TrackingConfig
from raysl.config.train import Precision, TrainConfig
from raysl.config.views import Pretext, ViewConfig
from raysl.errors import ConfigError, check

__all__ = [
    "CHAMPION_ALIAS", "DEFAULT_METHOD", "FASHION_MNIST_DIR", "VIEW_PRESETS", "VIT_HEAD_DIM",
    "VIT_SIZES", "Backbone", "Config", "ConfigError", "DataConfig", "EvalConfig", "MethodConfig",
    "ModelConfig", "OptimConfig", "OptimizerName", "Precision", "Pretext",
    "SourceConfig", "TrackingConfig", "TrainConfig", "ViewConfig", "check",
    "flatten", "from_mapping", "load", "merge_override", "method_spec", "parse_override", "plain",
]
