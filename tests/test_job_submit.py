"""``ray job submit`` for real: a token-authenticated Ray head and an MLflow server on loopback.

What a user of cluster.yaml does, on one machine: ``ray start --head`` with ``RAY_AUTH_MODE=token``
(its own ports and temp dir), ``mlflow server``, then the ``ray job`` CLI with ``--working-dir``
and a runtime env naming the MLflow server. Every pipeline runs as a job with ``--smoke-test``:
pretrain (its model is registered), evaluate (the registered model gets the results as tags)
and tune. A job that fails ends FAILED with its error in the job's logs. The test stops the head
it started, and only that one: never a machine-wide ``ray stop``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.processes import die_with_parent, free_port, start_server, stop_group, wait_for_url

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's ray, mlflow and python


@dataclass
class Head:
    """A Ray head on 127.0.0.1 and the environment of a client holding its token."""

    dashboard: str
    gcs: str  # host:port, what RAY_ADDRESS names
    env: dict[str, str]

    def ray(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """The ``ray`` CLI as a user runs it against this head."""
        try:
            return subprocess.run([str(BIN / "ray"), *args], cwd=ROOT, env=self.env, text=True,
                                  capture_output=True, timeout=timeout,
                                  preexec_fn=die_with_parent)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
                else (e.stdout or "")
            pytest.fail(f"`ray {' '.join(args[:2])}` still running after {timeout:g} s; "
                        f"its output so far:\n{out[-8000:]}")

    def submit(self, *entrypoint: str, runtime_env: dict[str, object]
               ) -> subprocess.CompletedProcess[str]:
        """``ray job submit --working-dir .``: waits for the end, following the job's logs."""
        return self.ray("job", "submit", "--address", self.dashboard, "--working-dir", ".",
                        "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint)


@pytest.fixture(scope="module")
def mlflow_server() -> Iterator[str]:
    """``mlflow server`` on loopback: sqlite backend, artifacts served through the server.

    In a process group of its own (the CLI, its uvicorn worker...), stopped as one.
    """
    root = Path(tempfile.mkdtemp(prefix="raysl-mlflow-"))
    port = free_port()
    log = root / "server.log"
    proc = start_server(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")], log, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_url(f"{uri}/health", "mlflow server", proc, log)
        yield uri
    finally:
        stop_group(proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    """``ray start --head --block`` with token auth, its own ports and its own temp dir.

    ``--block`` keeps ``ray start`` in the foreground, owning the head's processes, in a process
    group of their own: signalling that group stops exactly this head (``ray stop`` would stop
    every Ray on the machine, including the test session's).
    """
    temp = Path(tempfile.mkdtemp(prefix="rayhead-"))  # short: Ray's socket paths must fit 107 B
    token = secrets.token_hex(32)
    ports = {flag: free_port() for flag in (
        "--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
        "--node-manager-port", "--object-manager-port")}
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("RAY_", "MLFLOW_")) and k != "PYTHONPATH"}
    # Jobs run `python` from the head's PATH: the venv's, as after `. .venv/bin/activate`.
    env = {**base, "PATH": f"{BIN}:{base.get('PATH', '')}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": token, "RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1"}
    args = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=4",
            f"--object-store-memory={512 * 2**20}", f"--temp-dir={temp}",
            "--disable-usage-stats", *(f"{flag}={port}" for flag, port in ports.items())]
    log = temp / "ray-start.log"
    proc = start_server(args, log, env=env, cwd=temp, start_new_session=True)
    dashboard = f"http://127.0.0.1:{ports['--dashboard-port']}"
    try:
        wait_for_url(f"{dashboard}/api/version", "ray head", proc, log,
                  headers={"Authorization": f"Bearer {token}"})
        yield Head(dashboard, f"127.0.0.1:{ports['--port']}", env)
    finally:
        # GCS, raylet, dashboard... all at once (``ray start`` alone stops them one by one,
        # ~30 s); the workers exit with their raylet. What is left of the group after 3 s is
        # SIGKILLed (only this head's group).
        stop_group(proc, grace=3)
        shutil.rmtree(temp, ignore_errors=True)


def _runtime_env(head: Head, uri: str) -> dict[str, object]:
    """The job's runtime env: where MLflow is, and which Ray cluster is the job's own.

    RAY_ADDRESS: this machine runs two Ray clusters (the test session's and this head). Ray
    Train's placement-group cleaner, an actor of the job, finds its cluster by auto-detection
    unless RAY_ADDRESS is set, and fails with "Found multiple active Ray instances"; Tune then
    waits forever for the resources of the sweep's first trial. The README gives users the same
    advice.
    """
    return {"env_vars": {"MLFLOW_TRACKING_URI": uri, "RAY_ADDRESS": head.gcs}}


