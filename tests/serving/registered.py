"""A tiny random encoder registered the current way (pyfunc) in a fresh MLflow store.

What the consumer tests share (``tests/serving/test_consumers.py`` and
``tests/test_cli_consumers.py``): registering costs a few seconds, so each module registers
once, in a module-scoped fixture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from mlflow.tracking import MlflowClient

from raysl import config as C
from raysl.checkpoint import save_checkpoint
from raysl.nn.backbones import build_encoder
from raysl.tracking.mlflow import ensure_experiment
from raysl.tracking.model_registry import WEIGHTS_TAG, log_and_register, log_weights

SIZE = 32  # the encoder's pretraining size (training decodes files at 8/7 of it)
NAME = "consumer-encoder"


def register_tiny_encoder(root: Path) -> dict[str, Any]:
    """A gray 32-px, width-8 encoder registered as ``consumer-encoder`` version 1 (champion).

    Returns:
        ``root``, ``uri`` (the store), ``cfg``, ``encoder``, ``run_id`` and ``weights`` (the
        run's weights directory).
    """
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cfg = C.load(None, ["data.source.format=generated", f"data.image_size={SIZE}",
                        "data.channels=1", "model.width=8", "model.small_stem=true"])
    torch.manual_seed(0)
    encoder = build_encoder(cfg.model, 1, SIZE).eval()
    client = MlflowClient(uri)
    experiment = ensure_experiment(client, "consumers", uri)
    run_id = client.create_run(experiment).info.run_id
    checkpoint = root / "checkpoint"
    save_checkpoint(checkpoint, encoder, encoder, torch.optim.SGD(encoder.parameters(), lr=0.1),
                    {"epoch": 0, "step": 1, "config": cfg.to_dict()})
    weights = log_weights(client, run_id, checkpoint)
    log_and_register(encoder, cfg, run_id, uri, NAME, "for consumers", {WEIGHTS_TAG: weights})
    client.set_registered_model_alias(NAME, "champion", "1")
    return {"root": root, "uri": uri, "cfg": cfg, "encoder": encoder, "run_id": run_id,
            "weights": weights}
