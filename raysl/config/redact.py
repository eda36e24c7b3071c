"""Credentials out of everything raysl writes: logs, MLflow params, artifacts, checkpoints.

A URI may carry ``user:password@`` (an MLflow server behind basic auth, an S3 endpoint with
inline keys). Wherever raysl shows or stores a config value or a URI, it shows
``scheme://***@host/...`` instead; the real value stays in memory, where the run needs it.
"""

from __future__ import annotations

import re
from typing import Any

# scheme://userinfo@ : everything up to the last '@' before the path (a password may hold '@',
# and HTTP clients split the authority at its last '@') is what is hidden.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]+@")
HIDDEN = "***"


def redact(text: str) -> str:
    """``text`` with the ``user:password@`` of every URI in it replaced by ``***@``."""
    return _USERINFO.sub(rf"\g<scheme>{HIDDEN}@", text)


def redact_values(obj: Any) -> Any:
    """A copy of nested dicts/lists/tuples with every string :func:`redact`-ed."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_values(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact_values(v) for v in obj)
    return obj
