"""MLflow runs for pretraining. The driver owns the run; workers log into it by id.

The driver creates (or, for a resumed run name, finds) the MLflow run and passes its id to the
Ray Train workers; rank 0 logs per-epoch metrics into it through :class:`Tracker`, which does
nothing on other ranks. Resuming by run id keeps one MLflow run per training run even when Ray
restarts workers or the user restarts the job.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from raysl.config import TrackingConfig
from raysl.errors import TrackingUnavailableError
from raysl.redact import redact, redact_values

RUN_NAME_TAG = "raysl.run_name"


class RedactingClient(MlflowClient):
    """An MLflow client that hides credentials in every text it writes.

    Tags, params, descriptions and text artifacts pass :func:`~raysl.redact.redact`
    here, the one boundary every raysl write to MLflow crosses: a data path's
    ``?secret_key=`` or an endpoint's ``user:password@`` never reaches a registry reader.
    Metrics are numbers; artifact files are written by raysl from redacted configs.
    """

    def set_tag(self, run_id: str, key: str, value: Any, synchronous: bool | None = None
                ) -> Any:
        """As MLflow's, the value redacted."""
        return super().set_tag(run_id, key, _hidden(value), synchronous)

    def log_param(self, run_id: str, key: str, value: Any, synchronous: bool | None = None
                  ) -> Any:
        """As MLflow's, the value redacted."""
        return super().log_param(run_id, key, _hidden(value), synchronous)

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = (), tags: Any = (),
                  synchronous: bool | None = None) -> Any:
        """As MLflow's, param and tag values redacted."""
        return super().log_batch(run_id, metrics,
                                 [Param(p.key, _hidden(p.value)) for p in params],
                                 [RunTag(t.key, _hidden(t.value)) for t in tags], synchronous)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """As MLflow's, the text redacted."""
        super().log_text(run_id, redact(text), artifact_file)

    def log_dict(self, run_id: str, dictionary: dict[str, Any], artifact_file: str) -> None:
        """As MLflow's, every string in it redacted."""
        super().log_dict(run_id, redact_values(dictionary), artifact_file)

    def set_model_version_tag(self, name: str, version: str | None = None,
                              key: str | None = None, value: Any = None,
                              stage: str | None = None) -> None:
        """As MLflow's, the value redacted."""
        super().set_model_version_tag(name, version, key, _hidden(value), stage)

    def update_model_version(self, name: str, version: str, description: str | None = None
                             ) -> Any:
        """As MLflow's, the description redacted."""
        return super().update_model_version(name, version, _hidden(description))

    def set_registered_model_tag(self, name: str, key: str, value: Any) -> None:
        """As MLflow's, the value redacted."""
        super().set_registered_model_tag(name, key, _hidden(value))

    def update_registered_model(self, name: str, description: str | None = None,
                                deployment_job_id: str | None = None) -> Any:
        """As MLflow's, the description redacted."""
        return super().update_registered_model(name, _hidden(description), deployment_job_id)


def _hidden(value: Any) -> Any:
    """A string value redacted; ``None`` and numbers as they are."""
    return redact(value) if isinstance(value, str) else value


def tracking_client(uri: str) -> RedactingClient:
    """The MLflow client raysl writes with (and reads with: one kind of client everywhere)."""
    return RedactingClient(uri)


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
        self.client = tracking_client(uri) if active and run_id else None

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


def wait_until_reachable(client: MlflowClient, run_id: str, timeout_s: float,
                         log: Callable[[str], None], poll_s: float = 2.0) -> None:
    """Return once the tracking server answers a read of run ``run_id``.

    The driver's last calls (evaluation, the encoder's registration, the run's status) are not
    buffered like training's: after training, a run whose server is away waits here for it
    rather than failing with the encoder trained. Each try is MLflow's own call, with its own
    retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``): the wait may outlast ``timeout_s`` by one
    try's retries.

    Raises:
        TrackingUnavailableError: no answer for ``timeout_s`` seconds.
        MlflowException: the server answered no (e.g. the run was deleted).
    """
    deadline, down_since = time.monotonic() + timeout_s, 0.0
    while True:
        try:
            client.get_run(run_id)
        except Exception as e:
            if not worth_retrying(e):
                raise
            if not down_since:
                down_since = time.monotonic()
                log(f"[raysl] WARNING: the tracking server is unreachable ({type(e).__name__}); "
                    f"waiting up to {timeout_s:.0f}s (tracking.flush_timeout_s) for it to finish "
                    "the run")
            if time.monotonic() >= deadline:
                raise TrackingUnavailableError(
                    f"the tracking server {redact(client.tracking_uri)} did not answer for "
                    f"{time.monotonic() - down_since:.0f}s (tracking.flush_timeout_s="
                    f"{timeout_s:g}); the run's checkpoints are kept: run the same command "
                    "again once it is back") from None
            time.sleep(poll_s)
            continue
        if down_since:
            log(f"[raysl] the tracking server is back after {time.monotonic() - down_since:.0f}s")
        return


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
