"""A long-lived local Ray that raysl commands join: ``raysl up`` starts it, ``raysl down`` stops it.

Without it each command starts a Ray cluster of its own and pays its start (raylet, GCS,
dashboard: seconds on a small machine) before anything else. With it, a command joins the one
that is up, as a job joins a cluster. It is a ``ray start --head --block`` in a process group
of its own, so ``raysl down`` stops exactly it (``ray stop`` would stop every Ray on the
machine). Where it is, its process group and its log are kept in ``$RAYSL_HOME/up.json``
(``~/.raysl``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from raysl.errors import ClusterUnreachable

STATE_FILE = "up.json"
READY_TIMEOUT_S = 120.0
STOP_GRACE_S = 5.0


@dataclass(frozen=True)
class LocalRay:
    """A Ray head that ``raysl up`` started."""

    address: str  # the GCS, host:port: what RAY_ADDRESS would name
    dashboard: str  # http://127.0.0.1:PORT
    pid: int  # `ray start --block`, the leader of the head's process group
    log: str  # what the head printed
    temp_dir: str  # its session files (short: Ray's socket paths must fit 107 bytes)

    def describe(self) -> str:
        """``127.0.0.1:6379 (dashboard http://127.0.0.1:8265)``."""
        return f"{self.address} (dashboard {self.dashboard})"


def home() -> Path:
    """Where raysl keeps per-user state: ``$RAYSL_HOME``, else ``~/.raysl``."""
    return Path(os.environ.get("RAYSL_HOME") or Path.home() / ".raysl")


def running() -> LocalRay | None:
    """The head ``raysl up`` started, if its process is still alive (a stale record is removed)."""
    path = home() / STATE_FILE
    try:
        up = LocalRay(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if not _alive(up.pid):
        path.unlink(missing_ok=True)
        return None
    return up


def start(num_cpus: int | None = None) -> tuple[LocalRay, bool]:
    """Start the long-lived local Ray, or return the one already up -> (it, started now)."""
    up = running()
    if up is not None:
        return up, False
    temp = Path(tempfile.mkdtemp(prefix="raysl-up-"))
    ports = {flag: _free_port() for flag in ("--port", "--dashboard-port",
                                             "--ray-client-server-port")}
    address = f"127.0.0.1:{ports['--port']}"
    # Token auth, as Ray enables for local clusters anyway; RAY_ADDRESS in the head's own
    # environment reaches every worker, so Ray Train's placement-group cleaner (an actor that
    # finds its cluster by auto-detection) never mistakes another Ray on the machine for it.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": address}
    _ensure_token(env)
    args = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
            "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
            "--include-dashboard=true", f"--temp-dir={temp}", "--disable-usage-stats",
            *(f"{flag}={port}" for flag, port in ports.items()),
            *([f"--num-cpus={num_cpus}"] if num_cpus else [])]
    log = temp / "ray-start.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    up = LocalRay(address, f"http://127.0.0.1:{ports['--dashboard-port']}", proc.pid, str(log),
                  str(temp))
    _wait_until_ready(up, proc)
    home().mkdir(parents=True, exist_ok=True)
    _write_atomic(home() / STATE_FILE, json.dumps(asdict(up)))
    return up, True


def stop() -> LocalRay | None:
    """Stop the head ``raysl up`` started (its process group only) -> it, or None if none."""
    up = running()
    if up is None:
        return None
    for sig in (signal.SIGTERM, signal.SIGKILL):  # what is left after the grace is killed
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, sig)
        deadline = time.monotonic() + STOP_GRACE_S
        while group_members(up.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    (home() / STATE_FILE).unlink(missing_ok=True)
    return up


def group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (zombies, already dead, not counted)."""
    members = []
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            members.append(int(status.parent.name))
    return members


def _wait_until_ready(up: LocalRay, proc: subprocess.Popen[bytes]) -> None:
    """Return once the head's GCS answers with the token; stop it and raise if it does not."""
    from raysl.cluster.probe import check_reachable, use_token_auth

    use_token_auth()  # it was started with token auth
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            check_reachable(up.address, timeout_s=2.0)
            return
        except ClusterUnreachable:
            if proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.3)
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            tail = Path(up.log).read_text(errors="replace")[-3000:]
            raise ClusterUnreachable(f"`ray start --head` did not come up at {up.address} "
                                     f"(its log: {up.log}):\n{tail}") from None


def _ensure_token(env: dict[str, str]) -> None:
    """A token for the head and its clients: Ray's own file, made by Ray if there is none."""
    if env.get("RAY_AUTH_TOKEN") or env.get("RAY_AUTH_TOKEN_PATH"):
        return
    if not (Path.home() / ".ray" / "auth_token").exists():
        subprocess.run([str(Path(sys.executable).parent / "ray"), "get-auth-token",
                        "--generate"], env=env, check=True, capture_output=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process now holds the number
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
