"""MLflow tracking and model registry (``tracking``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from raysl.config.errors import check


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking and model registry."""

    # empty = $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db. Not in repr: it may hold
    # user:password (config.redact hides it wherever it is shown).
    tracking_uri: str = field(default="", repr=False)
    experiment: str = "raysl"
    registered_model: str = ""  # empty = raysl-<method>-<backbone>
    register: bool = True
    # Training logs through a buffer that outlasts a tracking-server outage; at the end of
    # training, how long to wait for an unreachable server to take what it missed (and the
    # driver, before its last calls: evaluation, registration, the run's status).
    flush_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        check(self.flush_timeout_s >= 0, "flush_timeout_s", self.flush_timeout_s,
              ">= 0 seconds")

