"""MLflow: runs, per-epoch metrics, and the model registry that serves encoders."""
