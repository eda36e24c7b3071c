"""A 4-node Ray cluster on this machine, a real pretraining run on it that loses two nodes, and
where everything ran.

Run by ``tests/test_multinode.py`` in its own process: a driver can join only one Ray cluster,
and the test session already has one. The nodes are separate raylets started by
``ray.cluster_utils.Cluster``, with cluster.yaml's node-type markers standing in for the GPU and
CPU node types:

    head     1 CPU                      (drivers; decoding may run here)
    train    2 CPU, train_node: 1       (the GPU nodes of cluster.yaml)
    data x2  1 CPU each, data_node: 1   (the CPU-only data nodes)

The run is elastic (2 workers, at least 1) and checkpoints every 2 steps. Once a checkpoint is
committed, the train node and one data node are SIGKILLed, every process of them, and a smaller
train node (1 CPU: room for one worker) joins, as a replacement spot node would. Ray Train
restarts the group from the last checkpoint with the one worker that fits. Once that group has
committed a checkpoint of its own, a second 1-CPU train node joins (a node returns): Ray Train
sees room for both workers and restarts the group from its last checkpoint with two again, and
the run finishes. Ray Train looks for room every 60 s by default, here every
:data:`RESIZE_CHECK_S`; the one worker is paused until the group has grown, so that a run of
seconds is still training when Ray notices the node.

Usage: python tests/multinode_harness.py WORKDIR -- prints one JSON line last: the run's summary
fields, the node id of each node type, the node ids of the train workers and of the
augmentation tasks (from Ray's state API), and when the nodes were lost and when one returned.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.cluster_utils import Cluster
from ray.util.state import list_actors, list_tasks

from raysl import cli
from raysl.cluster.nodes import DATA_MARKER, TRAIN_MARKER

MIB = 2**20
RUN = "multinode"
DEADLINE_S = 240.0
RESIZE_CHECK_S = 2.0  # ScalingConfig(elastic_resize_monitor_interval_s): Ray's default is 60 s
GROW_DEADLINE_S = 120.0  # from the node's return to a worker on it


def start_cluster() -> tuple[Cluster, dict[str, list[Any]]]:
    """The cluster and the nodes of each node type ("head", "train", "data")."""
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_port": 0,
        "object_store_memory": 200 * MIB,
        # A killed node is marked dead after 3 missed 1-s health checks, not Ray's default 5 of
        # 3 s: until then its CPUs still look free and the restart waits for them in vain.
        "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}})
    nodes: dict[str, list[Any]] = {"head": [cluster.head_node], "train": [], "data": []}
    nodes["train"].append(cluster.add_node(num_cpus=2, resources={TRAIN_MARKER: 1},
                                           object_store_memory=200 * MIB))
    for _ in range(2):
        nodes["data"].append(cluster.add_node(num_cpus=1, resources={DATA_MARKER: 1},
                                              object_store_memory=200 * MIB))
    cluster.wait_for_nodes()
    return cluster, nodes


def committed_epoch(run_dir: Path) -> float:
    """The epoch of the run's last checkpoint that Ray Train committed (0 if none).

    Fractional for a checkpoint inside an epoch: 0.25 = a quarter into epoch 1.
    """
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
        return float(snapshot["latest_checkpoint_result"]["metrics"]["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def lose_nodes_after_a_checkpoint(cluster: Cluster, nodes: dict[str, list[Any]], run_dir: Path,
                                  run: threading.Thread) -> dict[str, Any]:
    """Once a checkpoint is committed: the train node and the second data node are killed
    (every process, no graceful shutdown), then a 1-CPU train node joins. Runs on the main
    thread: Ray starts a node's processes with signal handlers only the main thread may set."""
    start = time.monotonic()
    while time.monotonic() - start < DEADLINE_S and run.is_alive():
        if (epoch := committed_epoch(run_dir)) > 0:
            cluster.remove_node(nodes["train"][0], allow_graceful=False)
            cluster.remove_node(nodes["data"][1], allow_graceful=False)
            lost = {"epoch": committed_epoch(run_dir), "seen": epoch,
                    "at": time.monotonic() - start, "training": run.is_alive(),
                    "train": nodes["train"][0].node_id, "data": nodes["data"][1].node_id}
            # The replacement joins after the loss, as a spot node would.
            lost["spare"] = cluster.add_node(num_cpus=1, resources={TRAIN_MARKER: 1},
                                             object_store_memory=200 * MIB).node_id
            cluster.wait_for_nodes()
            return {**lost, **return_a_node_once_shrunk(cluster, run_dir, run, lost["epoch"],
                                                        start)}
        time.sleep(0.2)
    return {}


