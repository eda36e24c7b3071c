"""``raysl curate`` on a folder of PNG files, then pretraining on the list it writes.

The command runs as the console script runs it (``raysl.cli.main`` with its flags, in this
process: the session's Ray, and no second start-up to wait for), with a tiny registered encoder
(``tests/serving/registered.py``); the folder has class sub-folders (labels, which only the
report shows), planted exact copies (the same bytes under another name) and near copies (one
pixel changed). Its ``selection.txt`` then feeds ``pretrain`` as ``data.source.path``.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from raysl import config as C
from raysl.cli import main
from tests.serving.registered import NAME, SIZE, register_tiny_encoder

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]

CLASSES, PER_CLASS, EXACT, NEAR, TARGET = 4, 30, 6, 4, 48


def _raysl(*args: str, cwd: Path) -> tuple[int, str, str]:
    """``raysl ARGS`` in ``cwd``: exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(args))
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> dict:
    """A registered encoder, the folder, and ``raysl curate``'s run on it."""
    registered = register_tiny_encoder(tmp_path_factory.mktemp("curate"))
    root = registered["root"]
    rng = np.random.default_rng(0)
    originals = []
    for c in range(CLASSES):
        (root / "pool" / f"class_{c}").mkdir(parents=True)
        for i in range(PER_CLASS):  # smooth blobs: distinct images, not noise
            y, x = np.mgrid[:SIZE, :SIZE]
            cy, cx, r = [*rng.uniform(4, SIZE - 4, 2).tolist(), rng.uniform(2, 10)]
            image = (255 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r)) * (c + 1) / 4)
            path = root / "pool" / f"class_{c}" / f"{i:03d}.png"
            Image.fromarray(image.astype(np.uint8)).save(path)
            originals.append(path)
    for k in range(EXACT):  # the same bytes under another name
        source = originals[5 * k]
        (source.parent / f"copy{k}.png").write_bytes(source.read_bytes())
    for k in range(NEAR):  # one pixel changed
        pixels = np.array(Image.open(originals[5 * k + 2]))
        pixels[0, 0] = pixels[0, 0] ^ 1
        Image.fromarray(pixels).save(originals[5 * k + 2].parent / f"near{k}.png")
    run = _raysl("curate", str(root / "pool"), "--model", f"models:/{NAME}@champion",
                 "--out", "curated", "--target", str(TARGET), "--near", "0.9995",
                 "--clusters", "8,3", "--iters", "5", "--block-rows", "50",
                 "--tracking-uri", registered["uri"], cwd=root)
    return {**registered, "run": run, "out": root / "curated"}


def test_curate_writes_a_balanced_selection_without_duplicates(curated):
    status, stdout, stderr = curated["run"]
    assert status == 0, stderr[-3000:]
    report = json.loads((curated["out"] / "report.json").read_text())
    assert report["embedded"] == CLASSES * PER_CLASS + EXACT + NEAR
    assert report["removed"]["exact"] == EXACT and report["removed"]["near"] >= NEAR
    assert f"removed {EXACT} exact and" in stdout
    selected = (curated["out"] / "selection.txt").read_text().splitlines()
    assert len(selected) == report["selected"] == TARGET == len(set(selected))
    assert all(Path(p).is_file() for p in selected)
    assert len({Path(p).read_bytes() for p in selected}) == TARGET  # no exact copy twice
    assert sum(report["top_after"]) == TARGET and len(report["top_before"]) == 3
    # The labels are only reported: every class before and after.
    assert sum(report["classes_before"].values()) == report["clustered"]
    assert sum(report["classes_after"].values()) == TARGET
    assert (curated["out"] / "report.png").read_bytes()[:4] == b"\x89PNG"
    client = MlflowClient(curated["uri"])
    run_id = stdout.split("MLflow run ")[1].split()[0]
    assert client.get_run(run_id).data.metrics["curate/selected"] == TARGET
    assert {a.path for a in client.list_artifacts(run_id, "curate")} == {
        "curate/report.json", "curate/report.png"}


