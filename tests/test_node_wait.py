"""A fixed-size run whose lost node does not come back: FAILED after ``train.node_wait_s``.

Ray Train, left to itself, retries placing the worker group every 60 s without end. Here a
train worker is SIGKILLed after a checkpoint, as a lost node's would be, while the CPUs it
needs are taken by another placement group (the node "does not come back"): the run must end
within its ``node_wait_s``, FAILED in MLflow, with its checkpoint kept and a message saying how
to resume or to go on with fewer workers.
"""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.util.state import list_actors

from raysl import config as C
from raysl.errors import NodesNotBack
from raysl.pretrain import pretrain
from tests.test_faults import _committed
from tests.test_pretrain_e2e import DEMO_CONFIG, _shared

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]
DEADLINE_S = 300.0
WAIT_S = 10.0  # train.node_wait_s: one attempt of 10 s, then the run gives up


@ray.remote
class _Taker:
    """Holds the CPUs it was given, as a node that went away no longer offers them."""

    def ready(self) -> bool:
        return True


def _train_worker_pids() -> list[int]:
    """The live Ray Train workers' processes, asked of this session's Ray by its address."""
    actors = list_actors(address=ray.get_runtime_context().gcs_address, detail=True, limit=100,
                         filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                         raise_on_missing_output=False)
    return sorted(a.pid for a in actors if a.pid)


def _lose_a_node(run_dir: Path, stopped: threading.Event, seen: dict[str, object]) -> None:
    """Once a checkpoint is committed: a train worker is SIGKILLed, and the CPUs its group
    gives back are taken. Two workers no longer fit while the taker holds them."""
    start = time.monotonic()
    while not stopped.is_set() and time.monotonic() - start < DEADLINE_S:
        epoch, step = _committed(run_dir)
        if epoch > 0:
            # Asked for before the kill, it waits in the node's queue and is granted the CPUs
            # the failed group's placement group gives back, before Ray Train asks for the
            # next group's, which then cannot be placed: 2 of the 4 CPUs are left.
            taker = _Taker.options(num_cpus=ray.cluster_resources()["CPU"] - 2).remote()
            pids = _train_worker_pids()
            seen.update(committed=epoch, step=step, taker=taker, workers=len(pids))
            if pids:
                os.kill(pids[-1], signal.SIGKILL)
                seen["killed_at"] = time.monotonic()
            return
        time.sleep(0.2)


def test_a_run_whose_lost_node_stays_away_fails_after_node_wait_s(tmp_path: Path):
    name = "node-wait"
    cfg = C.load(DEMO_CONFIG, [*_shared(tmp_path, 3, name), "eval.enabled=false",
                               "eval.monitor_every=0", "train.checkpoint_every_steps=2",
                               f"train.node_wait_s={WAIT_S}"])
    assert not cfg.train.elastic
    stopped, seen = threading.Event(), {}
    injector = threading.Thread(target=_lose_a_node,
                                args=(tmp_path / "ray_results" / name, stopped, seen))
    injector.start()
    try:
        with pytest.raises(NodesNotBack) as info:
            pretrain(cfg)
    finally:
        stopped.set()
        injector.join()
        if "taker" in seen:
            ray.kill(seen["taker"])
    assert seen.get("killed_at") and seen["workers"] == 2, seen
    message = str(info.value)
    assert f"train.node_wait_s={WAIT_S:g}" in message and "did not come back" in message
    assert f"--set train.run_name={name}" in message and "train.min_workers" in message
    # The checkpoint it names is there to resume from.
    kept = Path(message.split("the last checkpoint (")[1].split(")")[0])
    assert kept.parent == tmp_path / "ray_results" / name and any(kept.iterdir()), kept
    client = MlflowClient(cfg.tracking.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    run = next(r for r in runs if r.info.run_name == name)
    assert run.info.status == "FAILED"
    assert run.data.tags["raysl.failure"].startswith("NodesNotBack: ")
