"""Name -> class registries (methods, backbones...). Lookups that miss list the known names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_REGISTRIES: dict[str, dict[str, Any]] = {}


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class or function decorator: ``@register("method", "simclr")``.

    Raises:
        ValueError: if ``name`` is already registered for ``kind``.
    """

    def decorate(obj: T) -> T:
        table = _REGISTRIES.setdefault(kind, {})
        if name in table and table[name] is not obj:
            raise ValueError(f"{kind} {name!r} is registered twice ({table[name]} and {obj})")
        table[name] = obj
        return obj

    return decorate


def get(kind: str, name: str) -> Any:
    """The object registered as ``name``; ``KeyError`` naming the known names otherwise."""
    table = _REGISTRIES.get(kind, {})
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; known: {sorted(table)}")
    return table[name]


def names(kind: str) -> list[str]:
    """Sorted names registered for ``kind``."""
    return sorted(_REGISTRIES.get(kind, {}))