def test_pretrain_trains_on_the_selection(curated, tmp_path, monkeypatch):
    from raysl.pretrain import pretrain

    monkeypatch.chdir(tmp_path)
    selection = curated["out"] / "selection.txt"
    assert curated["run"][0] == 0, curated["run"][2][-3000:]
    cfg = C.load(None, [f"data.source.path={selection}", f"data.image_size={SIZE}",
                        "data.channels=1", "data.batch_size_global=16", "model.width=8",
                        "model.small_stem=true", "train.epochs=1", "train.num_workers=1",
                        "optim.warmup_epochs=0", "eval.enabled=false", "eval.monitor_every=0",
                        "tracking.register=false", f"train.storage_path={tmp_path / 'rr'}",
                        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    result = pretrain(cfg)
    assert np.isfinite(result.final_loss)
    metrics = MlflowClient(result.tracking_uri).get_run(result.mlflow_run_id).data.metrics
    assert metrics["data/images"] == TARGET


def test_bad_input_exits_2_naming_the_flag(curated):
    status, _, stderr = _raysl("curate", str(curated["root"] / "pool"), "--model",
                               f"models:/{NAME}@champion", "--out", "other", "--target", "0",
                               "--tracking-uri", curated["uri"], cwd=curated["root"])
    assert status == 2 and stderr.strip().splitlines() == [
        "raysl: error: --target=0: must be >= 1 (images to select)"]
    # images that are not files: nothing a file list could name
    np.savez(curated["root"] / "arrays.npz", x=np.zeros((4, 8, 8), np.uint8))
    status, _, stderr = _raysl("curate", "arrays.npz", "--model", f"models:/{NAME}@champion",
                               "--out", "other", "--target", "2", "--write", "list",
                               "--tracking-uri", curated["uri"], cwd=curated["root"])
    assert status == 2 and stderr.strip().splitlines() == [
        "raysl: error: --write=list: the source's images are not files (a npz source), so no "
        "file list can name them; use --write tar or parquet (shards of the selected images)"]
    # shards written into their own source: refused before anything is embedded
    status, stdout, stderr = _raysl("curate", "pool", "--model", f"models:/{NAME}@champion",
                                    "--out", "pool/curated", "--target", "2", "--write", "tar",
                                    "--tracking-uri", curated["uri"], cwd=curated["root"])
    assert status == 2 and "overlaps the source 'pool'" in stderr and "embedding" not in stdout


def test_an_array_source_is_curated_into_shards_pretrain_reads(curated):
    """An npz of the pool's images with planted exact copies: its selection, as tar shards."""
    from raysl.data.ledger import DecodePolicy
    from raysl.data.source import Reading, read_source, to_numpy

    files = sorted((curated["root"] / "pool").glob("class_*/[0-9]*.png"))[::2]
    images = np.stack([np.array(Image.open(f)) for f in files])
    labels = np.array([int(f.parent.name.split("_")[1]) for f in files])
    pool = np.concatenate([images, images[:EXACT]])  # EXACT copies of the first images
    np.savez(curated["root"] / "pool.npz", x=pool, y=np.concatenate([labels, labels[:EXACT]]))
    status, stdout, stderr = _raysl(
        "curate", "pool.npz", "--model", f"models:/{NAME}@champion", "--out", "arrays",
        "--target", "24", "--clusters", "6,2", "--iters", "5", "--tracking-uri",
        curated["uri"], cwd=curated["root"])
    assert status == 0, stderr[-3000:]
    out = curated["root"] / "arrays" / "selection"
    assert f"data.source.path={out}" in stdout and "24 images in shards" in stdout
    assert json.loads((out.parent / "report.json").read_text())["removed"]["exact"] == EXACT
    read = read_source(C.SourceConfig(path=str(out)),
                       Reading(1, SIZE, DecodePolicy("skip", 1.0, 10**8, 1)), 0)
    chosen, chosen_labels = to_numpy(read)
    assert len(chosen) == 24 == len({x.tobytes() for x in chosen})  # no copy twice
    by_pixels = {x.tobytes(): int(y) for x, y in zip(images, labels, strict=True)}
    assert all(by_pixels[x[..., 0].tobytes()] == y  # each a pool image, with its label
               for x, y in zip(chosen, chosen_labels, strict=True))
