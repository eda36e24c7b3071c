"""Shared fixtures. One Ray instance serves the whole session (starting Ray costs ~5 s)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from raysl.config import FASHION_MNIST_DIR
from tests.processes import free_port, start_server, stop, wait_for_url

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

# `make test` (and so CI) sets it: what would make tests skip stops the run at its start instead,
# so that a suite whose real-data and peer tests were skipped can never pass for a whole one.
STRICT_ENV = "RAYSL_TEST_STRICT"


def missing_for_the_whole_suite() -> list[str]:
    """What the suite needs that is not here, each with how to get it."""
    missing = []
    if not (Path(FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").exists():
        missing.append(f"Fashion-MNIST in {FASHION_MNIST_DIR} (make data: sudo apt-get install "
                       "dataset-fashion-mnist)")
    if importlib.util.find_spec("lightly") is None:
        missing.append("lightly, the peer the benchmarks compare with (make peers)")
    return missing


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under ``RAYSL_TEST_STRICT=1``, stop before any test when the suite could not run whole."""
    missing = missing_for_the_whole_suite() if os.environ.get(STRICT_ENV) == "1" else []
    if missing:
        pytest.exit(f"{STRICT_ENV}=1: the whole suite needs " + "; ".join(missing) + ". To run "
                    "the rest with those tests skipped: .venv/bin/python -m pytest", returncode=3)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray cluster with 4 logical CPUs (2 train workers + Ray Data on 2 real cores)."""
    import ray

    assert not ray.is_initialized(), "a test started Ray outside the ray_session fixture"
    # "local": a cluster of its own, never one a `ray start` or another session left running.
    ray.init(address="local", num_cpus=4, include_dashboard=True, object_store_memory=512 * 2**20,
             log_to_driver=True)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without MLFLOW_TRACKING_URI, and whatever it sets is undone after it.

    ``mlflow.set_tracking_uri`` also writes the environment variable, so one test's store would
    otherwise become the next test's default.
    """
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def fmnist_dir() -> Path:
    """The Debian Fashion-MNIST files; outside ``make test`` (strict) tests skip without them."""
    path = Path(FASHION_MNIST_DIR)
    if not (path / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-protocol server (moto in server mode) on 127.0.0.1, for the session.

    Started and stopped here; tests reach it through pyarrow's S3 client exactly as they would
    reach MinIO or AWS, with the endpoint and keys in the environment.
    """
    import sys
    import tempfile

    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="raysl-moto-")) / "server.log"
    server = start_server([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                           str(port)], log)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_url(f"{endpoint}/moto-api/", "moto server", server, log, timeout=60)
        yield endpoint
    finally:
        stop(server, grace=30)


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The loopback S3 server as a user configures one: endpoint and keys in the environment."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "raysl-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "raysl-test-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return s3_endpoint
