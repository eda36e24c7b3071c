"""``raysl export``: a registered encoder as TorchScript or ONNX, checked against the original.

The exported graph takes float32 images (B, C, S, S) in [0, 1] at the pretraining size S (the
normalisation is inside, as in the registered model) and returns (B, D) embeddings; the batch
size is free. Before the file is kept, the export and the PyTorch encoder embed the same real
images (the model's own training data when it can be read here, else generated shapes) and the
largest absolute difference is reported; an export that differs by more than ``tolerance`` is
refused.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from raysl.data import generated
from raysl.data.source import Reading, read_source, to_channels, to_numpy
from raysl.errors import DataError, ExportError
from raysl.eval.features import resized
from raysl.serving.models import LoadedModel

FORMATS = ("torchscript", "onnx")
CHECK_IMAGES = 64
ONNX_OPSET = 17


@dataclass(frozen=True)
class ExportResult:
    """Where the export is and how close it is to the encoder."""

    path: str
    format: str
    max_abs_diff: float
    images: str  # what it was checked on
    artifact: str = ""  # the version's artifact path, when logged


def export(model: LoadedModel, fmt: str, out: str, tolerance: float = 1e-3) -> ExportResult:
    """Write ``model``'s encoder to ``out`` in ``fmt`` and check it on real images.

    Raises:
        ValueError: an unknown format.
        ExportError: the exporter is not installed, or the export differs from the encoder.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format={fmt!r}: must be one of {list(FORMATS)}")
    encoder = model.encoder.cpu().eval()
    images, what = check_images(model)
    x = resized(images, model.config.data.image_size)
    with torch.no_grad():
        expected = encoder(x).numpy()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(encoder, x[:2])  # type: ignore[no-untyped-call]
        traced.save(out)
        with torch.no_grad():
            got = torch.jit.load(out)(x).numpy()  # type: ignore[no-untyped-call]
    else:
        got = _onnx(encoder, x, out)
    diff = float(np.abs(got - expected).max())
    if diff > tolerance:
        Path(out).unlink(missing_ok=True)
        raise ExportError(f"the {fmt} export differs from the encoder by up to {diff:.2e} "
                          f"(> {tolerance:g}) on {what}: not kept")
    return ExportResult(out, fmt, diff, what)


def _onnx(encoder: torch.nn.Module, x: torch.Tensor, out: str) -> np.ndarray:
    """Export with a free batch size; the embeddings onnxruntime computes for ``x``."""
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"ONNX export needs {missing}: pip install 'raysl[export]' (onnx, "
                          "onnxruntime)")
    import onnxruntime

    torch.onnx.export(encoder, (x[:2],), out, input_names=["images"],
                      output_names=["embeddings"], opset_version=ONNX_OPSET, dynamo=False,
                      dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}})
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run(["embeddings"], {"images": x.numpy()})[0]
    return result


def check_images(model: LoadedModel) -> tuple[np.ndarray, str]:
    """Up to 64 real images the encoder takes: its training data if readable, else shapes."""
    data = model.config.data
    try:
        source = read_source(dataclasses.replace(data.source, limit=CHECK_IMAGES),
                             Reading(data.channels, data.image_size))
        images, _ = to_numpy(source)
        return images[:CHECK_IMAGES], f"{len(images[:CHECK_IMAGES])} images of {source.description}"
    except (DataError, OSError):
        x, _ = generated.shapes(CHECK_IMAGES, size=data.image_size, seed=0)
        return to_channels(x, data.channels), f"{CHECK_IMAGES} generated shapes"


def log_to_version(client: MlflowClient, model: LoadedModel, result: ExportResult) -> str:
    """Log the export to the version's run (``exports/``) and tag the version with its path.

    Raises:
        ExportError: the model is not a registered version.
    """
    if not model.registered_name or not model.run_id:
        raise ExportError("--log needs a registered version (models:/NAME/VERSION or "
                          "models:/NAME@ALIAS)")
    client.log_artifact(model.run_id, result.path, "exports")
    artifact = f"exports/{Path(result.path).name}"
    client.set_model_version_tag(model.registered_name, model.registered_version,
                                 f"export.{result.format}", artifact)
    client.set_model_version_tag(model.registered_name, model.registered_version,
                                 f"export.{result.format}.max_abs_diff",
                                 f"{result.max_abs_diff:.2e}")
    return artifact
