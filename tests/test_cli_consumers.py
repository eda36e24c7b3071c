"""``raysl embed``, ``neighbours`` and ``export`` as a user types them: the console script.

Each command runs the installed ``raysl`` in a fresh process, with the flags of its ``--help``,
against one tiny registered encoder (a module-scoped fixture). Commands that need Ray join the
test session's cluster through ``RAY_ADDRESS``, as a job on a cluster does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch
from PIL import Image

import raysl
from raysl.eval.features import resized
from tests.serving.registered import NAME, SIZE, register_tiny_encoder

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]

RAYSL = Path(sys.executable).parent / "raysl"
MODEL = f"models:/{NAME}@champion"
IMAGES = 6


def _raysl(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``raysl ARGS`` from a shell in ``cwd``, joined to the session's Ray cluster."""
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    env.pop("MLFLOW_TRACKING_URI", None)  # the store is named by --tracking-uri, as typed
    return subprocess.run([str(RAYSL), *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """The registered encoder, a folder of images and its ``raysl embed`` output."""
    registered = register_tiny_encoder(tmp_path_factory.mktemp("cli-consumers"))
    root = registered["root"]
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for i in range(IMAGES):  # the model's size and mode, and others
        shape = [(SIZE, SIZE), (48, 40), (SIZE, SIZE, 3)][i % 3]
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
            root / "images" / f"{i}.png")
    run = _raysl("embed", MODEL, "--data", str(root / "images"), "--out", "emb.parquet",
                 "--tracking-uri", registered["uri"], cwd=root)
    return {**registered, "embed": run, "out": root / "emb.parquet"}


def test_embed_writes_one_row_per_image(store):
    run = store["embed"]
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"wrote {IMAGES} embeddings of 64 floats to emb.parquet" in run.stdout
    table = pq.read_table(store["out"])
    assert table.num_rows == IMAGES
    assert np.array(table.column("embedding").to_pylist()).shape == (IMAGES, 64)
    assert sorted(Path(p).name for p in table.column("path").to_pylist()) == [
        f"{i}.png" for i in range(IMAGES)]


def test_neighbours_of_an_embedded_image_start_with_itself(store):
    query = store["root"] / "images" / "1.png"
    run = _raysl("neighbours", "emb.parquet", str(query), "--model", MODEL, "-k", "3",
                 "--tracking-uri", store["uri"], cwd=store["root"])
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert lines[0] == f"{query}:" and len(lines) == 4  # the query, then k neighbours
    rank, similarity, _, _, path = lines[1].split()
    assert (rank, path) == ("1", str(query)) and float(similarity) == pytest.approx(1, abs=1e-3)
    assert "Downloading artifacts" not in run.stderr  # raysl's lines, not MLflow's bars


def test_an_exported_encoder_computes_what_load_encoder_computes(store):
    run = _raysl("export", MODEL, "--format", "torchscript", "--out", "encoder.pt",
                 "--tracking-uri", store["uri"], cwd=store["root"])
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[raysl] torchscript: encoder.pt; largest difference from the encoder" in run.stdout
    images = np.random.default_rng(1).integers(0, 256, (4, 40, 40, 1), dtype=np.uint8)
    x = resized(images, SIZE)
    exported = torch.jit.load(str(store["root"] / "encoder.pt"))
    with torch.no_grad():
        expected = raysl.load_encoder(MODEL, store["uri"])(x)
        np.testing.assert_allclose(exported(x).numpy(), expected.numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("args", "says"), [
    pytest.param(["embed", "models:/consumer-encoder/9", "--data", "images", "--out", "x.parquet"],
                 "MODEL='models:/consumer-encoder/9': not in the registry", id="missing-model"),
    pytest.param(["embed", MODEL, "--data", "no-such-folder", "--out", "x.parquet"],
                 "--data.path='no-such-folder'", id="missing-source"),
    pytest.param(["neighbours", "emb.parquet", "no-such.png", "--model", MODEL],
                 "no-such.png", id="missing-query"),
])
def test_bad_input_exits_2_with_one_line_naming_it(store, args, says):
    run = _raysl(*args, "--tracking-uri", store["uri"], cwd=store["root"])
    assert run.returncode == 2, (run.returncode, run.stderr[-3000:])
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    last = run.stderr.strip().splitlines()[-1]  # after any progress bar MLflow drew
    assert last.startswith("raysl: error:") and says in last, run.stderr[-3000:]
    assert not (store["root"] / "x.parquet").exists()
