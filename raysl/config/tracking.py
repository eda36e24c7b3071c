"""MLflow tracking and model registry (``tracking``)."""

from __future__ import annotations

from dataclasses import dataclass

from raysl.config.errors import check


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking and model registry."""

    tracking_uri: str = ""  # empty = $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment: str = "raysl"
    registered_model: str = ""  # empty = raysl-<method>-<backbone>
    register: bool = True
    # Training logs through a buffer that outlasts a tracking-server outage; at the end of
    # training, how long to wait for an unreachable server to take what it missed.
    flush_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        check(self.flush_timeout_s >= 0, "flush_timeout_s", self.flush_timeout_s,
              ">= 0 seconds")

