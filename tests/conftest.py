"""Shared fixtures. One Ray instance serves the whole session (starting Ray costs ~5 s)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from raysl.config import FASHION_MNIST_DIR

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray cluster with 4 logical CPUs (2 train workers + Ray Data on 2 real cores)."""
    import ray

    assert not ray.is_initialized(), "a test started Ray outside the ray_session fixture"
    ray.init(num_cpus=4, include_dashboard=True, object_store_memory=512 * 2**20,
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
    """The Debian Fashion-MNIST files; tests that need them skip with a clear reason otherwise."""
    path = Path(FASHION_MNIST_DIR)
    if not (path / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
