"""The catalog of named parts: methods, readers and eval protocols, each looked up by name.

Not to be confused with MLflow's model registry (:mod:`raysl.tracking.model_registry`). A
miss lists the known names.

Each kind has a provider package whose import registers every entry of that kind; a lookup
imports it first, so ``catalog.get("method", "byol")`` works wherever it is called, without a
side-effect import that a linter could remove. Adding a method, reader or protocol is one new
module plus one import line in its package's ``__init__``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# Kind -> the package that registers its entries (imported on the first lookup of that kind).
PROVIDERS = {"method": "raysl.methods", "reader": "raysl.data.readers",
             "protocol": "raysl.eval.protocols"}

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


def _table(kind: str) -> dict[str, Any]:
    if kind in PROVIDERS:
        importlib.import_module(PROVIDERS[kind])  # cached after the first time
    return _REGISTRIES.get(kind, {})


def get(kind: str, name: str) -> Any:
    """The object registered as ``name``; ``KeyError`` naming the known names otherwise."""
    table = _table(kind)
    if name not in table:
        raise KeyError(f"unknown {kind} {name!r}; known: {sorted(table)}")
    return table[name]


def names(kind: str) -> list[str]:
    """Sorted names registered for ``kind``."""
    return sorted(_table(kind))


def entries(kind: str) -> dict[str, Any]:
    """Every ``name -> object`` of ``kind``, in name order."""
    table = _table(kind)
    return {name: table[name] for name in sorted(table)}
