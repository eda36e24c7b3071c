"""Multi-node behaviour on one machine: a real 4-node Ray cluster (``multinode_harness.py``).

cluster.yaml's node types carry the custom resources ``train_node`` (GPU nodes) and
``data_node`` (CPU-only nodes). An elastic pretraining run (2 workers, at least 1) on a cluster
with a head, one train node and two data nodes must put both train workers on the train node and
the augmentation on the data nodes, spread over both. Then the train node and one data node are
killed mid-run and a 1-CPU train node joins: the run must go on from its last checkpoint with the
one worker that fits. When a second 1-CPU train node joins (a node returns), the group must grow
back to two workers, from its last checkpoint again, and the run finish with a registered model,
each epoch logged once.
"""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.processes import die_with_parent

pytestmark = pytest.mark.slow
HARNESS = Path(__file__).with_name("multinode_harness.py")
ROOT = HARNESS.parents[1]


@pytest.fixture(scope="module")
def placement(tmp_path_factory: pytest.TempPathFactory) -> dict:
    workdir = tmp_path_factory.mktemp("multinode")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    proc = subprocess.run([sys.executable, str(HARNESS), str(workdir)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=die_with_parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["workdir"] = str(workdir)
    result["stdout"] = proc.stdout + proc.stderr  # the workers' lines reach stderr
    return result


def test_run_that_loses_nodes_shrinks_grows_back_when_one_returns_and_registers(placement):
    assert placement["exit_code"] == 0, placement["stdout"][-3000:]
    assert "1-2 (elastic) train worker(s)" in placement["stdout"]
    assert "on the train_node nodes" in placement["stdout"]
    assert "on the data_node nodes" in placement["stdout"]
    lost = placement["lost"]
    assert lost and lost["training"] and 0 < lost["epoch"] < 1, f"not lost mid-run: {lost}"
    client = MlflowClient(f"sqlite:///{placement['workdir']}/mlflow.db")
    (version,) = client.search_model_versions("name='raysl-simclr-resnet18'")
    run_id = version.run_id
    assert client.get_run(run_id).info.status == "FINISHED"

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
    # Two restarts inside the epoch, each from a checkpoint (every 2 of its 16 steps): the one
    # committed when the nodes died (or one whose commit was under way), with one worker; then,
    # the node back, the one the single worker had committed, with two. The epoch is logged
    # once, by the group grown back.
    assert lost["paused"] and lost["grown"], f"no worker on the returned node: {lost}"
    assert history("train/loss")[0][0] == 1 and len(history("train/loss")) == 1
    assert history("train/workers") == [(1, 2)]
    shrunk, grown = (m.value for m in sorted(client.get_metric_history(
        run_id, "time/resumed_at_step"), key=lambda m: m.timestamp))
    assert shrunk in (round(lost["epoch"] * 16), round(lost["epoch"] * 16) + 2), (shrunk, lost)
    assert grown in (round(lost["returned_epoch"] * 16), round(lost["returned_epoch"] * 16) + 2)
    out = placement["stdout"]
    to_one = out.index("the checkpoint's run had 2 worker(s), this one has 1")
    assert out.index("the checkpoint's run had 1 worker(s), this one has 2") > to_one


def test_train_workers_land_on_the_train_node_then_on_the_nodes_that_joined(placement):
    (train_node,) = placement["nodes"]["train"]
    lost = placement["lost"]
    per_node = Counter(placement["worker_nodes"])  # every worker the run started, dead or alive
    # Two on the train node; one on the replacement; then one on each 1-CPU train node.
    assert per_node == {train_node: 2, lost["spare"]: 2, lost["returned"]: 1}, per_node


def test_augmentation_runs_on_the_data_nodes_only_and_uses_both(placement):
    data_nodes = set(placement["nodes"]["data"])
    per_node = Counter(placement["augment_task_nodes"])
    assert placement["augment_task_names"] == ["MapBatches(augment_batch)"]
    assert per_node and set(per_node) <= data_nodes, (per_node, placement["nodes"])
    assert set(per_node) == data_nodes, f"augmentation did not spread: {per_node}"
