"""Training's tracker outlasts a tracking-server outage: a real ``mlflow server``, SIGKILLed.

MLflow's own HTTP retries are turned off here (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``), so the
outage is longer than the client's retry window by construction: what brings the metrics
through is raysl's buffer alone.
"""

import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from raysl.errors import TrackingUnavailableError
from raysl.tracking.buffered import BufferedTracker, TrackingCall
from raysl.tracking.mlflow import wait_until_reachable
from tests.processes import free_port, kill_group, start_mlflow_server, stop_group


def test_metrics_logged_while_the_server_is_down_arrive_once_it_is_back(tmp_path: Path,
                                                                         monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(tmp_path, port, "server-1.log")
    try:
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("outage")).info.run_id
        lines: list[str] = []
        tracker = BufferedTracker(uri, run_id, active=True, retry_s=0.2, max_retry_s=1.0,
                                  warn=lines.append)
        tracker.log_metrics({"train/loss": 4.0}, step=1)
        assert tracker.flush(60) == 0  # the server is up: sent
    finally:
        kill_group(server)  # no goodbye to the client

    # Down: every call returns at once and waits in the buffer, in order.
    tracker.log_metrics({"train/loss": 3.0}, step=2)
    tracker.set_tags({"raysl.note": "logged during the outage"})
    tracker.log_metrics({"train/loss": 2.0, "train/lr": 0.1}, step=3)
    deadline = time.monotonic() + 60
    while tracker.failed_sends < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tracker.failed_sends >= 2 and tracker.pending == 3
    assert tracker.flush(0.5) == 3  # still down: nothing sent, nothing dropped
    assert any("unreachable" in line for line in lines)
    # A checkpoint keeps the unsent calls (as plain data, loaded with weights_only=True); a
    # restarted rank 0 sends them again. Here the first tracker lives on and sends them too,
    # as a rank 0 killed just after the server came back would have begun to: nothing twice.
    tracker.log_files({"clusters/sizes.txt": "10 12 9"})
    kept = tmp_path / "tracking.pt"
    torch.save({"calls": [call.state() for call in tracker.unsent()]}, kept)
    calls = torch.load(kept, weights_only=True)["calls"]
    assert len(calls) == 4
    successor = BufferedTracker(uri, run_id, active=True, retry_s=0.2, max_retry_s=1.0,
                                warn=lines.append)
    successor.resend([TrackingCall.from_state(c) for c in calls])

    # The driver's last calls wait for the server too: a short wait gives up, naming the
    # setting; a long one returns once the server is back.
    with pytest.raises(TrackingUnavailableError, match=r"tracking.flush_timeout_s=0.3\)"):
        wait_until_reachable(client, run_id, 0.3, lines.append, poll_s=0.1)
    waited: list[str] = []
    driver = threading.Thread(target=wait_until_reachable,
                              args=(client, run_id, 120, waited.append, 0.2))
    driver.start()
    server = start_mlflow_server(tmp_path, port, "server-2.log")  # back, same store
    try:
        driver.join(timeout=120)
        assert not driver.is_alive() and "unreachable" in waited[0] and "back after" in waited[1]
        assert tracker.flush(120) == 0 and successor.flush(120) == 0
        history = client.get_metric_history(run_id, "train/loss")
        assert sorted((m.step, m.value) for m in history) == [(1, 4.0), (2, 3.0), (3, 2.0)]
        assert [m.step for m in client.get_metric_history(run_id, "train/lr")] == [3]
        assert client.get_run(run_id).data.tags["raysl.note"] == "logged during the outage"
        assert [f.path for f in client.list_artifacts(run_id, "clusters")] == [
            "clusters/sizes.txt"]
        assert any("is back after" in line for line in lines)
        # A call the server refuses (a run that does not exist) is dropped, not retried
        # forever ahead of everything queued after it.
        ghost = BufferedTracker(uri, "0" * 32, active=True, retry_s=0.2, warn=lines.append)
        ghost.log_metrics({"train/loss": 1.0}, step=1)
        ghost.set_tags({"raysl.note": "after the refused call"})
        assert ghost.flush(60) == 0 and ghost.dropped == 2 and ghost.failed_sends == 0
        assert any("refused a call" in line for line in lines)
    finally:
        stop_group(server)


def test_an_inactive_tracker_queues_nothing():
    tracker = BufferedTracker("http://127.0.0.1:9", "run", active=False)  # rank > 0
    tracker.log_metrics({"train/loss": 1.0}, step=1)
    assert tracker.pending == 0 and tracker.flush(0) == 0


@pytest.mark.parametrize("timeout", [0.0, 0.2])
def test_flush_gives_up_after_its_timeout_and_says_how_many_wait(timeout: float):
    tracker = BufferedTracker(f"http://127.0.0.1:{free_port()}", "run", active=True,
                              retry_s=0.05, warn=lambda line: None)  # nothing listens there
    tracker.log_metrics({"train/loss": 1.0}, step=1)
    assert tracker.flush(timeout) == 1


def test_only_failures_a_later_try_can_fix_are_retried():
    from mlflow.exceptions import MlflowException
    from mlflow.protos import databricks_pb2 as codes

    from raysl.tracking.mlflow import worth_retrying

    assert worth_retrying(MlflowException("API request to http://h failed: refused"))
    assert worth_retrying(MlflowException("busy", error_code=codes.TEMPORARILY_UNAVAILABLE))
    assert worth_retrying(ConnectionRefusedError())
    assert not worth_retrying(MlflowException("gone", error_code=codes.RESOURCE_DOES_NOT_EXIST))
    assert not worth_retrying(MlflowException("no", error_code=codes.INVALID_PARAMETER_VALUE))
    assert not worth_retrying(TypeError("a bug before anything was sent"))


def test_a_store_the_client_cannot_be_made_for_drops_each_call_and_says_so():
    """The client is made in the sending thread: its failure is a refused call, not a hang."""
    lines: list[str] = []
    tracker = BufferedTracker("bogus://nowhere", "run", active=True, retry_s=0.1,
                              warn=lines.append)
    tracker.log_metrics({"train/loss": 1.0}, step=0)
    tracker.log_metrics({"train/loss": 0.5}, step=1)
    assert tracker.flush(30) == 0 and tracker.dropped == 2
    assert len(lines) == 2 and all("refused a call" in line and "bogus" in line
                                   for line in lines)
