"""The registered encoder as an MLflow pyfunc model: images in, embeddings out, nothing unpickled.

MLflow logs ``model_code.py`` as the model's code ("models from code"), with the encoder's
weights (``encoder.pt``, a state dict) and its pretraining config (``config.yaml``) as artifacts
and raysl's source as code. Loading it imports raysl, rebuilds the encoder from the config and loads
the weights with ``weights_only=True``: no model object is unpickled, so
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`` consumers can load it.

Input (a DataFrame, or JSON ``dataframe_records`` when served), one image a row, in one of
two columns (one kind a request: MLflow's schema check refuses a row missing a column that other
rows have):

- ``image``: an encoded PNG/JPEG/WebP/... file, base64-encoded (raw bytes also in Python);
- ``pixels``: a uint8 array (H, W, C) as nested lists (grayscale: C = 1).

Any size and either colour mode: each image is prepared as the encoder's evaluation saw its
images (converted to its channels, the shorter side resized to the pretraining decode size,
the centre kept, resized to the pretraining size). Output: one embedding (D floats) a row. A
row that is not an image is refused with its index and the reason (HTTP 400 when served).
"""

from __future__ import annotations

import base64
import binascii
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
            MlflowException: INVALID_PARAMETER_VALUE naming the first bad row and why.
        """
        images = prepare_rows(model_input, self.config)
        out = []
        with torch.no_grad():
            for start in range(0, len(images), BATCH):
                x = resized(images[start:start + BATCH], self.config.data.image_size)
                out.append(self.encoder(x).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.encoder.num_features),
                                                         np.float32)


def prepare_rows(model_input: Any, cfg: Config) -> np.ndarray:
    """The rows' images as (N, S, S, C) uint8 at the decode size.

    Raises:
        MlflowException: a row with no image, or one that is not an image.
    """
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    data = cfg.data
    size = data.effective_decode_size
    out = np.empty((len(frame), size, size, data.channels), np.uint8)
    for i, row in enumerate(frame.to_dict("records")):
        try:
            out[i] = _prepare(row, data.channels, size, data.max_image_pixels,
                              data.min_image_side)
        except BadImage as e:
            raise MlflowException(f"row {i}: {e.reason} ({_REASONS.get(e.reason, '')})",
                                  error_code=INVALID_PARAMETER_VALUE) from None
    return out


_REASONS = {"missing": "the row has neither an 'image' nor a 'pixels' value",
            "not_base64": "'image' is not base64 text of an image file",
            "empty": "zero bytes", "not_an_image": "not an image file, nor an (H, W, C) uint8 "
            "array", "truncated": "the image data ends early",
            "corrupt": "the image data cannot be decoded",
            "too_small": "a side is too short", "too_large": "too many pixels"}


def _prepare(row: dict[str, Any], channels: int, size: int, max_pixels: int, min_side: int
             ) -> np.ndarray:
    image, pixels = row.get("image"), row.get("pixels")
    if _given(image):
        data = bytes(image) if isinstance(image, bytes | bytearray) else _base64(str(image))
        return decode_image(data, channels, size, max_pixels, min_side)
    if _given(pixels):
        try:
            array = np.asarray(pixels)
        except ValueError:  # ragged lists
            raise BadImage("not_an_image") from None
        return square_pixels(array, channels, size, min_side)
    raise BadImage("missing")


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
