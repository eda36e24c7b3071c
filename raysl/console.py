"""What raysl prints for a person: its own progress lines and the framed summaries.

Every line raysl writes to the terminal starts with ``[raysl]`` (summaries are framed by
:func:`banner`); what Ray itself logs goes to the session's log files unless ``--verbose``.
"""

from __future__ import annotations

import sys

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


def say(line: str) -> None:
    """One progress line on stderr, flushed (workers and drivers alike).

    Not ``print()``: Ray Train V2 patches print on workers to tee to the stream *and* log
    through the root logger, so every printed line reached the driver twice
    (ray/train/v2/_internal/logging/patch_print.py). One write to the stream gives one line.
    """
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
