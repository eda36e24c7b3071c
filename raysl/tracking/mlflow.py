"""MLflow runs for pretraining. The driver owns the run; workers log into it by id.

The driver creates (or, for a resumed run name, finds) the MLflow run and passes its id to the
Ray Train workers; rank 0 logs per-epoch metrics into it through :class:`Tracker`, which does
nothing on other ranks. Resuming by run id keeps one MLflow run per training run even when Ray
restarts workers or the user restarts the job.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from raysl.config import TrackingConfig
from raysl.config.redact import redact

RUN_NAME_TAG = "raysl.run_name"


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """The tracking URI: the config's, else ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``.

    Relative sqlite paths are made absolute: Ray workers run in other working directories.
    It also stops MLflow from printing "View run ... at <URI>" when a run ends: that line
    would show a password in the URI; raysl prints its own, redacted.
    """
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        return f"sqlite:///{Path('mlflow.db').resolve()}"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def ui_command(uri: str) -> str:
    """The shell command that opens the MLflow UI on this tracking store (no credentials)."""
    if uri.startswith(("http://", "https://")):
        return f"open {redact(uri)}"
    beside = Path(sys.executable).parent / "mlflow"  # the venv's mlflow, which PATH may lack
    mlflow_cmd = "mlflow"
    if beside.exists():
        rel = os.path.relpath(beside)
        mlflow_cmd = str(beside) if rel.startswith("..") else rel
    return f"{mlflow_cmd} ui --backend-store-uri {uri} --port 5000   # then http://127.0.0.1:5000"


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """Id of experiment ``name``, created if needed.

    With a sqlite store, artifacts go to ``mlartifacts/`` beside the database file, as an
    absolute ``file://`` location (MLflow's default is relative to whatever directory the process
    happens to run in, which differs between the driver and Ray workers).
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return str(client.create_experiment(name, artifact_location=location))


