"""A folder of 100,000 image files, end to end to a first training step, under each cache mode.

``raysl pretrain`` runs as a user runs it (its own process, joining the session's Ray) on a
tree of 100,000 small PNGs in 1,000 class folders, and is stopped once it logs its first
optimizer step. ``data.cache=auto`` keeps the decoded images here (8 px, ~6 MB: it takes the
``memory`` path, decoding all 100,000 once and counting bad files before training);
``none`` streams them. Each run must list all of them, say how long listing took, and train;
the cached run also draws the evaluation's labeled split, online kNN's subset and the label-free
monitors' sample from the 100,000 before its first step.
The bytes each read task carries are bounded in ``tests/data/test_scale.py``.
"""

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.processes import die_with_parent

pytestmark = pytest.mark.usefixtures("ray_session")

FILES, CLASSES = 100_000, 1000
DEADLINE_S = 300  # to the first step, each run


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100,000 8 px PNGs (16 distinct images) in 1,000 class folders, and 3 that are not."""
    root = tmp_path_factory.mktemp("files") / "tree"
    images = []
    for k in range(16):
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8), 16 * k, np.uint8)).save(buf, "PNG")
        images.append(buf.getvalue())
    for c in range(CLASSES):
        (root / f"n{c:04d}").mkdir(parents=True)
    for i in range(FILES - 3):
        (root / f"n{i % CLASSES:04d}" / f"{i:06d}.png").write_bytes(images[i % 16])
    for i in range(3):
        (root / f"n{i:04d}" / f"bad{i}.png").write_bytes(b"not a png")
    return root


@pytest.mark.parametrize("cache", ["auto", "none"])
def test_100k_files_reach_a_first_step(tree: Path, cache: str, tmp_path: Path):
    # Cached, the evaluation's parts that are drawn before training run too: the labeled split
    # (eval.bank.limit of the 100,000 rows), online kNN's subset and the monitors' sample.
    # Streamed, they would decode the whole set once more for its labels (linear, ~90 s here):
    # more than this test's share of CI's time.
    evaluation = (["eval.online_knn_every=1", "eval.protocols=knn"] if cache == "auto" else
                  ["eval.enabled=false", "eval.monitor_every=0"])
    # One worker: it trains in the command's process (what is tested is listing and planning).
    settings = ["model.width=8", "model.small_stem=true", "train.num_workers=1",
                "data.batch_size_global=64", "optim.warmup_epochs=0", *evaluation,
                "tracking.register=false", f"data.source.path={tree}",
                f"data.cache={cache}", "data.image_size=8", "data.decode_size=8",
                "data.channels=1", "train.epochs=1", "train.run_name=files",
                f"train.storage_path={tmp_path / 'ray_results'}",
                f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    log = tmp_path / "driver.log"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    with log.open("wb") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "raysl.cli", "pretrain", *[f"--set={s}" for s in settings]],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
            preexec_fn=die_with_parent)
    deadline = time.monotonic() + DEADLINE_S
    try:
        while "[raysl] first step" not in log.read_text(errors="replace"):
            if driver.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no first step (exit {driver.poll()}):\n"
                            f"{log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.5)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    text = log.read_text(errors="replace")
    data = next(ln for ln in text.splitlines() if ln.startswith("[raysl] data:"))
    assert re.search(r"listed in [0-9.]+ s", data), data
    if cache == "auto":  # decoded once: the bad files are found and counted before training
        assert "decoded once in" in data and f"({FILES - 3} images, {CLASSES} classes)" in data
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        (run,) = client.search_runs([client.get_experiment_by_name("raysl").experiment_id])
        assert run.data.metrics["data/skipped_not_an_image"] == 3
        assert run.data.metrics["data/images"] == FILES - 3
    else:  # a stream knows only the list; it finds the bad files as it decodes
        assert f"({FILES} images, {CLASSES} classes)" in data and "data.cache=none" in data
    steps = re.search(r"training simclr on (\d+) images: 1 epoch\(s\) x (\d+) step", text)
    assert steps and int(steps.group(2)) == int(steps.group(1)) // 64
    assert "serialized size of your read function" not in text
    # The killed driver's job ends its actors; the next test waits for the CPUs they held.
    wait_for_cpus(time.monotonic() + 60)


def wait_for_cpus(deadline: float) -> None:
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources().get("CPU", 0):
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
