"""The one error type of configuration: it names the field, the value and what was expected."""

from __future__ import annotations

from typing import Any

from raysl.config.redact import redact


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
