"""Registry consumers: safe loading, the HTTP embedding service, batch embedding, exports."""

import base64
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

import raysl
from raysl.config import SourceConfig
from raysl.data.decode import decode_image, square_pixels
from raysl.errors import DataError
from raysl.eval.features import resized
from raysl.serving.models import load_model
from raysl.tracking.model_registry import WEIGHTS_TAG, run_lineage_tags, source_commit
from tests.processes import free_port, start_server, stop, wait_for_url
from tests.serving.registered import SIZE, register_tiny_encoder

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


def _png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An MLflow store with a version registered the current way (pyfunc) and an encoder."""
    return register_tiny_encoder(tmp_path_factory.mktemp("consumers"))


def _expected(encoder, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return encoder(resized(images, SIZE)).numpy()


def test_load_encoder_and_pyfunc_load_without_unpickling(store):
    encoder = raysl.load_encoder("models:/consumer-encoder@champion", store["uri"])
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(),
                                                 store["encoder"].state_dict().values(),
                                                 strict=True))
    # A fresh process where unpickling anything with cloudpickle or pickle's loaders raises.
    code = (
        "import pickle, cloudpickle\n"
        "def refuse(*a, **k): raise RuntimeError('unpickled')\n"
        "pickle.load = pickle.loads = cloudpickle.load = cloudpickle.loads = refuse\n"
        "import numpy as np, pandas as pd, mlflow.pyfunc, raysl\n"
        "m = mlflow.pyfunc.load_model('models:/consumer-encoder@champion')\n"
        "x = np.arange(40 * 30, dtype=np.uint8).reshape(40, 30, 1)\n"
        "print(m.predict(pd.DataFrame({'pixels': [x.tolist()]})).tolist())\n"
        "e = raysl.load_encoder('models:/consumer-encoder/1')\n"
        "print(type(e).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=180, cwd="/",
                         env={**os.environ, "MLFLOW_TRACKING_URI": store["uri"],
                              "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"})
    assert out.returncode == 0, out.stderr[-3000:]
    got = np.array(json.loads(out.stdout.splitlines()[-2]))
    pixels = np.arange(40 * 30, dtype=np.uint8).reshape(40, 30, 1)
    expected = _expected(store["encoder"], pixels[None])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert out.stdout.splitlines()[-1] == "Encoder"


def test_the_embedding_service_answers_over_http(store):
    port = free_port()
    log = store["root"] / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"],
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    server = start_server([str(Path(sys.executable).parent / "mlflow"), "models", "serve",
                           "-m", "models:/consumer-encoder@champion", "-h", "127.0.0.1", "-p",
                           str(port), "--env-manager", "local"], log, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_url(f"{url}/ping", "mlflow models serve", server, log, timeout=180)
        rng = np.random.default_rng(0)
        colour = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)  # any size, colour
        gray = rng.integers(0, 255, (64, 64), dtype=np.uint8)
        pixels = rng.integers(0, 255, (20, 24, 1), dtype=np.uint8)
        files = [{"image": base64.b64encode(_png(colour)).decode()},
                 {"image": base64.b64encode(_png(gray, "JPEG")).decode()}]
        got = []
        for rows in (files, [{"pixels": pixels.tolist()}]):  # one kind of input a request
            status, body = _post(url, {"dataframe_records": rows})
            assert status == 200, body
            got += json.loads(body)["predictions"]
        prepared = np.stack([decode_image(_png(colour), 1, SIZE),
                             decode_image(_png(gray, "JPEG"), 1, SIZE),
                             square_pixels(pixels, 1, SIZE)])
        np.testing.assert_allclose(np.array(got), _expected(store["encoder"], prepared),
                                   rtol=1e-4, atol=1e-5)
        # Bad images are the client's error, with the reason: 400, never 500.
        for bad, reason in ([{"image": base64.b64encode(b"not an image").decode()}],
                            "not_an_image"), ([{"image": "%%%"}], "not_base64"), (
                [{"pixels": [[[300], [1]], [[2], [3]]]}], "not_an_image"):
            status, body = _post(url, {"dataframe_records": bad})
            assert status == 400 and reason in body, (status, body)
    finally:
        stop(server)


def _post(url: str, payload: dict) -> tuple[int, str]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_embed_a_folder_and_find_neighbours(store, tmp_path):
    from raysl.serving.embed import embed, neighbours

    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (tmp_path / "images" / c).mkdir(parents=True)
        for i in range(12):
            (tmp_path / "images" / c / f"{i}.png").write_bytes(
                _png(rng.integers(0, 255, (40, 40), dtype=np.uint8)))
    (tmp_path / "images" / "b" / "bad.png").write_bytes(b"no")
    model = load_model("models:/consumer-encoder/1", store["uri"])
    result = embed(model, SourceConfig(path=str(tmp_path / "images")),
                   str(tmp_path / "emb.parquet"), log=lambda _: None)
    assert result.rows == 24 and result.dim == 64 and result.skipped == {"not_an_image": 1}
    table = pq.read_table(tmp_path / "emb.parquet")
    assert set(table.column_names) == {"index", "path", "label", "embedding"}
    assert sorted(table.column("label").to_pylist()) == [0] * 12 + [1] * 12
    query = tmp_path / "images" / "a" / "3.png"
    found = neighbours(model, str(tmp_path / "emb.parquet"), [str(query)], k=3)[0]
    assert found[0].path == str(query) and found[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert [n.rank for n in found] == [1, 2, 3] and found[1].similarity <= found[0].similarity


def test_embed_into_a_folder_again_needs_overwrite_and_never_mixes_runs(store, tmp_path):
    from raysl.serving.embed import embed, neighbours

    rng = np.random.default_rng(2)
    (tmp_path / "images").mkdir()
    for i in range(10):
        (tmp_path / "images" / f"{i}.png").write_bytes(
            _png(rng.integers(0, 255, (40, 40), dtype=np.uint8)))
    model = load_model("models:/consumer-encoder/1", store["uri"])
    out, source = tmp_path / "emb", SourceConfig(path=str(tmp_path / "images"))
    embed(model, source, str(out), log=lambda _: None)
    (tmp_path / "images" / "9.png").unlink()  # the data changed: a re-run embeds 9 images
    with pytest.raises(DataError, match="the folder exists; pass --overwrite"):
        embed(model, source, str(out), log=lambda _: None)
    result = embed(model, source, str(out), log=lambda _: None, overwrite=True)
    assert result.rows == 9 and sorted(p.name for p in out.iterdir()) == [
        "_manifest.json", "part-00000.parquet"]  # the old run's files are gone
    stray = out / "part-00007.parquet"  # a file the output's manifest does not name
    stray.write_bytes((out / "part-00000.parquet").read_bytes())
    found = neighbours(model, str(out), [str(tmp_path / "images" / "3.png")], k=20)[0]
    assert len(found) == 9  # neighbours reads the manifest's files only
    stray.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb", "images"]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exports_compute_what_the_encoder_computes(store, tmp_path, fmt):
    from raysl.serving.export import export, log_to_version

    model = load_model("models:/consumer-encoder/1", store["uri"])
    out = tmp_path / f"encoder.{'pt' if fmt == 'torchscript' else 'onnx'}"
    result = export(model, fmt, str(out))
    assert out.exists() and result.max_abs_diff < 1e-4 and "images" in result.images
    artifact = log_to_version(MlflowClient(store["uri"]), model, result)
    version = MlflowClient(store["uri"]).get_model_version("consumer-encoder", "1")
    assert version.tags[f"export.{fmt}"] == artifact == f"exports/{out.name}"


def test_versions_registered_in_the_old_pickle_format_load_and_register_again(store):
    from raysl.cli import main

    mlflow.set_tracking_uri(store["uri"])
    with mlflow.start_run(run_id=store["run_id"]):
        info = mlflow.pytorch.log_model(store["encoder"], name="old",
                                        serialization_format="pickle",
                                        registered_model_name="old-format")
    client = MlflowClient(store["uri"])
    client.set_model_version_tag("old-format", str(info.registered_model_version), WEIGHTS_TAG,
                                 store["weights"])
    encoder = raysl.load_encoder("models:/old-format/1", store["uri"])  # weights, not a pickle
    assert torch.equal(encoder.state_dict()["mean"], store["encoder"].state_dict()["mean"])
    for key, value in run_lineage_tags("sha256:0123").items():  # as pretrain tags its run
        client.set_tag(store["run_id"], key, value)
    assert main(["register", "models:/old-format/1", "--tracking-uri", store["uri"]]) == 0
    again = client.get_model_version("old-format", "2")
    assert again.tags["raysl.registered_from"] == "models:/old-format/1"
    # The lineage is the training run's, not that of the code registering it again.
    assert again.tags["data.fingerprint"] == "sha256:0123"
    assert again.tags["raysl.commit"] == source_commit()
    mlmodel = Path(mlflow.artifacts.download_artifacts("models:/old-format/2")) / "MLmodel"
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in mlmodel.read_text()


def _skew_images() -> dict[str, np.ndarray]:
    """Images of several sizes, by name: (H, W, C) uint8, gray ones also as RGB (the same gray)."""
    rng = np.random.default_rng(3)
    gray = {"exact": (SIZE, SIZE), "larger": (64, 64), "wide": (50, 70), "smaller": (20, 24)}
    images = {name: rng.integers(0, 256, (*shape, 1), dtype=np.uint8)
              for name, shape in gray.items()}
    images["exact_rgb"] = np.repeat(images["exact"], 3, axis=-1)  # converts back to exactly it
    images["wide_rgb"] = np.repeat(images["wide"], 3, axis=-1)
    return images


def test_the_pyfunc_embed_and_load_encoder_see_the_same_pixels_alike(store, tmp_path):
    """No train/serve skew: one embedding per image, however it reaches the encoder."""
    import mlflow.pyfunc
    import pandas as pd

    from raysl.serving.embed import embed

    images = _skew_images()
    encoder = raysl.load_encoder("models:/consumer-encoder/1", store["uri"])
    with torch.no_grad():  # the evaluation's preprocessing, then the encoder
        expected = {name: encoder(resized(image[..., :1][None], SIZE))[0].numpy()
                    for name, image in images.items()}
        # An image already at the encoder's size and channels is its input, pixel for pixel.
        raw = torch.from_numpy(images["exact"]).permute(2, 0, 1)[None].float() / 255
        np.testing.assert_allclose(expected["exact"], encoder(raw)[0].numpy(), atol=1e-6)

    mlflow.set_tracking_uri(store["uri"])
    pyfunc = mlflow.pyfunc.load_model("models:/consumer-encoder/1")
    names = list(images)
    as_pixels = pyfunc.predict(pd.DataFrame({"pixels": [images[n].tolist() for n in names]}))
    as_files = pyfunc.predict(pd.DataFrame(
        {"image": [base64.b64encode(_png(images[n].squeeze(-1) if images[n].shape[-1] == 1
                                         else images[n])).decode() for n in names]}))
    (tmp_path / "images").mkdir()
    for n in names:
        image = images[n]
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(
            tmp_path / "images" / f"{n}.png")
    embed(load_model("models:/consumer-encoder/1", store["uri"]),
          SourceConfig(path=str(tmp_path / "images")), str(tmp_path / "emb.parquet"),
          log=lambda _: None)
    table = pq.read_table(tmp_path / "emb.parquet").to_pylist()
    embedded = {Path(row["path"]).stem: np.array(row["embedding"]) for row in table}
    # An arrays source (the evaluation reads these as they are): the exact and the larger size.
    for n in ("exact", "larger"):
        np.savez(tmp_path / f"{n}.npz", images=images[n][None].repeat(2, axis=0))
        embed(load_model("models:/consumer-encoder/1", store["uri"]),
              SourceConfig(path=str(tmp_path / f"{n}.npz")), str(tmp_path / f"{n}.parquet"),
              log=lambda _: None)
        embedded[f"{n}.npz"] = np.array(
            pq.read_table(tmp_path / f"{n}.parquet").column("embedding").to_pylist()[0])
    for i, n in enumerate(names):
        for how, got in (("pixels", as_pixels[i]), ("file", as_files[i]),
                         ("raysl embed", embedded[n])):
            np.testing.assert_allclose(got, expected[n], atol=1e-5, rtol=0,
                                       err_msg=f"{n} {images[n].shape} as {how}")
    for n in ("exact", "larger"):
        np.testing.assert_allclose(embedded[f"{n}.npz"], expected[n], atol=1e-5, rtol=0,
                                   err_msg=f"{n} in an arrays source")
