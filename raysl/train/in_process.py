"""Checkpoints on disk for a run trained in the command's own process (``train.local_mode``).

No Ray Train persists the checkpoints of a run trained in process: it commits each one into the
run's directory the way Ray Train lays out its own (``<storage>/<run name>/checkpoint_<date>``),
so the run can be resumed by running the same command again, in process or in a worker group,
and the newest checkpoint wins either way.

A checkpoint is committed by renaming a complete directory (its ``state.json`` written last)
into place, and carries :data:`IN_PROCESS_MARK`: a worker group trusts only marked ones beside
the one Ray Train hands it. Ray copies its checkpoints file by file into place, so a directory
of its may be a part after a crash: in process, one counts only when every file its
``state.json`` lists is there at its size (:func:`raysl.checkpoint.is_complete`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from raysl.checkpoint import STATE_FILE, is_complete, read_state

IN_PROCESS_MARK = "in_process"  # an empty file in every checkpoint committed here
PENDING_PREFIX = ".pending-checkpoint-"


@dataclass(frozen=True)
class OnDisk:
    """A complete checkpoint in a run's directory."""

    path: Path
    step: int


def pending_directory(run_dir: str) -> Path:
    """A new empty directory inside ``run_dir`` to write a checkpoint into, then commit.

    One run writes its directory at a time: a pending one already there is a killed run's.
    """
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    for left in Path(run_dir).glob(f"{PENDING_PREFIX}*"):
        shutil.rmtree(left, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=run_dir, prefix=PENDING_PREFIX))


def commit(pending: Path, keep: int) -> Path:
    """Rename the complete checkpoint in ``pending`` into place; keep the newest ``keep``.

    Returns:
        The committed directory, ``<run dir>/checkpoint_<date>`` (Ray Train's naming).
    """
    (pending / IN_PROCESS_MARK).touch()
    final = pending.parent / f"checkpoint_{_now()}"
    while final.exists():  # two commits within a microsecond
        time.sleep(1e-3)
        final = pending.parent / f"checkpoint_{_now()}"
    pending.rename(final)
    for old in _complete(pending.parent, marked_only=True)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)
    return final


def newest(run_dir: str, marked_only: bool) -> OnDisk | None:
    """The complete checkpoint of ``run_dir`` with the most steps, or None.

    Args:
        run_dir: the run's directory (need not exist).
        marked_only: only those committed here (a worker group's view: Ray Train's own
            directories may be partial, and Ray hands the worker group its last good one).
    """
    found = _complete(Path(run_dir), marked_only)
    return found[-1] if found else None


def pick(recorded: str | None, run_dir: str, trains_in_process: bool) -> str | None:
    """The checkpoint a run resumes from: the directory with the most steps, or None.

    Ray Train hands a worker group the last checkpoint it recorded (``recorded``, a local
    directory); a run trained in process records its own in ``run_dir``. Whichever has more
    steps wins (Ray Train's on a tie), so a run may be resumed either way.

    Args:
        recorded: Ray Train's checkpoint, as a local directory, or None.
        run_dir: the run's directory, "" when the storage is not a local path.
        trains_in_process: whether this run trains in process: it trusts every complete
            checkpoint of ``run_dir``; a worker group only those committed here.
    """
    on_disk = newest(run_dir, marked_only=not trains_in_process) if run_dir else None
    if recorded is not None and (on_disk is None or on_disk.step <= _step(Path(recorded))):
        return recorded
    return str(on_disk.path) if on_disk is not None else None


def _step(checkpoint: Path) -> int:
    """Optimizer steps a complete checkpoint holds."""
    return int(read_state(checkpoint)["step"])


def _complete(run_dir: Path, marked_only: bool) -> list[OnDisk]:
    """Complete checkpoints of ``run_dir``, oldest (fewest steps, then name) first."""
    found = []
    for path in run_dir.glob("checkpoint_*") if run_dir.is_dir() else ():
        if (marked_only and not (path / IN_PROCESS_MARK).exists()) or not is_complete(path):
            continue  # a part of one (Ray Train's copy cut short), or not ours to resume from
        try:
            step = int(json.loads((path / STATE_FILE).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a raysl checkpoint
        found.append(OnDisk(path, step))
    return sorted(found, key=lambda c: (c.step, c.path.name))


def _now() -> str:
    """Ray Train's checkpoint date: ``2026-12-07_21-50-00.123456``."""
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S.%f")
