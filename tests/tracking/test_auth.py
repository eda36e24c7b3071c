"""The tracking server a cluster runs: MLflow's basic auth with the logins raysl makes.

One real ``mlflow server --app-name basic-auth`` on 127.0.0.1 for the module, started and
configured as the cluster files start the head's (``SERVER_FLAGS``; test_cluster_exposure.py
checks the files use them): the admin from ``raysl credentials`` writes (training), a consumer
from ``raysl credentials --consumer`` only reads.
"""

import os
import stat
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import requests
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import raysl
from raysl import config as C
from raysl.cli import main
from raysl.nn.backbones import build_encoder
from raysl.tracking.auth import PASSWORD_VAR, SECRET_VAR, USER_VAR, read_credentials
from raysl.tracking.model_registry import log_and_register
from tests.processes import free_port, start_server, stop_group, wait_for_url

pytestmark = pytest.mark.slow

SERVER_FLAGS = ["--app-name", "basic-auth", "--enable-workspaces"]


def test_credentials_are_private_and_kept(tmp_path: Path):
    env_file = tmp_path / "mlflow.env"
    assert main(["credentials", "--file", str(env_file)]) == 0
    first = read_credentials(env_file)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert len(first[PASSWORD_VAR]) >= 32 and first[SECRET_VAR] != first[PASSWORD_VAR]
    assert main(["credentials", "--file", str(env_file)]) == 0  # kept, not replaced
    assert read_credentials(env_file) == first
    assert main(["credentials", "--file", str(env_file), "--force"]) == 0
    assert read_credentials(env_file)[PASSWORD_VAR] != first[PASSWORD_VAR]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The head's server: its config from the admin's credentials, as the cluster files run it."""
    root = tmp_path_factory.mktemp("auth-server")
    env_file, ini = root / "mlflow.env", root / "auth.ini"
    assert main(["credentials", "--file", str(env_file)]) == 0
    assert main(["credentials", "--file", str(env_file), "--server-config", str(ini),
                 "--auth-db", f"sqlite:///{root / 'auth.db'}"]) == 0
    # Only for speed here: a login is checked once (PBKDF2, ~1 s a request on 2 busy cores),
    # not on each of the ~130 requests that register an encoder. Permissions are unchanged.
    with ini.open("a") as f:
        f.write("auth_cache_ttl_seconds = 300\n")
    login = read_credentials(env_file)
    port = free_port()
    log = root / "server.log"
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini), SECRET_VAR: login[SECRET_VAR],
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # In a process group of its own (the CLI, its uvicorn worker...), stopped as one.
    proc = start_server([str(Path(sys.executable).parent / "mlflow"), "server", *SERVER_FLAGS,
                         "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                         "--backend-store-uri", f"sqlite:///{root / 'runs.db'}",
                         "--artifacts-destination", str(root / "artifacts")], log, env=env,
                        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_url(f"{url}/health", "mlflow server --app-name basic-auth", proc, log)
        yield {"url": url, "env_file": env_file, "login": login, "log": log, "root": root}
    finally:
        stop_group(proc)


def _as(monkeypatch, user: str, password: str) -> None:
    monkeypatch.setenv(USER_VAR, user)
    monkeypatch.setenv(PASSWORD_VAR, password)


def test_the_server_refuses_anonymous_clients_and_serves_the_login(server, monkeypatch):
    url, login = server["url"], server["login"]
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
                               timeout=10)
    assert anonymous.value.code == 401
    _as(monkeypatch, login[USER_VAR], "not-the-password")
    with pytest.raises(MlflowException, match=r"401|nauthori"):
        MlflowClient(url).search_experiments()
    _as(monkeypatch, login[USER_VAR], login[PASSWORD_VAR])
    client = MlflowClient(url)
    run = client.create_run(client.create_experiment("authed"))
    client.log_metric(run.info.run_id, "m", 1.0)
    client.create_registered_model("authed-model")
    assert client.get_registered_model("authed-model").name == "authed-model"
    assert login[PASSWORD_VAR] not in server["log"].read_text()  # the server never logs it


def _refused(action) -> None:
    """``action`` is refused for want of permission: HTTP 403, not a missing resource."""
    with pytest.raises((MlflowException, requests.HTTPError)) as refused:  # REST, artifacts
        action()
    error = refused.value
    status = (error.get_http_status_code() if isinstance(error, MlflowException)
              else error.response.status_code)
    assert status == 403, error


def test_a_consumer_reads_a_registered_encoder_and_changes_nothing(server, monkeypatch,
                                                                   tmp_path):
    url, login = server["url"], server["login"]
    # Training: the admin logs a run and registers an encoder, through the proxied artifacts.
    _as(monkeypatch, login[USER_VAR], login[PASSWORD_VAR])
    admin = MlflowClient(url)
    run_id = admin.create_run(admin.create_experiment("training")).info.run_id
    cfg = C.load(None, ["data.source.format=generated", "data.image_size=32", "data.channels=1",
                        "model.width=8", "model.small_stem=true"])
    encoder = build_encoder(cfg.model, 1, 32).eval()
    log_and_register(encoder, cfg, run_id, url, "served", "v1", {"eval.knn_top1": "0.5"})
    admin.set_registered_model_alias("served", "champion", "1")

    consumer = tmp_path / "alice.env"
    assert main(["credentials", "--file", str(server["env_file"]), "--consumer", "alice",
                 "--tracking-uri", url, "--out", str(consumer)]) == 0
    assert stat.S_IMODE(consumer.stat().st_mode) == 0o600
    text = consumer.read_text()
    assert login[PASSWORD_VAR] not in text and login[SECRET_VAR] not in text
    alice = dict(line.split("=", 1) for line in text.splitlines())
    assert set(alice) == {USER_VAR, PASSWORD_VAR} and alice[USER_VAR] == "alice"
    # Asked again, the user is not silently given a new password; --force does that.
    assert main(["credentials", "--file", str(server["env_file"]), "--consumer", "alice",
                 "--tracking-uri", url, "--out", str(consumer)]) == 2
    assert consumer.read_text() == text

    _as(monkeypatch, alice[USER_VAR], alice[PASSWORD_VAR])
    client = MlflowClient(url)
    loaded = raysl.load_encoder("models:/served@champion", url)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 encoder.state_dict().values(), strict=True))
    assert client.get_model_version("served", "1").tags["eval.knn_top1"] == "0.5"
    source = client.get_model_version("served", "1").source
    note = tmp_path / "note.txt"
    note.write_text("poison")
    for write in (lambda: client.set_model_version_tag("served", "1", "eval.knn_top1", "0.99"),
                  lambda: client.update_model_version("served", "1", description="rewritten"),
                  lambda: client.update_registered_model("served", description="rewritten"),
                  lambda: client.create_model_version("served", source, run_id),
                  lambda: client.set_registered_model_alias("served", "champion", "1"),
                  lambda: client.delete_model_version("served", "1"),
                  lambda: client.set_tag(run_id, "x", "y"),
                  lambda: client.log_artifact(run_id, str(note)),  # the run's artifacts
                  # Nothing of its own either: a registered model it made under the name
                  # training registers next would be its to manage, versions and aliases.
                  lambda: client.create_registered_model("next-encoder"),
                  lambda: client.create_experiment("alice")):
        _refused(write)
    assert raysl.load_encoder("models:/served/1", url) is not None
    with pytest.raises(urllib.error.HTTPError) as create_user:  # no more users either
        urllib.request.urlopen(urllib.request.Request(
            f"{url}/api/2.0/mlflow/users/create", data=b'{"username": "b", "password": "c"}',
            headers={"Content-Type": "application/json",
                     "Authorization": _basic(alice[USER_VAR], alice[PASSWORD_VAR])}), timeout=10)
    assert create_user.value.code == 403

    _as(monkeypatch, login[USER_VAR], login[PASSWORD_VAR])
    version = admin.get_model_version("served", "1")
    assert version.tags["eval.knn_top1"] == "0.5" and version.description == "v1"
    assert len(admin.search_model_versions("name='served'")) == 1
    assert main(["credentials", "--file", str(server["env_file"]), "--consumer", "alice",
                 "--tracking-uri", url, "--out", str(consumer), "--force"]) == 0
    assert consumer.read_text() != text  # a new password: the old file no longer logs in
    _as(monkeypatch, alice[USER_VAR], alice[PASSWORD_VAR])
    with pytest.raises(MlflowException, match=r"401|nauthori"):
        MlflowClient(url).get_model_version("served", "1")


def _basic(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