def find_or_create_run(client: MlflowClient, experiment_id: str, run_name: str,
                       tags: dict[str, str]) -> tuple[str, bool]:
    """The run tagged with ``run_name`` (resumed), or a new one. Returns ``(run_id, resumed)``."""
    found = client.search_runs([experiment_id], f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
                               max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id, True
    run = client.create_run(experiment_id, run_name=run_name, tags={RUN_NAME_TAG: run_name, **tags})
    return run.info.run_id, False


def log_params_once(client: MlflowClient, run_id: str, params: dict[str, Any]) -> list[str]:
    """Log params that the run does not have yet; returns the keys whose value changed.

    MLflow params are immutable. A resumed run with a changed value keeps the first value, and
    the change is reported to the caller (and, by it, to the user).
    """
    existing = client.get_run(run_id).data.params
    new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
    changed = [k for k, v in params.items() if k in existing and existing[k] != str(v)[:6000]]
    for i in range(0, len(new), 100):  # MLflow accepts at most 100 params per batch
        client.log_batch(run_id, params=new[i:i + 100])
    return changed


class Tracker:
    """Per-epoch metric logging into an existing run; a no-op where ``active`` is false.

    Args:
        uri: tracking URI.
        run_id: run created by the driver.
        active: true on rank 0 only.
    """

    def __init__(self, uri: str, run_id: str, active: bool) -> None:
        self.run_id = run_id
        self.client = MlflowClient(uri) if active and run_id else None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log ``{"train/loss": 4.1, ...}`` at ``step`` (we use the epoch)."""
        if self.client is None:
            return
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set run tags."""
        if self.client is not None:
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_files(self, files: dict[str, bytes | str]) -> None:
        """Log in-memory files as the run's artifacts (see :func:`log_blobs`)."""
        if self.client is not None:
            log_blobs(self.client, self.run_id, files)


# MLflow error codes of a server that answered and said no: sending the same call again gets
# the same answer (a deleted run, a value it rejects, a login it refuses).
_REFUSALS = frozenset({
    "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
    "INVALID_STATE", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED",
    "ENDPOINT_NOT_FOUND", "MALFORMED_REQUEST"})


def worth_retrying(error: Exception) -> bool:
    """Whether a failed tracking call may succeed later (the server away, overloaded, 5xx).

    An MLflow error with a refusal code, or an error raised before anything was sent (a bug,
    e.g. a TypeError), is not.
    """
    if isinstance(error, MlflowException):
        return error.error_code not in _REFUSALS
    return isinstance(error, OSError | TimeoutError | ConnectionError)


class BufferedTracker(Tracker):
    """A :class:`Tracker` whose calls return at once; a thread sends them, in order, retrying.

    Training must not stop because the tracking server does: each call is queued with its
    timestamp and a background thread sends the queue in order, retrying a failed send (after
    MLflow's own retries) every ``retry_s`` up to ``max_retry_s`` apart, for as long as it
    takes. A retried send is the same request, so a send that reached the server before its
    answer was lost is not stored twice (MLflow ignores a metric logged again with the same
    key, value, timestamp and step). :meth:`flush` waits for the queue to drain.

    Args:
        uri: tracking URI.
        run_id: run created by the driver.
        active: true on rank 0 only (others queue nothing).
        retry_s: first pause after a failed send; doubled after each failure.
        max_retry_s: longest pause between retries.
        warn: where to say that the server is unreachable (once per outage) and back.
    """

    def __init__(self, uri: str, run_id: str, active: bool, retry_s: float = 1.0,
                 max_retry_s: float = 30.0, warn: Callable[[str], None] | None = None) -> None:
        super().__init__(uri, run_id, active)
        self.retry_s, self.max_retry_s = retry_s, max_retry_s
        self.warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
        self.failed_sends = 0  # sends that failed and were retried, over the whole run
        self.dropped = 0  # calls the server refused for good (e.g. a deleted run)
        self._queue: queue.Queue[Callable[[], object]] = queue.Queue()
        self._thread = threading.Thread(target=self._send_forever, daemon=True,
                                        name="raysl-tracker")
        if self.client is not None:
            self._thread.start()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue ``{"train/loss": 4.1, ...}`` at ``step``, stamped now."""
        if self.client is None:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._put(lambda c: c.log_batch(self.run_id, metrics=batch))

    def set_tags(self, tags: dict[str, str]) -> None:
        """Queue run tags."""
        if self.client is not None:
            batch = [RunTag(k, v) for k, v in tags.items()]
            self._put(lambda c: c.log_batch(self.run_id, tags=batch))

    def log_files(self, files: dict[str, bytes | str]) -> None:
        """Queue in-memory files for the run's artifacts."""
        if self.client is not None:
            self._put(lambda c: log_blobs(c, self.run_id, dict(files)))

    @property
    def pending(self) -> int:
        """Calls queued or being sent."""
        return self._queue.unfinished_tasks

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for every queued call to reach the server.

        Returns:
            The calls still unsent (0 when all were sent).
        """
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.pending

    def _put(self, send: Callable[[MlflowClient], object]) -> None:
        client = self.client
        assert client is not None
        self._queue.put(lambda: send(client))

    def _send_forever(self) -> None:
        while True:
            send = self._queue.get()
            pause, down_since = self.retry_s, 0.0
            while True:
                try:
                    send()
                    break
                except Exception as e:  # whatever the client raises when the server is away
                    if not worth_retrying(e):  # the server answered no: it will again
                        self.dropped += 1
                        self.warn(f"[raysl] WARNING: the tracking server refused a call, "
                                  f"not retried: {redact(str(e))[:300]}")
                        break
                    self.failed_sends += 1
                    if not down_since:
                        down_since = time.monotonic()
                        self.warn(f"[raysl] WARNING: the tracking server is unreachable "
                                  f"({type(e).__name__}); training goes on and its metrics "
                                  f"are kept until it is back ({self.pending} waiting)")
                    time.sleep(pause)
                    pause = min(2 * pause, self.max_retry_s)
            if down_since:
                self.warn(f"[raysl] the tracking server is back after "
                          f"{time.monotonic() - down_since:.0f}s; sending what was kept")
            self._queue.task_done()


def log_blobs(client: MlflowClient, run_id: str, files: dict[str, bytes | str]) -> None:
    """Log in-memory files (PNG bytes, text) as artifacts at their paths, e.g. ``eval/a.png``."""
    import tempfile

    for artifact_path, content in files.items():
        if isinstance(content, str):
            client.log_text(run_id, content, artifact_path)
            continue
        with tempfile.TemporaryDirectory() as d:
            local = Path(d) / Path(artifact_path).name
            local.write_bytes(content)
            client.log_artifact(run_id, str(local), str(Path(artifact_path).parent or ""))
