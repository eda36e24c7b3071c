"""Hostile requests to the served model: refused by the limits, naming the limit and the value.

The pyfunc model is called directly (no Ray, no server): the HTTP service maps the same
``MlflowException`` to a 400 (``tests/serving/test_consumers.py`` runs a real server).
"""

import base64
import io
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from PIL import Image

from raysl import config as C
from raysl.nn.backbones import build_encoder
from raysl.serving.pyfunc import BATCH, EncoderModel

SIZE = 32


def _model(*overrides: str) -> EncoderModel:
    cfg = C.load(None, ["data.source.format=generated", f"data.image_size={SIZE}",
                        "data.channels=1", "model.width=8", "model.small_stem=true", *overrides])
    torch.manual_seed(0)
    model = EncoderModel()
    model.config = cfg
    model.encoder = build_encoder(cfg.model, 1, SIZE).eval()
    return model


@pytest.fixture(scope="module")
def model() -> EncoderModel:
    return _model()


def _file(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


def _refused(model: EncoderModel, rows: list[dict]) -> str:
    with pytest.raises(MlflowException) as e:
        model.predict(None, pd.DataFrame(rows))
    assert e.value.get_http_status_code() == 400
    return e.value.message


def test_the_defaults_are_documented_ones():
    t = C.TrackingConfig()
    assert (t.serve_max_rows, t.serve_max_image_pixels, t.serve_max_array_values) == (
        1024, 4096 * 4096, 1024 * 1024 * 3)
    with pytest.raises(C.ConfigError, match=r"tracking\.serve_max_rows=0"):
        _model("tracking.serve_max_rows=0")


def test_too_many_rows_are_refused_before_any_is_decoded(model):
    rows = [{"image": "not even base64 %%%"}] * 1025  # a decoded row would fail differently
    assert _refused(model, rows) == ("1,025 rows, more than tracking.serve_max_rows=1,024: "
                                     "send them in smaller requests")


def test_an_image_above_the_serving_cap_is_refused_from_its_header(model):
    # 4097 x 4097 pixels in a 1-bit PNG of about 2 kB.
    huge = _file(Image.new("1", (4097, 4097)))
    assert len(huge) < 10_000
    message = _refused(model, [{"image": _file(Image.new("L", (40, 40)))}, {"image": huge}])
    assert message == ("row 1: too_large (4097 x 4097 = 16,785,409 pixels, more than "
                       "16,777,216: tracking.serve_max_image_pixels)")
    # The training cap applies when it is the lower one, and names itself.
    strict = _model("data.max_image_pixels=1000")
    assert _refused(strict, [{"image": _file(Image.new("L", (40, 40)))}]) == (
        "row 0: too_large (40 x 40 = 1,600 pixels, more than 1,000: data.max_image_pixels)")


def test_a_pixels_array_above_the_cap_is_refused_before_numpy_copies_it(model):
    # 1025 x 1024 x 3 values: the lists share their rows, so the request itself is small;
    # NumPy would make 25 MB of int64 of it.
    row = [[0, 0, 0]] * 1024
    pixels = [row] * 1025
    tracemalloc.start()
    try:
        message = _refused(model, [{"pixels": pixels}])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert message == ("row 0: too_large (a 1025 x 1024 x 3 array = 3,148,800 values, more "
                       "than 3,145,728: tracking.serve_max_array_values)")
    assert peak < 2 * 2**20
    # Deeper than (H, W, C) is not an image, whatever its size.
    assert "not_an_image" in _refused(model, [{"pixels": [[[[0]] * 3] * 8] * 8}])


def test_formats_raysl_does_not_list_are_refused(model):
    eps = base64.b64encode(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n"
                           b"showpage\n%%EOF\n").decode()
    for image in (eps, _file(Image.new("L", (16, 16)), "PCX")):
        assert _refused(model, [{"image": image}]).startswith("row 0: not_an_image (not a PNG, "
                                                              "JPEG, WebP, BMP, TIFF or GIF")


def test_a_16bit_image_under_the_cap_is_embedded(model):
    ramp = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    eight = np.rint(ramp / 257).astype(np.uint8)[..., None]
    got = model.predict(None, pd.DataFrame([{"image": _file(Image.fromarray(ramp))}]))
    expected = model.predict(None, pd.DataFrame([{"pixels": eight.tolist()}]))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_rows_beyond_a_batch_are_embedded_in_batches_with_their_own_indices(model):
    rng = np.random.default_rng(0)
    rows = [{"pixels": rng.integers(0, 255, (12, 12, 1)).tolist()} for _ in range(BATCH + 3)]
    got = model.predict(None, pd.DataFrame(rows))
    assert got.shape == (BATCH + 3, model.encoder.num_features)
    np.testing.assert_allclose(got[-3:], model.predict(None, pd.DataFrame(rows[-3:])),
                               rtol=1e-4, atol=1e-5)
    rows[BATCH + 1] = {"pixels": [[[300]] * 12] * 12}
    assert _refused(model, rows).startswith(f"row {BATCH + 1}: not_an_image")
