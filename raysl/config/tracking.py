"""MLflow tracking and model registry (``tracking``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking and model registry."""

    tracking_uri: str = ""  # empty = $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment: str = "raysl"
    registered_model: str = ""  # empty = raysl-<method>-<backbone>
    register: bool = True

