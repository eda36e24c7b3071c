"""The method section's base (``method``): each registered method brings its own subclass."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_METHOD = "simclr"


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's config; ``name`` selects the registered method.

    A method's own fields live in its subclass (``raysl/methods/<name>.py``), found by name in
    the method registry when a config is built.
    """

    name: str = DEFAULT_METHOD
