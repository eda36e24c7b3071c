"""Multi-node behaviour on one machine: a real 4-node Ray cluster (``multinode_harness.py``).

cluster.yaml's node types carry the custom resources ``train_node`` (GPU nodes) and
``data_node`` (CPU-only nodes). A pretraining run on a cluster with a head, one train node and
two data nodes must put both train workers on the train node and every augmentation task on
the data nodes, spread over both, and finish with a registered model.
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
    result["stdout"] = proc.stdout
    return result


def test_run_on_four_nodes_completes_and_registers_the_encoder(placement):
    assert placement["exit_code"] == 0, placement["stdout"][-3000:]
    assert "on the train_node nodes" in placement["stdout"]
    assert "on the data_node nodes" in placement["stdout"]
    client = MlflowClient(f"sqlite:///{placement['workdir']}/mlflow.db")
    (version,) = client.search_model_versions("name='raysl-simclr-resnet18'")
    assert client.get_run(version.run_id).info.status == "FINISHED"


def test_train_workers_land_on_the_train_node(placement):
    (train_node,) = placement["nodes"]["train"]
    assert placement["worker_nodes"] == [train_node, train_node]


def test_augmentation_runs_on_the_data_nodes_only_and_uses_both(placement):
    data_nodes = set(placement["nodes"]["data"])
    per_node = Counter(placement["augment_task_nodes"])
    assert placement["augment_task_names"] == ["MapBatches(augment_batch)"]
    assert per_node and set(per_node) <= data_nodes, (per_node, placement["nodes"])
    assert set(per_node) == data_nodes, f"augmentation did not spread: {per_node}"
