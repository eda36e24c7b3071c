"""Errors that a restart cannot fix, so that automatic restarts do not repeat them.

Ray Train restarts the worker group after any failure, up to ``train.max_failures`` times. A
killed worker or a lost node deserves that; a config error, unusable data, a checkpoint that
does not fit the model or a collapse the user asked to stop on does not: each restart would
reload the last checkpoint and run into it again (for a collapse, after another epoch of
training). So the first worker that raises one of :data:`PERMANENT_ERRORS` leaves a note in
the run's storage directory, and every restarted worker re-raises the noted error before doing
any work. The driver clears the note when a run starts, so a re-run after a fix goes ahead.

The note is JSON (the error's kind and message, and a config error's field, value and
expected value): nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pyarrow.fs as pafs

from raysl.errors import CheckpointError, ConfigError, DataError, RepresentationCollapsed
from raysl.redact import redact_values

PERMANENT_ERRORS: tuple[type[Exception], ...] = (
    ConfigError, DataError, CheckpointError, RepresentationCollapsed)
NOTE_FILE = "raysl_permanent_error.json"
_KINDS = {cls.__name__: cls for cls in PERMANENT_ERRORS}


def note_path(storage: str, run_name: str) -> str:
    """Where a run's note lives: ``<storage>/<run_name>/raysl_permanent_error.json``.

    ``storage`` is a URI (``s3://...``) or a local path (made absolute).
    """
    root = storage if "://" in storage else os.path.abspath(storage)
    return f"{root.rstrip('/')}/{run_name}/{NOTE_FILE}"


def leave_note(path: str, error: Exception) -> None:
    """Record ``error`` (one of :data:`PERMANENT_ERRORS`) for the restarted workers."""
    kind = next(name for name, cls in _KINDS.items() if isinstance(error, cls))
    note: dict[str, Any] = {"kind": kind, "message": str(error)}
    if isinstance(error, ConfigError):
        note["config"] = {"field": error.field, "value": error.value,
                          "expected": error.expected, "source": error.source}
    fs, where = pafs.FileSystem.from_uri(path)
    fs.create_dir(where.rsplit("/", 1)[0], recursive=True)
    # Written aside, then moved: ranks noting at once, or a worker killed mid-write, leave a
    # whole note or the previous one, never half of one.
    aside = f"{where}.{uuid.uuid4().hex}"
    with fs.open_output_stream(aside) as f:
        f.write(json.dumps(redact_values(note), default=repr).encode())
    fs.move(aside, where)


def raise_noted(path: str) -> None:
    """Raise the error a previous attempt of this run noted, if any.

    Raises:
        ConfigError, DataError, CheckpointError, RepresentationCollapsed: the noted one.
    """
    fs, where = pafs.FileSystem.from_uri(path)
    if fs.get_file_info(where).type == pafs.FileType.NotFound:
        return
    try:
        with fs.open_input_stream(where) as f:
            note = json.loads(f.read().decode())
        if not isinstance(note, dict):
            raise ValueError(f"a {type(note).__name__}")
    except (OSError, ValueError):
        return  # unreadable (e.g. removed meanwhile): as if there were none
    if note.get("kind") == "ConfigError":
        c = note["config"]
        raise ConfigError(c["field"], c["value"], c["expected"], c.get("source"))
    raise _KINDS.get(note.get("kind", ""), RuntimeError)(note.get("message", "unknown error"))


def clear_note(path: str) -> None:
    """Forget the note of an earlier attempt (a new command may have fixed the cause)."""
    fs, where = pafs.FileSystem.from_uri(path)
    if fs.get_file_info(where).type != pafs.FileType.NotFound:
        fs.delete_file(where)
