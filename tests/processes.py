"""Child processes that tests start: they must never outlive the test session."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any


def die_with_parent() -> None:
    """In a child before exec: the kernel sends SIGTERM when pytest dies, even by SIGKILL."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(args: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """A server process writing to ``log``: a pipe nobody reads would block it once full."""
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent, **kwargs)


def wait_for_url(url: str, what: str, proc: subprocess.Popen[bytes], log: Path,
                 timeout: float = 120, headers: dict[str, str] | None = None) -> None:
    """Return once ``url`` answers; raise with the end of ``log`` if ``proc`` dies or times out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}),
                                   timeout=5).close()
            return
        except OSError:  # refused, reset, or an HTTP error status
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out = log.read_text(errors="replace")
                raise RuntimeError(f"{what} did not start ({url}):\n{out[-4000:]}") from None
            time.sleep(0.3)


def stop(proc: subprocess.Popen[bytes], grace: float = 60) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_group(proc: subprocess.Popen[bytes], grace: float = 3) -> None:
    """SIGTERM to ``proc``'s process group, SIGKILL to what is left of it after ``grace`` s.

    For a server started with ``start_new_session=True`` (its group is its own): only that
    group is signalled, nothing else on the machine.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while True:
        proc.poll()  # reap the leader: a zombie would count as left
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break  # the whole group is gone
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    proc.wait()


def start_mlflow_server(root: Path, port: int, log: str) -> subprocess.Popen[bytes]:
    """``mlflow server`` on 127.0.0.1:``port``, in a process group of its own (the CLI and its
    uvicorn worker), its store and artifacts under ``root``: started again on the same
    ``root``, it is the same server back. Returns once it answers."""
    import sys

    proc = start_server(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")], root / log,
        start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    wait_for_url(f"http://127.0.0.1:{port}/health", "mlflow server", proc, root / log)
    return proc


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc``'s whole process group (a server: killing the CLI alone leaves its
    uvicorn worker serving) and reap it: no goodbye to its clients."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
