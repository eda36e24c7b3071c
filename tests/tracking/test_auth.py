"""The tracking server a cluster runs: MLflow's basic auth with the credentials raysl makes."""

import os
import stat
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from raysl.cli import main
from raysl.tracking.auth import PASSWORD_VAR, SECRET_VAR, USER_VAR, read_credentials
from tests.processes import free_port, start_server, stop_group, wait_for_url

pytestmark = pytest.mark.slow


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


def test_the_server_refuses_anonymous_clients_and_serves_the_login(tmp_path: Path,
                                                                  monkeypatch):
    env_file, ini = tmp_path / "mlflow.env", tmp_path / "auth.ini"
    assert main(["credentials", "--file", str(env_file)]) == 0
    assert main(["credentials", "--file", str(env_file), "--server-config", str(ini),
                 "--auth-db", f"sqlite:///{tmp_path / 'auth.db'}"]) == 0
    login = read_credentials(env_file)
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini), SECRET_VAR: login[SECRET_VAR],
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # In a process group of its own (the CLI, its uvicorn worker...), stopped as one.
    server = start_server([str(Path(sys.executable).parent / "mlflow"), "server", "--app-name",
                           "basic-auth", "--host", "127.0.0.1", "--port", str(port),
                           "--workers", "1",
                           "--backend-store-uri", f"sqlite:///{tmp_path / 'runs.db'}",
                           "--artifacts-destination", str(tmp_path / "artifacts")], log, env=env,
                          start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_url(f"{url}/health", "mlflow server --app-name basic-auth", server, log)
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
                                   timeout=10)
        assert anonymous.value.code == 401
        monkeypatch.setenv(USER_VAR, login[USER_VAR])
        monkeypatch.setenv(PASSWORD_VAR, "not-the-password")
        with pytest.raises(MlflowException, match=r"401|nauthori"):
            MlflowClient(url).search_experiments()
        monkeypatch.setenv(PASSWORD_VAR, login[PASSWORD_VAR])
        client = MlflowClient(url)
        run = client.create_run(client.create_experiment("authed"))
        client.log_metric(run.info.run_id, "m", 1.0)
        client.create_registered_model("authed-model")
        assert client.get_registered_model("authed-model").name == "authed-model"
        assert login[PASSWORD_VAR] not in log.read_text()  # the server never logs it
    finally:
        stop_group(server)
