"""Building config dataclasses from plain data (YAML, ``--set``, JSON): types checked, errors named.

Generic over any frozen dataclass: unknown keys, wrong types and out-of-range values raise a
:class:`~raysl.config.errors.ConfigError` naming the dotted field. The ``method`` section's class
depends on ``method.name`` and is looked up in the method registry (the only place the
configuration consults anything above it, and only through :mod:`raysl.catalog`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar

import yaml

from raysl import catalog
from raysl.config.method import MethodConfig
from raysl.errors import ConfigError

D = TypeVar("D")


def method_spec(name: str) -> Any:
    """The registered method class ``name``: its ``Config``, preset and view layout.

    Raises:
        ConfigError: ``method.name`` is not a registered method.
    """
    try:
        return catalog.get("method", name)
    except KeyError:
        raise ConfigError("method.name", name,
                          f"must be one of {catalog.names('method')}") from None


def from_mapping(cls: type[D], raw: Any, path: str = "") -> D:
    """Build and validate any config dataclass ``cls`` from plain data.

    Raises:
        ConfigError: unknown keys, wrong types or out-of-range values, naming the field.
    """
    return _build(cls, raw, path)


def _build(cls: type[D], raw: Any, path: str) -> D:
    if not isinstance(raw, Mapping):
        raise ConfigError(path or "<root>", raw, "must be a mapping of fields")
    if cls is MethodConfig:
        cls = method_spec(raw.get("name", MethodConfig.name)).Config
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
        if isinstance(value, bool) and ("on" if value else "off") in choices:
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as true/false
        if value not in choices or type(value) is not type(choices[0]):
            raise ConfigError(where, value, f"must be one of {list(choices)}")
        return value
    if origin is tuple and typing.get_args(tp)[-1] is Ellipsis:  # tuple[X, ...]: any length
        item = typing.get_args(tp)[0]
        if isinstance(value, str):  # `--set eval.protocols=knn,linear`
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]  # `--set eval.linear_epochs=50` means a list of one
        if not isinstance(value, list | tuple):
            raise ConfigError(where, value, "must be a list")
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
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
    if tp is float and isinstance(value, str):
        # PyYAML reads `1e-6` (no dot) as a string, following YAML 1.1; accept it as a number.
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(where, value, f"must be of type {tp.__name__}, not a boolean")
    if not isinstance(value, tp):
        got = type(value).__name__
        raise ConfigError(where, value, f"must be of type {tp.__name__}, got {got}")
    return value


def flatten(d: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` -> ``("a.b", 1)`` pairs."""
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            yield from flatten(v, key + ".")
        else:
            yield key, v


def plain(obj: Any) -> Any:
    """Dicts and lists all the way down (tuples become lists), as YAML and JSON write them."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [plain(v) for v in obj]
    return obj


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