# Secrets planted in the pretrain job: a password inside the tracking URI (as for an MLflow
# server behind basic auth; this test server ignores it) and credentials in the job's
# environment. None may reach a log, param, tag, artifact or checkpoint file.
URI_PASSWORD = "planted-uri-pw-7c1d"
ENV_SECRETS = {"AWS_SECRET_ACCESS_KEY": "planted-aws-key-51f0",
               "MLFLOW_TRACKING_PASSWORD": "planted-mlflow-pw-9a2e",
               "MLFLOW_TRACKING_USERNAME": "raysl-user"}


def _with_password(uri: str) -> str:
    """``http://127.0.0.1:P`` -> ``http://raysl-user:<URI_PASSWORD>@127.0.0.1:P``."""
    return uri.replace("http://", f"http://raysl-user:{URI_PASSWORD}@", 1)


@pytest.fixture(scope="module")
def job_storage() -> Iterator[Path]:
    storage = Path(tempfile.mkdtemp(prefix="raysl-jobs-"))
    yield storage
    shutil.rmtree(storage, ignore_errors=True)


@pytest.fixture(scope="module")
def pretrain_job(head: Head, mlflow_server: str, job_storage: Path
                 ) -> subprocess.CompletedProcess[str]:
    runtime_env = _runtime_env(head, _with_password(mlflow_server))
    runtime_env["env_vars"] = {**runtime_env["env_vars"], **ENV_SECRETS}  # type: ignore[dict-item]
    return head.submit("python", "pipelines/pretrain.py", "--smoke-test",
                       "--set", f"train.storage_path={job_storage}", "--set",
                       "eval.enabled=false", "--set", "eval.monitor_every=0",
                       runtime_env=runtime_env)


def test_the_head_refuses_clients_without_its_token(head: Head):
    anonymous = Head(head.dashboard, head.gcs, {k: v for k, v in head.env.items()
                                      if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")})
    listing = anonymous.ray("job", "list", "--address", head.dashboard, timeout=120)
    assert listing.returncode != 0
    assert "token" in (listing.stdout + listing.stderr).lower()


def _driver(env: dict[str, str], address: str) -> subprocess.CompletedProcess[str]:
    """``raysl pretrain`` as a user starts a driver against ``address`` from their shell."""
    return subprocess.run([str(BIN / "raysl"), "pretrain", "--smoke-test"], cwd=ROOT, text=True,
                          capture_output=True, timeout=300, preexec_fn=die_with_parent,
                          env={**env, "RAY_ADDRESS": address})


def _one_line_error(run: subprocess.CompletedProcess[str]) -> str:
    """The run's error: exit 2, one ``raysl: error:`` line, none of Ray's retry warnings."""
    assert run.returncode == 2, run.stdout[-3000:] + run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("raysl: error:")]
    assert len(errors) == 1, run.stderr[-3000:]
    # ray.init's ten seconds of retries print this once a second, then a bare ConnectionError.
    assert "Failed to get cluster ID" not in run.stderr and "Traceback" not in run.stderr
    return errors[0]


def test_a_driver_without_the_token_is_told_how_to_authenticate(head: Head):
    anonymous = {k: v for k, v in head.env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    line = _one_line_error(_driver(anonymous, head.gcs))
    assert f"RAY_ADDRESS={head.gcs!r}" in line and "requires token authentication" in line
    assert "RAY_AUTH_MODE=token" in line and "ray get-auth-token" in line
    wrong = {**anonymous, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
    line = _one_line_error(_driver(wrong, head.gcs))
    assert "refused raysl's token" in line and "ray get-auth-token" in line
    assert "0" * 64 not in line  # the token itself is never shown


def test_a_driver_pointed_at_no_cluster_is_told_so(head: Head):
    nobody = f"127.0.0.1:{free_port()}"
    line = _one_line_error(_driver(head.env, nobody))
    assert f"RAY_ADDRESS={nobody!r}: no Ray cluster answers there" in line
    assert "ray start --head" in line and "unset RAY_ADDRESS" in line


def test_pretrain_job_succeeds_and_registers_the_encoder(pretrain_job, mlflow_server):
    out = pretrain_job.stdout + pretrain_job.stderr
    assert pretrain_job.returncode == 0, out[-6000:]
    assert "succeeded" in out and "raysl pretrain: summary" in out  # the job's logs, followed
    assert "models:/raysl-simclr-resnet18/1" in out
    # Quiet by default: raysl's epoch line from the train worker, none of Ray's own chatter.
    assert "[raysl] epoch 1/" in out
    for noise in ("TrainingReport(", "Setting up process group", "Execution plan of Dataset",
                  "RayDeprecationWarning", "core_worker.cc"):
        assert noise not in out, noise
    client = MlflowClient(mlflow_server)
    (version,) = client.search_model_versions("name='raysl-simclr-resnet18'")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert "train/loss" in run.data.metrics and run.data.params["method.name"] == "simclr"


def _secrets_in(text: str) -> list[str]:
    return [s for s in (URI_PASSWORD, *ENV_SECRETS.values()) if s != "raysl-user" and s in text]


def test_no_planted_secret_reaches_a_log_param_tag_artifact_or_checkpoint(
        pretrain_job, mlflow_server, job_storage: Path, tmp_path: Path):
    assert pretrain_job.returncode == 0
    # The job's logs: raysl's lines and summary (the MLflow URI is shown as http://***@...).
    out = pretrain_job.stdout + pretrain_job.stderr
    assert not _secrets_in(out), _secrets_in(out)
    assert "http://***@127.0.0.1" in out
    client = MlflowClient(mlflow_server)
    (version,) = client.search_model_versions("name='raysl-simclr-resnet18'")
    run = client.get_run(version.run_id)
    # Params, tags, metric names, the registered version's tags and description.
    seen = [json.dumps(run.data.params), json.dumps(run.data.tags), json.dumps(run.data.metrics),
            json.dumps(client.get_model_version(version.name, version.version).tags),
            version.description or "", version.source or ""]
    # Every artifact of the run, downloaded (config.yaml, the model's files, eval figures...).
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path)))
    files = [p for p in local.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files)
    # Every file the run left in its storage (checkpoints' state.json, Ray Train's own files).
    files += [p for p in job_storage.rglob("*") if p.is_file()]
    assert any(p.name == "state.json" for p in files)
    for path in files:
        seen.append(f"{path}: " + path.read_bytes().decode("latin-1"))
    leaks = [(text[:200], _secrets_in(text)) for text in seen if _secrets_in(text)]
    assert not leaks, leaks


