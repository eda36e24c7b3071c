"""A real sweep, killed and resumed: Ray Tune + Ray Train trials, ASHA, MLflow, the champion.

`raysl tune` runs in a subprocess, a driver joining the test session's Ray cluster (as under
`ray job submit`): one Ray instance on the machine, so Ray Train's placement-group cleaner can
find it and free the resources of trials Tune ends. Three trials of a learning-rate grid
run one at a time: lr 0.5 (learns: 52-60% online kNN at epoch 2 in repeated runs), 1e-6 (its
random init drifts to 37-41% by epoch 2, so ASHA must stop it at that rung) and 0.3. While the
third trial trains, the whole process group is killed; the same command then resumes the sweep,
and a third run finds it finished.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from raysl.config import FASHION_MNIST_DIR
from raysl.train import in_process

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]
ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 3


def _sweep_file(tmp_path: Path) -> Path:
    fmnist = (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").exists()
    data = ({"eval.bank.limit": 600, "eval.query.limit": 300} if fmnist else
            {"data.source.format": "generated", "eval.bank.format": "generated",
             "eval.bank.limit": 900, "eval.query.path": "", "data.image_size": 28})
    # The demo's recipe without the label-free monitors, which this sweep does not rank on (a
    # sweep owns eval.monitor_every, so it is off in the base): ~15 s less.
    base = yaml.safe_load((ROOT / "pipelines/configs/demo.yaml").read_text())
    base["eval"]["monitor_every"] = 0
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {
        "name": "e2e-sweep",
        "base": str(tmp_path / "base.yaml"),
        "set": {**data, "data.source.limit": 640, "data.batch_size_global": 64,
                "model.width": 8, "train.epochs": EPOCHS, "train.num_workers": 1,
                "train.cpus_per_worker": 1, "train.data_cpus": 0.5, "data.augment_cpus": 0.5,
                "optim.warmup_epochs": 0, "eval.knn_k": 20, "eval.protocols": ["knn"],
                "eval.plot_points": 100, "eval.baselines": False, "eval.plots": False,
                "train.storage_path": str(tmp_path / "ray_results"),
                "tracking.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                "tracking.experiment": "sweeps", "tracking.registered_model": "sweep-encoder"},
        "space": {"optim.base_lr": {"grid": [0.5, 1.0e-6, 0.3]}},
        "search": "grid",
        "scheduler": {"name": "asha", "grace_period": 2, "reduction_factor": 2},
        "max_concurrent_trials": 1,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _command(path: Path) -> list[str]:
    return [sys.executable, "-m", "raysl.cli", "tune", "--sweep", str(path)]


def _env() -> dict[str, str]:
    import ray

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def _children(client: MlflowClient) -> dict[str, object]:
    """Child runs of the sweep by trial index (00000, 00001, ...)."""
    exp = client.get_experiment_by_name("sweeps")
    if exp is None:
        return {}
    runs = client.search_runs([exp.experiment_id], "tags.`raysl.kind` = 'sweep trial'")
    return {r.data.tags["raysl.trial_id"].split("_")[1]: r for r in runs}


def _epochs_logged(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "eval/online_knn_top1"))


def _committed_epoch(tmp_path: Path, child) -> int:
    """Epochs that the trial's newest complete checkpoint holds (0 if none yet).

    The trials train in their own processes (one worker, one node: train.local_mode=auto),
    which commit each checkpoint whole into the trial's run directory.
    """
    run_dir = tmp_path / "ray_results" / f"e2e-sweep-{child.data.tags['raysl.trial_id']}"
    newest = in_process.newest(str(run_dir), marked_only=True)
    if newest is None:
        return 0
    return int(json.loads((newest.path / "state.json").read_text())["epoch"]) + 1


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and everything in its session (Ray then ends the actors it owned)."""
    sid = os.getsid(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    time.sleep(2)
    ps = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    for line in ps.splitlines():
        pid, s = map(int, line.split())
        if s == sid:
            os.kill(pid, signal.SIGKILL)


def test_sweep_killed_and_resumed_stops_early_and_crowns_the_best(tmp_path):
    path = _sweep_file(tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    first_log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(_command(path), cwd=tmp_path, env=_env(), stdout=first_log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 480
        while time.monotonic() < deadline:  # until Ray Train committed a checkpoint of trial 3
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            third = _children(client).get("00002")
            if third is not None and _committed_epoch(tmp_path, third) >= 1:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the third trial never checkpointed")
        assert _committed_epoch(tmp_path, third) < EPOCHS, \
            "the third trial finished before the kill; the test could not check resuming"
    finally:
        _kill_session(proc)
    killed = _children(client)
    first_finished = killed["00000"].info.run_id

    # The same command resumes the sweep.
    out = subprocess.run(_command(path), cwd=tmp_path, env=_env(), capture_output=True,
                         text=True, timeout=600)
    log = out.stdout + out.stderr
    (tmp_path / "second.log").write_text(log)
    assert out.returncode == 0, log[-4000:]
    assert "restoring the sweep" in log
    assert "1 worker(s) in the trial's own process" in log  # no worker group per trial
    children = _children(client)
    assert sorted(children) == ["00000", "00001", "00002"]  # no duplicate run for any trial
    first_id = children["00000"].data.tags["raysl.trial_id"]
    third_id = children["00002"].data.tags["raysl.trial_id"]
    # Finished trials are not re-run; the interrupted one resumes from its checkpoint.
    assert f"[trial {first_id}]" not in log and children["00000"].info.run_id == first_finished
    assert f"resuming e2e-sweep-{third_id} at epoch" in log
    assert _epochs_logged(client, children["00002"].info.run_id)[-1] >= 2

    # ASHA stopped the lr=1e-6 trial at its first rung (epoch 2); the first ran to the end. (The
    # third is judged at epoch 2 against the rung as Tune restored it: not part of the test.)
    status = {i: r.data.tags["raysl.trial_status"] for i, r in children.items()}
    assert status["00000"] == "completed" and status["00001"] == "stopped early"
    # Tune decides on the epoch-2 report while the Ray Train workers go on (reports reach Tune
    # asynchronously), so a 10-step epoch may still be logged before the stop lands.
    assert _epochs_logged(client, children["00001"].info.run_id)[:2] == [1, 2]
    assert client.get_run(children["00001"].info.run_id).info.status == "KILLED"

    # Parent and children in MLflow.
    parent = client.get_run(children["00000"].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.tags["raysl.kind"] == "sweep"
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id
               for r in children.values())
    assert parent.data.params["space.optim.base_lr"] == "grid[0.5, 1e-06, 0.3]"
    assert parent.data.params["scheduler"] == "asha"
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/results.csv", "sweep/results.txt", "sweep/params_vs_metric.png",
            "sweep/curves.png", "sweep/best_config.yaml", "sweep/summary.txt",
            "sweep/definition.yaml"} <= files
    assert parent.data.metrics["sweep/trials_stopped_early"] == list(status.values()).count(
        "stopped early")

    # The champion: the completed trial with the best final online kNN, registered and aliased.
    final = {i: client.get_run(children[i].info.run_id).data.metrics["eval/online_knn_top1"]
             for i in ("00000", "00002") if status[i] == "completed"}
    best = max(final, key=lambda i: final[i])
    assert parent.data.tags["raysl.best_run_id"] == children[best].info.run_id
    version = client.get_model_version_by_alias("sweep-encoder", "champion")
    assert str(version.version) == "1" and version.run_id == children[best].info.run_id
    assert "eval.knn_top1" in version.tags and version.tags["raysl.sweep"] == "e2e-sweep"
    assert parent.data.metrics["champion/promoted"] == 1
    best_config = yaml.safe_load(Path(client.download_artifacts(
        parent.info.run_id, "sweep/best_config.yaml", str(tmp_path))).read_text())
    lr = {"00000": 0.5, "00002": 0.3}[best]
    assert best_config["optim"]["base_lr"] == lr
    assert "* best completed trial" in log and "champion -> version 1" in log

    # Once finished, the same command re-runs nothing and registers nothing.
    again = subprocess.run(_command(path), cwd=tmp_path, env=_env(), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "had already finished" in again.stdout
    assert len(client.search_model_versions("name='sweep-encoder'")) == 1
