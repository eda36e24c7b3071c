"""Fault injection on real processes: a train worker SIGKILLed mid-epoch.

The run checkpoints inside epochs too (``train.checkpoint_every_steps``), and is DeepCluster's,
so the same run also shows the clustering family end to end: two workers embed their shares of
the whole training set from Ray Data, cluster them together, train on the pseudo-labels their
rows' indices look up, and a restarted worker group trains on the assignment the checkpoint
kept. Bounded in time: every wait has a deadline.
"""

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from ray.util.state import list_actors

import raysl
from raysl import config as C
from raysl.pretrain import TRAINED, pretrain
from tests.test_pretrain_e2e import CONFIGS, _shared

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]
DEADLINE_S = 300.0
IMAGES = 6000  # ~4 s epochs on 2 CPUs: long enough to land the kill inside epoch 2
STEPS = IMAGES // 64  # per epoch, at the shared batch of 64
EVERY = 40  # train.checkpoint_every_steps: 2 checkpoints inside each epoch


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


def _kill_a_worker_inside_epoch_2(run_dir: Path, killed: dict[str, object]) -> None:
    """SIGKILL one train worker as soon as Ray Train has committed a checkpoint inside epoch 2."""
    start = time.monotonic()
    while time.monotonic() - start < DEADLINE_S:
        epoch, step = _committed(run_dir)
        if epoch > 1:
            pids = _train_worker_pids()
            killed.update(committed=epoch, step=step, workers=len(pids),
                          at=time.monotonic() - start)
            if pids:
                os.kill(pids[-1], signal.SIGKILL)
                killed["pid"] = pids[-1]
            return
        time.sleep(0.2)


def test_a_killed_worker_costs_the_steps_since_the_last_checkpoint(tmp_path: Path, monkeypatch):
    """DeepCluster (clusters every 2 epochs), 2 workers, 2 epochs of 93 steps, a checkpoint
    every 40 steps; a worker SIGKILLed after a checkpoint inside epoch 2. With the default
    train.max_failures, Ray Train restarts the group from that checkpoint: epoch 2 goes on
    from its step, on the assignment of epoch 1 read back from the checkpoint (not due to
    re-cluster), and the run finishes and registers its encoder."""
    monkeypatch.chdir(tmp_path)
    cfg = C.load(CONFIGS / "deepcluster_fmnist.yaml", [
        *_shared(tmp_path, 2, "e2e-kill"), f"data.source.limit={IMAGES}",
        "eval.protocols=knn", "eval.monitor_every=0", "eval.baselines=false", "eval.plots=false",
        "method.num_clusters=10",
        "method.head_dim=32", "method.pca_dim=16", "method.recluster_every=2",
        f"train.checkpoint_every_steps={EVERY}",
        "tracking.registered_model=e2e-deepcluster"])
    assert cfg.train.max_failures >= 1  # the default rides out a lost worker
    killed: dict[str, object] = {}
    killer = threading.Thread(target=_kill_a_worker_inside_epoch_2,
                              args=(tmp_path / "ray_results" / "e2e-kill", killed), daemon=True)
    killer.start()
    result = pretrain(cfg)
    killer.join(timeout=5)
    assert killed.get("pid") and killed["workers"] == 2, f"no worker was killed: {killed}"
    assert 1 < killed["committed"] < 2, f"not killed inside epoch 2: {killed}"

    client = MlflowClient(result.tracking_uri)
    run_id = result.mlflow_run_id
    assert client.get_run(run_id).info.status == "FINISHED"

    def steps(key: str) -> list[int]:
        return sorted(m.step for m in client.get_metric_history(run_id, key))
    # Each epoch's metrics once; the restarted group's first step was at epoch index 1, at
    # the step of a checkpoint inside epoch 2 (the one seen at the kill, or the next one).
    assert steps("train/loss") == [1, 2]
    assert steps("time/first_step_s") == [0, 1], f"not resumed at epoch 2: {killed}"
    (resumed,) = client.get_metric_history(run_id, "time/resumed_at_step")
    assert resumed.step == 1 and resumed.value in (killed["step"], killed["step"] + EVERY)
    assert STEPS < resumed.value < 2 * STEPS and resumed.value % EVERY == 0
    # One clustering (epoch 1) of every image, by both workers together; epoch 2 trained on
    # it after the restart (a missing assignment would have failed the forward).
    assert [m.value for m in client.get_metric_history(run_id, "cluster/images")] == [IMAGES]
    assert steps("train/cluster_acc") == [1, 2]
    labels = client.get_metric_history(run_id, "cluster/nmi_labels")
    assert len(labels) == 1 and 0 < labels[0].value <= 1  # Fashion-MNIST's classes
    plots = [f.path for f in client.list_artifacts(run_id, "clusters")]
    assert plots == ["clusters/cluster_sizes_epoch_001.png"]

    # What the fault cost (RELIABILITY.md): from the kill to the restarted group's first step.
    first_steps = {m.step: m.value for m in client.get_metric_history(run_id,
                                                                       "time/first_step_s")}
    print(f"\n[faults] killed at {killed['at']:.1f}s; restarted group's first step at "
          f"{first_steps[1]:.1f}s (first run's {first_steps[0]:.1f}s); epoch 1 took "
          f"{client.get_metric_history(run_id, 'train/epoch_s')[0].value:.1f}s")

    assert np.isfinite(result.final_loss) and 0 < result.knn[TRAINED] <= 1
    assert result.model is not None
    encoder = raysl.load_encoder(result.model.model_uri, tracking_uri=result.tracking_uri)
    assert not any(k.startswith(("projector", "classifier")) for k in encoder.state_dict())
