"""raysl: self-supervised pretraining of image encoders on Ray, registered in MLflow.

For consumers: ``raysl.load_encoder("models:/NAME@champion")`` returns the encoder as a torch
module (weights loaded with ``weights_only=True``); nothing else is imported until asked for.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    """``raysl.load_encoder``, imported on first use (it needs MLflow, not Ray)."""
    if name == "load_encoder":
        from raysl.serving.models import load_encoder

        return load_encoder
    raise AttributeError(f"module 'raysl' has no attribute {name!r}")
