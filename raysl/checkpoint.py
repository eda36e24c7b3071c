"""Checkpoints: a directory of named files, written atomically, loaded strictly.

Files: ``encoder.pt`` (what the registry serves), ``method.pt`` (encoder + heads and any EMA
target), ``optimizer.pt``, ``state.json`` (epoch, step, the effective config, run info), and any
extra training state by name (``probe.pt``: the online probe and its optimizer; ``scaler.pt``:
fp16's GradScaler). Tensors are loaded with ``weights_only=True``: a checkpoint can never run
code.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raysl.errors import CheckpointError

ENCODER_FILE, METHOD_FILE, OPTIMIZER_FILE, STATE_FILE = (
    "encoder.pt", "method.pt", "optimizer.pt", "state.json")
FILES_KEY = "files"  # state.json's list of the checkpoint's other files and their sizes


def _atomic_write(path: Path, write: Any) -> None:
    """Write via a temporary file in the same directory, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(directory: str | os.PathLike[str], method: nn.Module, encoder: nn.Module,
                    optimizer: torch.optim.Optimizer, state: dict[str, Any],
                    extras: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Write the checkpoint files into ``directory`` (created if needed).

    ``extras``: more training state by name, each a state dict (tensors, numbers, strings and
    containers of them) written as ``<name>.pt``.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _atomic_write(d / ENCODER_FILE, lambda f: torch.save(encoder.state_dict(), f))
    _atomic_write(d / METHOD_FILE, lambda f: torch.save(method.state_dict(), f))
    _atomic_write(d / OPTIMIZER_FILE, lambda f: torch.save(optimizer.state_dict(), f))
    for name, extra in (extras or {}).items():
        _atomic_write(d / f"{name}.pt", lambda f, extra=extra: torch.save(dict(extra), f))
    # state.json last: its presence marks a complete checkpoint, and it lists the files with
    # their sizes, so that a copy of the directory can be checked whole (Ray Train copies a
    # checkpoint file by file into place; a worker killed meanwhile leaves a part).
    files = {p.name: p.stat().st_size for p in sorted(d.iterdir())
             if p.is_file() and p.name != STATE_FILE and not p.name.startswith(".")}
    _atomic_write(d / STATE_FILE, lambda f: f.write(json.dumps({**state, FILES_KEY: files},
                                                               indent=2).encode()))


def is_complete(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds a whole checkpoint.

    Its ``state.json``, and every file that lists at the size it lists (for a checkpoint
    written before the list, ``state.json`` alone).
    """
    d = Path(directory)
    try:
        state = json.loads((d / STATE_FILE).read_text())
        files = state.get(FILES_KEY, {})
        return all((d / name).is_file() and (d / name).stat().st_size == size
                   for name, size in files.items())
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def read_state(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """``state.json`` of a checkpoint (epoch, step, config...)."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        raise CheckpointError(f"{directory}: no {STATE_FILE}; not a complete raysl checkpoint")
    state: dict[str, Any] = json.loads(path.read_text())
    state.pop(FILES_KEY, None)  # the list of files is the checkpoint's, not the training's
    return state


def load_tensors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A state dict saved by :func:`save_checkpoint` (tensors only, never pickled code)."""
    if not Path(path).exists():
        raise CheckpointError(f"{path}: missing")
    obj: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return obj


def load_strict(module: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load weights into ``module``, failing on any missing or unexpected key, or shape mismatch."""
    state = load_tensors(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:  # torch lists the missing/unexpected keys and shape mismatches
        raise CheckpointError(f"{path} does not match {type(module).__name__}: {e}") from None


def load_extra(directory: str | os.PathLike[str], name: str) -> dict[str, Any] | None:
    """The extra state ``name`` saved with the checkpoint, or None if it has none."""
    path = Path(directory) / f"{name}.pt"
    return load_tensors(path) if path.exists() else None


def restore(directory: str | os.PathLike[str], method: nn.Module,
            optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load method and optimizer state from a checkpoint; returns its ``state.json``."""
    d = Path(directory)
    state = read_state(d)
    load_strict(method, d / METHOD_FILE)
    optimizer.load_state_dict(load_tensors(d / OPTIMIZER_FILE))
    return state
