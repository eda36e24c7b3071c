"""Child processes that tests start: they must never outlive the test session."""

from __future__ import annotations

import ctypes
import signal
import socket


def die_with_parent() -> None:
    """In a child before exec: the kernel sends SIGTERM when pytest dies, even by SIGKILL."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
