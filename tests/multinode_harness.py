"""A 4-node Ray cluster on this machine, a real pretraining run on it, and where everything ran.

Run by ``tests/test_multinode.py`` in its own process: a driver can join only one Ray cluster,
and the test session already has one. The nodes are separate raylets started by
``ray.cluster_utils.Cluster``, with cluster.yaml's node-type markers standing in for the GPU and
CPU node types:

    head     1 CPU                      (drivers; decoding may run here)
    train    2 CPU, train_node: 1       (the GPU nodes of cluster.yaml)
    data x2  1 CPU each, data_node: 1   (the CPU-only data nodes)

Usage: python tests/multinode_harness.py WORKDIR -- prints one JSON line last: the run's summary
fields, the node id of each node type, and the node ids of the train workers and of the
augmentation tasks (from Ray's state API).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors, list_tasks

from raysl import cli
from raysl.train.trainer import DATA_MARKER, TRAIN_MARKER

MIB = 2**20


def start_cluster() -> tuple[Cluster, dict[str, list[str]]]:
    """The cluster and the node ids of each node type ("head", "train", "data")."""
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_port": 0,
        "object_store_memory": 200 * MIB})
    ids = {"head": [cluster.head_node.node_id], "train": [], "data": []}
    ids["train"].append(cluster.add_node(num_cpus=2, resources={TRAIN_MARKER: 1},
                                         object_store_memory=200 * MIB).node_id)
    for _ in range(2):
        ids["data"].append(cluster.add_node(num_cpus=1, resources={DATA_MARKER: 1},
                                            object_store_memory=200 * MIB).node_id)
    cluster.wait_for_nodes()
    return cluster, ids


def main(workdir: Path) -> int:
    cluster, ids = start_cluster()
    try:
        code = cli.main([
            "pretrain", "--smoke-test",
            "--set", f"train.address={cluster.address}",
            "--set", "train.num_workers=2", "--set", "data.source.limit=512",
            "--set", "data.augment_batch_size=32",  # several augmentation tasks to place
            "--set", f"train.storage_path={workdir / 'ray_results'}",
            "--set", f"tracking.tracking_uri=sqlite:///{workdir / 'mlflow.db'}",
            "--set", "eval.enabled=false",  # evaluation is the same on one node or four
            "--set", "eval.monitor_every=0",  # so are the label-free monitors
        ])
        # The address: auto-detection refuses when another Ray runs here (the test session's).
        workers = list_actors(address=cluster.address, detail=True, limit=1000,
                              filters=[("class_name", "=", "RayTrainWorker")])
        tasks = [t for t in list_tasks(address=cluster.address, detail=True, limit=10000)
                 if "augment_batch" in t.name and t.node_id]
        print(json.dumps({
            "exit_code": code, "nodes": ids,
            "worker_nodes": [a.node_id for a in workers],
            "augment_task_nodes": [t.node_id for t in tasks],
            "augment_task_names": sorted({t.name for t in tasks}),
        }))
        return 0
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