def test_evaluate_job_tags_the_registered_model(head, pretrain_job, mlflow_server):
    assert pretrain_job.returncode == 0
    job = head.submit("python", "pipelines/evaluate.py", "models:/raysl-simclr-resnet18/1",
                      "--smoke-test", "--set", "eval.baselines=false", "--set", "eval.plots=false",
                      runtime_env=_runtime_env(head, mlflow_server))  # the trained encoder's tags
    out = job.stdout + job.stderr
    assert job.returncode == 0, out[-6000:]
    assert "raysl evaluate" in out and "finetune_10pct_top1" in out
    tags = MlflowClient(mlflow_server).get_model_version("raysl-simclr-resnet18", "1").tags
    assert {"eval.knn_top1", "eval.linear_top1", "eval.finetune_10pct_top1"} <= set(tags), tags


def test_tune_job_runs_a_label_free_smoke_sweep(head, mlflow_server):
    """A sweep on images without labels, as a job: ranked on LiDAR, crowned on LiDAR.

    One trial (the smoke default is 2): the job path and the label-free path are what is tested
    here; trials, early stopping and resuming are tests/sweep/test_sweep_e2e.py's.
    """
    job = head.submit("python", "pipelines/tune.py", "--sweep", "tuning/label_free.yaml",
                      "--smoke-test", "--set", "num_samples=1", "--set", "train.storage_path="
                      + tempfile.mkdtemp(prefix="raysl-sweep-"),
                      runtime_env=_runtime_env(head, mlflow_server))
    out = job.stdout + job.stderr
    assert job.returncode == 0, out[-6000:]
    assert "raysl tune: summary" in out and "label-free-smoke: 1 trial(s)" in out
    assert "on eval/lidar (max)" in out and "(labels not used: data.source.labels=false)" in out
    client = MlflowClient(mlflow_server)
    experiments = [e.experiment_id for e in client.search_experiments()]
    trials = client.search_runs(experiments, "tags.`raysl.kind` = 'sweep trial'")
    assert len(trials) == 1, [(r.info.run_name, r.info.status) for r in trials]
    trial = trials[0]
    assert "eval/online_knn_top1" not in trial.data.metrics  # nothing needed labels
    lidar_history = client.get_metric_history(trial.info.run_id, "eval/lidar")
    assert [m.step for m in lidar_history] == [1, 2]  # every epoch, for ASHA
    assert all(1 <= m.value <= 512 for m in lidar_history)
    champion = client.get_model_version_by_alias("raysl-demo-simclr-fmnist-smoke", "champion")
    assert champion.run_id == trial.info.run_id
    assert float(champion.tags["eval.lidar"]) == pytest.approx(lidar_history[-1].value, rel=1e-3)
    assert "no labels" in champion.tags["eval.data"] and "lidar" in champion.description


def test_a_failing_job_is_failed_with_its_error_in_the_logs(head, mlflow_server):
    job = head.submit("python", "pipelines/pretrain.py", "--smoke-test", "--set",
                      "data.source.format=folder", "--set", "data.source.path=/no/such/images",
                      runtime_env=_runtime_env(head, mlflow_server))
    assert job.returncode == 1, job.stdout[-4000:]
    submission_id = next(w.strip("'") for w in job.stdout.split() if w.startswith("'raysubmit_"))
    status = head.ray("job", "status", "--address", head.dashboard, submission_id)
    assert f"Job '{submission_id}' failed" in status.stdout, status.stdout  # JobStatus.FAILED
    assert "exit code 2" in status.stdout
    logs = head.ray("job", "logs", "--address", head.dashboard, submission_id).stdout
    assert "raysl: error: data.source.path='/no/such/images': does not exist" in logs, logs
