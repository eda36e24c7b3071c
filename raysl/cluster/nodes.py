"""The cluster's nodes as raysl plans with them: CPUs, GPUs and cluster.yaml's node-type markers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray

# Node-type markers (custom resources) of cluster.yaml's node types. A node has 1 of its marker;
# a worker or task asks for a sliver of it, which pins it to that node type without limiting how
# many share the node (CPUs and GPUs still do that).
TRAIN_MARKER = "train_node"
DATA_MARKER = "data_node"
MARKER_REQUEST = 0.001


@dataclass(frozen=True)
class Node:
    """One alive Ray node: its CPUs, GPUs, host address and the node-type markers it carries."""

    cpus: float
    gpus: float = 0.0
    host: str = ""
    markers: frozenset[str] = frozenset()

    def describe(self) -> str:
        """``48 CPU + 4 GPU``."""
        return f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")


def node_resources() -> list[Node]:
    """Every node that is up, with the node-type markers it carries."""
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    markers = (TRAIN_MARKER, DATA_MARKER)
    return [Node(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)),
                 str(n.get("NodeManagerAddress", "")),
                 frozenset(m for m in markers if n["Resources"].get(m)))
            for n in nodes if n.get("Alive")]


def cluster_resources() -> tuple[float, float]:
    """(CPUs, GPUs) of the connected cluster."""
    res = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return float(res.get("CPU", 0)), float(res.get("GPU", 0))
