"""What raysl prints for a person: its own progress lines and the framed summaries.

Every line raysl writes to the terminal starts with ``[raysl]`` (summaries are framed by
:func:`banner`); what Ray itself logs goes to the session's log files unless ``--verbose``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

from raysl.redact import redact

BANNER_SIDE = 30  # '=' characters each side of a summary's title


def banner(title: str) -> tuple[str, str]:
    """The top and bottom lines framing a summary: ``===== title =====`` and ``=====...``."""
    top = "=" * BANNER_SIDE + f" {title} " + "=" * BANNER_SIDE
    return top, "=" * len(top)


def duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``42`` -> ``42s``."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def redacting(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log``, with the credentials of every URI in a line hidden first."""
    def hidden(line: str) -> None:
        log(redact(line))
    return hidden


def say(line: str) -> None:
    """One progress line on stderr, flushed (workers and drivers alike).

    Not ``print()``: Ray Train V2 patches print on workers to tee to the stream *and* log
    through the root logger, so every printed line reached the driver twice
    (ray/train/v2/_internal/logging/patch_print.py). One write to the stream gives one line.
    Credentials in URIs are hidden (``config.redact``).
    """
    sys.stderr.write(redact(line) + "\n")
    sys.stderr.flush()


VERBOSE_ENV = "RAYSL_VERBOSE"  # "1": Ray's own logs on the terminal too (--verbose)
_WARNING = re.compile(r"^\S+:\d+: (\w+Warning): ")  # "file.py:12: UserWarning: text"
_EXCEPTION = re.compile(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b")


def verbose() -> bool:
    """Whether ``--verbose`` asked for Ray's own log lines too."""
    return os.environ.get(VERBOSE_ENV, "") == "1"


class WorkerLineFilter:
    """Which lines of Ray's worker processes reach the terminal when not ``--verbose``.

    Kept: raysl's own lines (``[raysl]``, a sweep's ``[trial ...]``), Python tracebacks, and
    warnings raised outside Ray's own code. Dropped: Ray's INFO chatter (worker-group start,
    every report of every rank, dataset plans), its internal deprecation notices and C++
    notes. Everything still goes to the session's log files.
    """

    def __init__(self) -> None:
        self._in_traceback = False
        self._after_warning = False

    def keep(self, line: str) -> bool:
        """Whether to show ``line`` (one line of a worker's stdout or stderr)."""
        text = line.strip()
        if self._in_traceback:
            if _EXCEPTION.match(text):
                self._in_traceback = False
            return True
        if text.startswith("Traceback (most recent call last)"):
            self._in_traceback = True
            return True
        if self._after_warning:  # the source line a warning quotes
            self._after_warning = False
            return False
        warning = _WARNING.match(text)
        if warning:
            self._after_warning = True
            return warning.group(1) != "RayDeprecationWarning" and "/ray/" not in text
        return "[raysl]" in text or text.startswith("[trial ")