def return_a_node_once_shrunk(cluster: Cluster, run_dir: Path, run: threading.Thread,
                              lost_epoch: float, start: float) -> dict[str, Any]:
    """Once the one-worker group has committed a checkpoint past ``lost_epoch``, a 1-CPU train
    node joins: with it the cluster holds both workers again.

    The one worker is paused (SIGSTOP) from then until Ray Train has started a worker on the
    returned node: Ray sees a new node at its resource coordinator's next look (every 20 s),
    and this run's steps, unpaused, could all be done by then (a real run trains for hours).
    """
    while time.monotonic() - start < DEADLINE_S and run.is_alive():
        if (epoch := committed_epoch(run_dir)) > lost_epoch:
            paused = [a.pid for a in train_workers(cluster.address)]
            for pid in paused:
                os.kill(pid, signal.SIGSTOP)
            try:
                node = cluster.add_node(num_cpus=1, resources={TRAIN_MARKER: 1},
                                        object_store_memory=200 * MIB)
                cluster.wait_for_nodes()
                returned = {"returned": node.node_id, "returned_epoch": epoch,
                            "returned_at": time.monotonic() - start, "paused": paused}
                grow_by = time.monotonic() + GROW_DEADLINE_S
                while not (grown := any(a.node_id == node.node_id
                                        for a in train_workers(cluster.address))):
                    if time.monotonic() > grow_by:
                        break
                    time.sleep(0.5)
                return {**returned, "grown": grown, "grown_at": time.monotonic() - start}
            finally:
                for pid in paused:  # Ray Train has stopped it by now, unless it did not grow
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)
    return {}


def train_workers(address: str) -> list[Any]:
    """The live Ray Train workers (Ray's state API)."""
    return list(list_actors(address=address, detail=True, limit=100,
                            filters=[("class_name", "=", "RayTrainWorker"),
                                     ("state", "=", "ALIVE")]))


def main(workdir: Path) -> int:
    # Ray Data's resource coordinator, which an elastic run asks what fits, refreshes its view of
    # the nodes every 20 s: the first restart can still count the killed node and wait for it
    # until the worker group's start times out (60 s by default; 10 s here, in every process
    # of the cluster, which inherit this environment).
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "10"
    # Growing the group stops the old one, paused: its process group's shutdown waits 2 s for
    # it, not 30 (the worker is then killed, as Ray kills it after the wait anyway).
    os.environ["TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S"] = "2"
    # Ray Train's look for room to grow the group, every RESIZE_CHECK_S s instead of 60: the
    # same resize, soon enough for a short run. (ScalingConfig is read where trainer.py builds
    # it; an instance of the same class, with this one field other than Ray's default.)
    ray.train.ScalingConfig = functools.partial(  # type: ignore[misc]
        ray.train.ScalingConfig, elastic_resize_monitor_interval_s=RESIZE_CHECK_S)
    cluster, nodes = start_cluster()
    ray.init(address=cluster.address)  # here: the run's thread then finds Ray connected
    exit_code: list[int] = []
    run = threading.Thread(target=lambda: exit_code.append(cli.main([
        "pretrain", "--smoke-test",
        "--set", "train.num_workers=2", "--set", "train.min_workers=1",
        "--set", "train.epochs=1", "--set", "train.checkpoint_every_steps=2",
        "--set", f"train.run_name={RUN}",
        "--set", "data.source.limit=512",
        "--set", "data.augment_batch_size=32",  # several augmentation tasks to place
        "--set", f"train.storage_path={workdir / 'ray_results'}",
        "--set", f"tracking.tracking_uri=sqlite:///{workdir / 'mlflow.db'}",
        "--set", "eval.enabled=false",  # evaluation is the same on one node or four
        "--set", "eval.monitor_every=0",  # so are the label-free monitors
    ])), daemon=True)
    run.start()
    try:
        lost = lose_nodes_after_a_checkpoint(cluster, nodes, workdir / "ray_results" / RUN, run)
        run.join(timeout=DEADLINE_S)
        code = exit_code[0] if exit_code else -1
        # The address: auto-detection refuses when another Ray runs here (the test session's).
        workers = list_actors(address=cluster.address, detail=True, limit=1000,
                              filters=[("class_name", "=", "RayTrainWorker")])
        tasks = [t for t in list_tasks(address=cluster.address, detail=True, limit=10000)
                 if "augment_batch" in t.name and t.node_id]
        print(json.dumps({
            "exit_code": code, "lost": lost,
            "nodes": {kind: [n.node_id for n in group] for kind, group in nodes.items()},
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
