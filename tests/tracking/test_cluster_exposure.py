"""The cluster files bind the dashboard and the MLflow server to the head's private address.

Never to all interfaces (0.0.0.0), and never to the head's loopback only, which would cut the
workers off MLflow. Each file says how to reach both through an SSH tunnel.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from pathlib import Path

import pytest

from tests.test_cluster_config import CONFIGS, load, ray_up_checks
from tests.tracking.test_auth import SERVER_FLAGS

ASSIGN = re.compile(r"HEAD_IP=\$\(hostname -I \| awk '\{print \$1\}'\)")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_the_head_serves_on_its_private_address_only(path: Path):
    prepared = ray_up_checks(load(path))
    head, workers = prepared["head_start_ray_commands"], prepared["worker_start_ray_commands"]
    for command in head + workers:
        assert "0.0.0.0" not in command and "127.0.0.1" not in command, command
    start = next(c for c in head if "ray start --head" in c)
    server = next(c for c in head if "mlflow server" in c)
    for command in (start, server):  # each command is its own shell: each sets HEAD_IP
        assert ASSIGN.search(command), command
    assert "--dashboard-host=$HEAD_IP" in start
    assert "--host $HEAD_IP --port 5000" in server
    assert f"mlflow server {' '.join(SERVER_FLAGS)} " in server  # the permissions test_auth checks
    assert "'http://$HEAD_IP:5000/health'" in server  # a running server is found, not doubled
    # Every process reaches the server where it listens: the head at HEAD_IP, the workers at
    # the address the autoscaler gives them for the head.
    assert "export MLFLOW_TRACKING_URI=http://$HEAD_IP:5000" in start
    start_worker = next(c for c in workers if "ray start" in c)
    assert "export MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in start_worker
    header = path.read_text().split("\ncluster_name:")[0]
    assert re.search(r"ssh -i \S+ .*-L 8265:\S+:8265", header.replace("\\\n#", ""))
    assert re.search(r"-L 5001:\S+:5000", header)


def test_head_ip_is_an_interface_address():
    """The assignment the head runs names one of its own addresses, not an unspecified one."""
    out = subprocess.run(["bash", "-c", ASSIGN.pattern.replace("\\", "") + ' && echo "$HEAD_IP"'],
                         capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    address = ipaddress.ip_address(out)
    assert not address.is_unspecified and not address.is_loopback
