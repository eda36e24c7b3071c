"""Fault injection on real processes: a train worker SIGKILLed mid-epoch, then the driver.

The run checkpoints inside epochs too (``train.checkpoint_every_steps``), and is DeepCluster's,
so the same run also shows the clustering family end to end: two workers embed their shares of
the whole training set from Ray Data, cluster them together, train on the pseudo-labels their
rows' indices look up, and a restarted worker group trains on the assignment the checkpoint
kept. Both faults share one run (a second run would cost its start-up again). Bounded in time:
every wait has a deadline.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.util.state import list_actors

import raysl
from raysl import config as C
from raysl.pretrain import TRAINED, PretrainResult, pretrain
from tests.processes import (
    die_with_parent,
    free_port,
    kill_group,
    start_mlflow_server,
    stop_group,
)
from tests.test_pretrain_e2e import CONFIGS, _shared

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]
DEADLINE_S = 300.0
IMAGES = 6000  # ~4 s epochs on 2 CPUs: long enough to land each kill inside its epoch
STEPS = IMAGES // 64  # per epoch, at the shared batch of 64
EVERY = 40  # train.checkpoint_every_steps: 2 checkpoints inside each epoch
CONFIG = CONFIGS / "deepcluster_fmnist.yaml"


def _train_worker_pids() -> list[int]:
    """The processes of the live Ray Train workers (Ray's state API, as an operator sees them)."""
    actors = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                         detail=True, limit=100, raise_on_missing_output=False)
    return sorted(a.pid for a in actors if a.pid)


