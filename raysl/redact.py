"""Credentials out of everything raysl writes: logs, MLflow params, artifacts, checkpoints.

A URI may carry ``user:password@`` (an MLflow server behind basic auth, an S3 endpoint with
inline keys) or a secret in its query string (``s3://b/k?access_key=...&secret_key=...``, which
pyarrow accepts; an Azure SAS ``?sig=...``; ``?client_secret=...``). Wherever raysl shows or
stores a config value, a URI or an error, it shows ``scheme://***@host/...`` and
``?secret_key=***`` instead; the real value stays in memory, where the run needs it.
"""

from __future__ import annotations

import re
from typing import Any

# scheme://userinfo@ : everything up to the last '@' before the path (a password may hold '@',
# and HTTP clients split the authority at its last '@') is what is hidden.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]+@")
# user:password@host without its scheme, as some libraries quote a URI back in their errors
# (pyarrow: "got a URI: 'KEY:SECRET@host/bucket'"). A colon is required: "alice@example.com"
# stays as it is.
_BARE_USERINFO = re.compile(r"(?<![\w/:@.%~+-])[\w.%~+-]+:[^\s/@'\"]+@(?=[\w.-])")
HIDDEN = "***"
# ?name=value or &name=value where the name says it is a secret (key, secret, token, password,
# signature, credential, auth, session...): the value, up to the next &, # or white space.
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&;][A-Za-z0-9_.-]*(?:key|secret|token|passw|pwd|sig|credential|auth|session)"
    r"[A-Za-z0-9_.-]*=)[^&#\s'\"]+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with the credentials of every URI in it hidden.

    A URI's ``user:password@`` becomes ``***@``, and the value of a query parameter whose name
    says it is a secret (``?secret_key=...``, ``&sig=...``) becomes ``***``.
    """
    text = _USERINFO.sub(rf"\g<scheme>{HIDDEN}@", text)
    return _QUERY_SECRET.sub(rf"\g<name>{HIDDEN}", _BARE_USERINFO.sub(f"{HIDDEN}@", text))


def redact_values(obj: Any) -> Any:
    """A copy of nested dicts/lists/tuples with every string :func:`redact`-ed."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {k: redact_values(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact_values(v) for v in obj)
    return obj
