"""The registered encoder as an MLflow pyfunc model: images in, embeddings out, nothing unpickled.

MLflow logs ``model_code.py`` as the model's code ("models from code"), with the encoder's
weights (``encoder.pt``, a state dict) and its pretraining config (``config.yaml``) as artifacts
and raysl's source as code. Loading it imports raysl, rebuilds the encoder from the config and loads
the weights with ``weights_only=True``: no model object is unpickled, so
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`` consumers can load it.

Input (a DataFrame, or JSON ``dataframe_records`` when served), one image a row, in one of
two columns (one kind a request: MLflow's schema check refuses a row missing a column that other
rows have):

- ``image``: a PNG, JPEG, WebP, BMP, TIFF or GIF file, base64-encoded (raw bytes also in
  Python);
- ``pixels``: a uint8 array (H, W, C) as nested lists (grayscale: C = 1).

Either colour mode, and any size up to the request limits: each image is converted to the
encoder's channels and taken to its pretraining size as evaluation takes images
(:func:`raysl.eval.features.resized`: the shorter side resized, the centre kept; an image
already at that size is the encoder's input pixel for pixel), so a row embeds as
``raysl.load_encoder`` and ``raysl embed`` embed the same pixels. Output: one embedding
(D floats) a row. A row that is not an image is refused with its index and the
reason (HTTP 400 when served).

Requests are untrusted. Image files are decoded as training decodes them (only the formats
raysl lists; see :mod:`raysl.data.decode`), and a request is refused, naming the limit and the
value, with more than ``tracking.serve_max_rows`` rows, an image of more than
``tracking.serve_max_image_pixels`` pixels (or ``data.max_image_pixels``, if lower), or a
``pixels`` array of more than ``tracking.serve_max_array_values`` values, measured before
NumPy copies it. Rows are decoded and embedded :data:`BATCH` at a time.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc.model import PythonModel

from raysl.checkpoint import load_strict
from raysl.config import Config
from raysl.data.decode import BadImage, decode_image, square_pixels
from raysl.eval.features import resized
from raysl.nn.backbones import Encoder, build_encoder

WEIGHTS, CONFIG = "weights", "config"  # the artifacts' keys
BATCH = 256  # images per forward pass


class EncoderModel(PythonModel):
    """The pyfunc face of a raysl encoder (see the module docstring)."""

    encoder: Encoder
    config: Config

    def load_context(self, context: Any) -> None:
        """Rebuild the encoder from ``config.yaml`` and load ``encoder.pt`` weights-only."""
        with open(context.artifacts[CONFIG]) as f:
            self.config = Config.from_dict(yaml.safe_load(f))
        data = self.config.data
        self.encoder = build_encoder(self.config.model, data.channels, data.image_size).eval()
        load_strict(self.encoder, context.artifacts[WEIGHTS])
        torch.set_num_threads(max(1, torch.get_num_threads()))

    # A DataFrame hint: MLflow infers no schema from it (the logged signature is the schema).
    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> np.ndarray:
        """(N,) images -> (N, D) float32 embeddings.

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE naming the limit a request exceeds, or
                the first bad row and why.
        """
        frame = model_input if isinstance(model_input, pd.DataFrame) else \
            pd.DataFrame(model_input)
        limits = RequestLimits.of(self.config)
        if len(frame) > limits.rows:
            raise MlflowException(f"{len(frame):,} rows, more than tracking.serve_max_rows="
                                  f"{limits.rows:,}: send them in smaller requests",
                                  error_code=INVALID_PARAMETER_VALUE)
        out = []
        with torch.no_grad():
            for start in range(0, len(frame), BATCH):
                images = prepare_rows(frame.iloc[start:start + BATCH], self.config, limits,
                                      first=start)
                x = resized(images, self.config.data.image_size)
                out.append(self.encoder(x).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.encoder.num_features),
                                                         np.float32)


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask (``tracking.serve_*``), with the field that sets each limit."""

    rows: int
    image_pixels: int
    image_field: str  # the lower of the two pixel caps names itself in the refusal
    array_values: int

    @classmethod
    def of(cls, cfg: Config) -> RequestLimits:
        """The limits ``cfg`` (the registered model's pretraining config) sets."""
        t, d = cfg.tracking, cfg.data
        image_pixels, image_field = min((t.serve_max_image_pixels,
                                         "tracking.serve_max_image_pixels"),
                                        (d.max_image_pixels, "data.max_image_pixels"))
        return cls(t.serve_max_rows, image_pixels, image_field, t.serve_max_array_values)