def _committed(run_dir: Path) -> tuple[float, int]:
    """(epoch, step) of the run's last checkpoint that Ray Train committed ((0, 0) if none).

    The epoch is fractional for a checkpoint inside an epoch: 1.3 = 30% into epoch 2.
    """
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        metrics = snapshot["latest_checkpoint_result"]["metrics"]
        return float(metrics["epoch"]), int(metrics["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0, 0


class Server:
    """The run's ``mlflow server``: killed and started again on the same store and port."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.port, self.starts = root, free_port(), 0
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = self.start()

    def start(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        self.proc = start_mlflow_server(self.root, self.port, f"mlflow-{self.starts}.log")
        return self.proc


def _inject_faults(run_dir: Path, driver: subprocess.Popen[bytes], server: Server,
                   killed: dict[str, object]) -> None:
    """In one run, each once Ray Train has committed a checkpoint inside the epoch named:
    the tracking server SIGKILLed (epoch 1); a train worker SIGKILLed while the server is
    still down, then the server started again (epoch 2); the driver SIGKILLed (epoch 3)."""
    start = time.monotonic()
    while time.monotonic() - start < DEADLINE_S and driver.poll() is None:
        epoch, step = _committed(run_dir)
        if "server_down_at" not in killed and epoch > 0:
            kill_group(server.proc)
            killed.update(server_down_at=time.monotonic() - start, server_down_epoch=epoch)
        elif "pid" not in killed and epoch > 1:
            pids = _train_worker_pids()
            killed.update(committed=epoch, step=step, workers=len(pids),
                          at=time.monotonic() - start)
            if pids:
                os.kill(pids[-1], signal.SIGKILL)
                killed["pid"] = pids[-1]
            server.start()
            killed["server_up_at"] = time.monotonic() - start
        elif "pid" in killed and epoch > 2:
            driver.kill()
            killed.update(driver_committed=epoch, driver_step=step,
                          driver_at=time.monotonic() - start)
            return
        time.sleep(0.2)


def test_a_killed_worker_and_a_killed_driver_cost_the_steps_since_the_last_checkpoint(
        tmp_path: Path, monkeypatch):
    """DeepCluster (clusters every 2 epochs), 2 workers, 3 epochs of 93 steps, a checkpoint
    every 40 steps, run by a `raysl pretrain` process, tracked by an `mlflow server`.

    The server is SIGKILLed inside epoch 1: training goes on. A worker is SIGKILLed after a
    checkpoint inside epoch 2, the server still down: with the default train.max_failures, Ray
    Train restarts the group from that checkpoint, epoch 2 goes on from its step, on the
    assignment of epoch 1 read back from the checkpoint, and the metrics the killed rank 0
    could not send (epoch 1's) come back with the checkpoint. The server is started again. The
    driver is SIGKILLed after a checkpoint inside epoch 3: the same command run again resumes
    there, in the same MLflow run, and finishes and registers its encoder; every epoch's
    metrics are in MLflow, once."""
    monkeypatch.chdir(tmp_path)
    server = Server(tmp_path / "tracking")
    overrides = [
        *_shared(tmp_path, 3, "e2e-kill"), f"data.source.limit={IMAGES}",
        "eval.protocols=knn", "eval.monitor_every=0", "eval.baselines=false", "eval.plots=false",
        "method.num_clusters=10",
        "method.head_dim=32", "method.pca_dim=16", "method.recluster_every=2",
        f"train.checkpoint_every_steps={EVERY}", f"tracking.tracking_uri={server.uri}",
        "tracking.registered_model=e2e-deepcluster"]
    cfg = C.load(CONFIG, overrides)
    assert cfg.train.max_failures >= 1  # the default rides out a lost worker

    # The first driver: `raysl pretrain` in its own process, on the test session's Ray.
    log = tmp_path / "driver.log"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    with log.open("wb") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "raysl.cli", "pretrain", "--config", str(CONFIG),
             *[arg for o in overrides for arg in ("--set", o)]],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
            preexec_fn=die_with_parent)
    killed: dict[str, object] = {}
    try:
        try:
            _inject_faults(tmp_path / "ray_results" / "e2e-kill", driver, server, killed)
            driver.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the faults were not all injected in {DEADLINE_S:.0f}s: {killed}\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        finally:
            driver.kill()
        first = log.read_text(errors="replace")
        assert killed.get("pid") and killed["workers"] == 2, f"no worker killed: {killed}\n{first}"
        assert 0 < killed["server_down_epoch"] < 1 < killed["committed"] < 2, killed
        assert "driver_at" in killed and driver.returncode == -signal.SIGKILL, f"{killed}\n{first}"
        assert 2 < killed["driver_committed"] < 3, f"driver not killed inside epoch 3: {killed}"
        # The restarted rank 0 sent what the checkpoint had kept of the killed one's buffer
        # (epoch 1's metrics, queued while the server was down).
        assert "tracking call(s) the tracking server had not received" in first

        result = pretrain(cfg)  # the same command again
        assert result.resumed and f"MLflow run {result.mlflow_run_id}" in first
        _check_the_run(result, killed)
    finally:
        stop_group(server.proc)


def _check_the_run(result: PretrainResult, killed: dict[str, object]) -> None:
    """Every epoch's metrics once, each resume where it should be, the encoder registered."""
    client = MlflowClient(result.tracking_uri)
    run_id = result.mlflow_run_id
    assert client.get_run(run_id).info.status == "FINISHED"

    def steps(key: str) -> list[int]:
        return sorted(m.step for m in client.get_metric_history(run_id, key))
    # Each epoch's metrics once. The restarted group's first step was at epoch index 1, at the
    # step of a checkpoint inside epoch 2 (the one seen at the kill, or the next one); the
    # re-run's at epoch index 2, at one inside epoch 3.
    assert steps("train/loss") == [1, 2, 3]
    assert steps("time/first_step_s") == [0, 1, 2], f"not resumed at epochs 2 and 3: {killed}"
    resumed = {m.step: m.value for m in client.get_metric_history(run_id, "time/resumed_at_step")}
    assert sorted(resumed) == [1, 2]
    assert resumed[1] in (killed["step"], killed["step"] + EVERY)
    assert resumed[2] in (killed["driver_step"], killed["driver_step"] + EVERY)
    assert STEPS < resumed[1] < 2 * STEPS < resumed[2] < 3 * STEPS
    assert resumed[1] % EVERY == 0 and resumed[2] % EVERY == 0
    # Two clusterings (epochs 1 and 3) of every image, by both workers together; epoch 2 trained
    # on the first after the worker's restart, the end of epoch 3 on the second after the
    # driver's (a missing assignment would have failed the forward).
    assert [m.value for m in client.get_metric_history(run_id, "cluster/images")] == [IMAGES] * 2
    assert steps("train/cluster_acc") == [1, 2, 3]
    labels = client.get_metric_history(run_id, "cluster/nmi_labels")
    assert len(labels) == 2 and all(0 < m.value <= 1 for m in labels)  # Fashion-MNIST's classes
    plots = [f.path for f in client.list_artifacts(run_id, "clusters")]
    assert plots == ["clusters/cluster_sizes_epoch_001.png", "clusters/cluster_sizes_epoch_003.png"]

    # What the faults cost (RELIABILITY.md): from each kill to the next group's first step.
    first_steps = {m.step: m.value for m in client.get_metric_history(run_id,
                                                                       "time/first_step_s")}
    print(f"\n[faults] tracking server killed at {killed['server_down_at']:.1f}s, back at "
          f"{killed['server_up_at']:.1f}s; "
          f"worker killed at {killed['at']:.1f}s; restarted group's first step at "
          f"{first_steps[1]:.1f}s (first run's {first_steps[0]:.1f}s); epoch 1 took "
          f"{client.get_metric_history(run_id, 'train/epoch_s')[0].value:.1f}s; driver killed "
          f"at {killed['driver_at']:.1f}s, the re-run's first step {first_steps[2]:.1f}s after "
          "it started")

    assert np.isfinite(result.final_loss) and 0 < result.knn[TRAINED] <= 1
    assert result.model is not None
    encoder = raysl.load_encoder(result.model.model_uri, tracking_uri=result.tracking_uri)
    assert not any(k.startswith(("projector", "classifier")) for k in encoder.state_dict())
