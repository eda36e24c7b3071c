"""Frozen-encoder features as a Ray Data job: batched inference actors, a GPU each when there are.

Images are fed to a pool of actors that each hold one copy of the encoder (built once per actor,
not per batch), so extraction scales with the cluster's GPUs or CPUs. Rows carry their index, so
the features come back in input order whatever order the actors finish in.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import ray
import ray.data
import torch
from torch import Tensor, nn

from raysl.data.source import arrays_to_dataset
from raysl.eval.features import resized

_ROWS_PER_BLOCK = 1024


class FeatureActor:
    """``map_batches`` callable: ``{"image": (B, H, W, C) uint8, "index"}`` -> features."""

    def __init__(self, encoder: dict[str, ray.ObjectRef[nn.Module]], image_size: int,
                 threads: int) -> None:
        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # Passed by reference (in a dict, so Ray does not resolve it into the constructor's
        # arguments): a restarted actor fetches it again from the driver's object store.
        module: nn.Module = ray.get(encoder["ref"])
        self.encoder = module.to(self.device).eval()
        self.image_size = image_size

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Features (B, D) float32 of a batch, with the rows' indices."""
        x = resized(batch["image"], self.image_size).to(self.device, non_blocking=True)
        features = self.encoder(x).float().cpu().numpy()
        return {"index": batch["index"], "features": features}


def default_actors(requested: int) -> tuple[int, int, float]:
    """``(actors, gpus_per_actor, cpus_per_actor)`` for this cluster.

    One actor per GPU if the cluster has GPUs; otherwise one per 2 CPUs (at most 4), each with
    one CPU so the others stay free for reading and resizing.
    """
    res = ray.cluster_resources()  # type: ignore[no-untyped-call]
    gpus, cpus = int(res.get("GPU", 0)), float(res.get("CPU", 1))
    if gpus:
        return requested or gpus, 1, 1.0
    return requested or max(1, min(4, int(cpus // 2))), 0, 1.0


def _dataset(images: np.ndarray, actors: int) -> ray.data.Dataset:
    # At least two blocks per actor, so a small set still keeps every actor busy.
    rows = max(1, min(_ROWS_PER_BLOCK, -(-len(images) // (2 * actors))))
    return arrays_to_dataset(images, None, rows, with_index=True)


def extract_features(encoder: nn.Module, images: np.ndarray, image_size: int,
                     batch_size: int = 512, actors: int = 0) -> Tensor:
    """(N, D) float32 features of (N, H, W, C) uint8 ``images``, in their order.

    Args:
        encoder: frozen encoder (put in eval mode: BatchNorm running statistics).
        images: (N, H, W, C) uint8, on the driver; they go to the actors through Ray's store.
        image_size: images are resized to this side (the encoder's pretraining size).
        batch_size: images per inference call.
        actors: size of the actor pool; 0 = :func:`default_actors`.
    """
    n_actors, gpus, cpus = default_actors(actors)
    encoder = copy.deepcopy(encoder).cpu()  # the caller's module keeps its device and mode
    kwargs: dict[str, Any] = {"num_gpus": gpus} if gpus else {}
    ds = _dataset(images, n_actors).map_batches(
        FeatureActor, fn_constructor_kwargs={"encoder": {"ref": ray.put(encoder)},
                                             "image_size": image_size, "threads": int(cpus)},
        batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=cpus, **kwargs)
    out: np.ndarray | None = None
    filled = np.zeros(len(images), bool)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        if out is None:
            out = np.empty((len(images), batch["features"].shape[1]), np.float32)
        out[batch["index"]] = batch["features"]
        filled[batch["index"]] = True
    if out is None or not filled.all():
        raise RuntimeError(f"feature extraction returned {int(filled.sum())} of {len(images)} "
                           "rows")
    return torch.from_numpy(out)