def prepare_rows(model_input: Any, cfg: Config, limits: RequestLimits, first: int = 0
                 ) -> np.ndarray:
    """The rows' images as (N, S, S, C) uint8 at the encoder's size S (see :func:`resized`).

    Args:
        model_input: the rows (a DataFrame, or what makes one).
        cfg: the registered model's pretraining config.
        limits: what one image may cost.
        first: the index of the first row in the request, for messages.

    Raises:
        MlflowException: a row with no image, or one that is not an image or is too large.
    """
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    data = cfg.data
    size = data.image_size
    out = np.empty((len(frame), size, size, data.channels), np.uint8)
    for i, row in enumerate(frame.to_dict("records")):
        try:
            out[i] = _prepare(row, data.channels, size, data.min_image_side, limits)
        except BadImage as e:
            why = e.detail or _REASONS.get(e.reason, "")
            raise MlflowException(f"row {first + i}: {e.reason} ({why})",
                                  error_code=INVALID_PARAMETER_VALUE) from None
    return out


_REASONS = {"missing": "the row has neither an 'image' nor a 'pixels' value",
            "not_base64": "'image' is not base64 text of an image file",
            "empty": "zero bytes", "not_an_image": "not a PNG, JPEG, WebP, BMP, TIFF or GIF "
            "file, nor an (H, W, C) uint8 array",
            "truncated": "the image data ends early",
            "corrupt": "the image data cannot be decoded",
            "too_small": "a side is too short", "too_large": "too many pixels"}


def _prepare(row: dict[str, Any], channels: int, size: int, min_side: int,
             limits: RequestLimits) -> np.ndarray:
    image, pixels = row.get("image"), row.get("pixels")
    if _given(image):
        data = bytes(image) if isinstance(image, bytes | bytearray) else _base64(str(image))
        try:
            return decode_image(data, channels, size, limits.image_pixels, min_side)
        except BadImage as e:
            if e.reason != "too_large":
                raise
            raise BadImage(e.reason, f"{e.detail}: {limits.image_field}") from None
    if _given(pixels):
        return square_pixels(_array(pixels, limits.array_values), channels, size, min_side)
    raise BadImage("missing")


def _array(pixels: Any, max_values: int) -> np.ndarray:
    """``pixels`` (nested lists, or an array) as an array, sized before NumPy copies it.

    Nested lists are sized by their first elements; lists longer further on are ragged, which
    NumPy refuses.
    """
    shape = _nested_shape(pixels)
    if len(shape) > 3:
        raise BadImage("not_an_image", f"a {len(shape)}-D array; (H, W, C) or (H, W) expected")
    values = math.prod(shape)
    if values > max_values:
        raise BadImage("too_large", f"a {' x '.join(map(str, shape))} array = {values:,} "
                                    f"values, more than {max_values:,}: "
                                    "tracking.serve_max_array_values")
    try:
        return np.asarray(pixels)
    except ValueError:  # ragged lists
        raise BadImage("not_an_image") from None


def _nested_shape(value: Any) -> tuple[int, ...]:
    """The shape nested lists claim by their first elements (4 levels at most), or an array's."""
    shape: list[int] = []
    while len(shape) < 4:
        if isinstance(value, np.ndarray):
            return (*shape, *value.shape)
        if not isinstance(value, list | tuple) or not value:
            break
        shape.append(len(value))
        value = value[0]
    return tuple(shape)


def _base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadImage("not_base64") from None


def _given(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float):
        return not np.isnan(value)  # pandas fills a missing column with NaN
    return True
