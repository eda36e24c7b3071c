"""Every error a user of raysl can meet, in one place (the ground floor: it imports nothing above).

Each names what was wrong and what was expected, so a message is enough to fix the cause:
``ConfigError`` a config value, ``DataError`` the data a config points at, ``CheckpointError``
a checkpoint, ``ModelNotFoundError`` the MODEL of a command, ``ExportError`` an export,
``TrackingUnavailableError`` the MLflow server, ``ClusterUnreachable`` the Ray head. Two end a
run on purpose: ``NonFiniteLossError`` (the loss became NaN or infinite) and
``RepresentationCollapsed`` (the monitors saw the representation collapse, with
``train.stop_on_collapse`` on); one after waiting: ``NodesNotBack`` (a lost node did not return
within ``train.node_wait_s``).
"""

from __future__ import annotations

from typing import Any

from raysl.redact import redact


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
        super().__init__(redact(f"{field}={value!r}: {expected}{where}"))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, Any, str, str | None]]:
        """Pickle by the constructor's arguments.

        A ConfigError raised in a Ray worker then reaches the driver as itself, not as a
        TypeError from rebuilding it with one argument.
        """
        return ConfigError, (self.field, self.value, self.expected, self.source)

    def under(self, prefix: str) -> ConfigError:
        """The same error with ``prefix.`` prepended to the field path."""
        return ConfigError(f"{prefix}.{self.field}", self.value, self.expected, self.source)


def check(ok: bool, field: str, value: Any, expected: str) -> None:
    """Raise ``ConfigError(field, value, expected)`` unless ``ok``."""
    if not ok:
        raise ConfigError(field, value, expected)


class DataError(ValueError):
    """The data a config points at is missing or unusable (names the field and the path)."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing files or does not match the model it is loaded into."""


class ModelNotFoundError(LookupError):
    """MODEL does not name a checkpoint, run or registered version that raysl can load."""


class ExportError(RuntimeError):
    """The export could not be made, or does not compute what the encoder computes."""


class ClusterUnreachable(ConnectionError):
    """The Ray cluster at ``RAY_ADDRESS`` does not answer, or refuses raysl's credentials."""


class TrackingUnavailableError(RuntimeError):
    """The tracking server did not answer within the time allowed."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops instead of corrupting the weights."""


class NodesNotBack(RuntimeError):
    """A lost node's resources did not come back within ``train.node_wait_s``; checkpoints kept."""


class RepresentationCollapsed(RuntimeError):
    """The monitors saw the representation collapse and ``train.stop_on_collapse`` is on."""
