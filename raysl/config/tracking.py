"""MLflow tracking and model registry (``tracking``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from raysl.errors import check

# The alias consumers load (``models:/NAME@champion``): a model's first version holds it until a
# sweep crowns a better one on the same evaluation (raysl/sweep/champion.py).
CHAMPION_ALIAS = "champion"


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
    # What one request to the registered model may ask (raysl/serving/pyfunc.py); beyond it the
    # request is refused (HTTP 400 when served) naming the limit and the value. Rows are decoded
    # and embedded 256 at a time, so memory does not grow with the row count; its time does.
    serve_max_rows: int = 1024
    # An `image` file's width x height (and never more than data.max_image_pixels): a 12-MP
    # photo (4032 x 3024) or a 4K frame fits; decoding one at the cap allocates up to ~130 MB.
    serve_max_image_pixels: int = 4096 * 4096
    # A `pixels` array's H x W x C: one 1024 x 1024 RGB image. NumPy holds JSON's integers as
    # int64 (24 MiB here); larger images are cheaper sent as files.
    serve_max_array_values: int = 1024 * 1024 * 3

    def __post_init__(self) -> None:
        check(self.flush_timeout_s >= 0, "flush_timeout_s", self.flush_timeout_s,
              ">= 0 seconds")
        check(self.serve_max_rows >= 1, "serve_max_rows", self.serve_max_rows, ">= 1")
        check(self.serve_max_image_pixels >= 1, "serve_max_image_pixels",
              self.serve_max_image_pixels, ">= 1")
        check(self.serve_max_array_values >= 1, "serve_max_array_values",
              self.serve_max_array_values, ">= 1")

