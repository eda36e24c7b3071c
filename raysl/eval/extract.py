"""Frozen-encoder features as a Ray Data job, kept in the object store as a :class:`DatasetBank`.

Images flow from any source (arrays, decoded files, a stream) through Ray Data tasks that run the
encoder (a GPU each when the cluster has GPUs, else one CPU each, every task with its own torch
threads) and keep ``features``, ``label`` and the row ``index``. Each worker process builds the
encoder once and reuses it for every batch it runs. The features stay distributed: protocols
reach them through :class:`~raysl.eval.protocols.base.Bank`, block by block where they live.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import ray
import ray.data
import torch
from ray.data import RandomSeedConfig
from torch import Tensor, nn

from raysl.data.source import arrays_to_dataset
from raysl.eval.features import resized
from raysl.eval.protocols.base import Bank

T = TypeVar("T")
BLOCK_ROWS = 65536  # bank rows per block that a protocol maps over
_ENCODERS: dict[str, nn.Module] = {}  # per worker process: encoder token -> built encoder


def extraction_resources() -> tuple[int, float, int]:
    """``(gpus, cpus, tasks at once)`` of each feature task on this cluster.

    One task per GPU when there are GPUs; otherwise one CPU per task and as many tasks as CPUs:
    every core runs its own forward passes, as a plain loop's threads would.
    """
    res = ray.cluster_resources()  # type: ignore[no-untyped-call]
    gpus, cpus = int(res.get("GPU", 0)), float(res.get("CPU", 1))
    if gpus:
        return 1, 1.0, gpus
    return 0, 1.0, max(1, int(cpus))


def _encode(batch: dict[str, np.ndarray], encoder: dict[str, Any], image_size: int,
            threads: int, keep: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """A batch of images -> their features, with the rows' labels, indices and ``keep``."""
    token = encoder["token"]
    if token not in _ENCODERS:  # a worker process builds each encoder once
        torch.set_num_threads(threads)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        module: nn.Module = ray.get(encoder["ref"])
        _ENCODERS.clear()  # one encoder at a time: the suite extracts them one after another
        _ENCODERS[token] = module.to(device).eval()
    model = _ENCODERS[token]
    device = next(model.parameters()).device
    with torch.no_grad():
        x = resized(batch["image"], image_size).to(device, non_blocking=True)
        features = model(x).float().cpu().numpy()
    out = {"features": features, "index": batch["index"]}
    for column in ("label", *keep):
        if column in batch:
            out[column] = batch[column]
    return out


def _pixels(batch: dict[str, np.ndarray], side: int) -> dict[str, np.ndarray]:
    """The raw-pixel baseline's features: images resized to ``side``, flattened, in [0, 1]."""
    out = {"features": resized(batch["image"], side).flatten(1).numpy(),
           "index": batch["index"]}
    if "label" in batch:
        out["label"] = batch["label"]
    return out


def dataset_features(encoder: nn.Module, images: ray.data.Dataset, image_size: int,
                     batch_size: int = 512, tasks: int = 0, keep: tuple[str, ...] = (),
                     materialize: bool = True) -> ray.data.Dataset:
    """The encoder's features of ``images`` (``image``, ``index``, ``label``).

    Args:
        encoder: frozen encoder (put in eval mode: BatchNorm running statistics); the caller's
            module is left as it is.
        images: a dataset with ``image`` (H, W, C) uint8 and ``index``.
        image_size: images are resized to this side (the encoder's pretraining size).
        batch_size: images per forward pass.
        tasks: feature tasks at once; 0 = :func:`extraction_resources`.
        keep: other columns passed through (e.g. ``path``).
        materialize: keep the features in the object store (evaluation reads them several
            times), or return the lazy stream (embedding writes them once).
    """
    gpus, cpus, concurrency = extraction_resources()
    weights = {"ref": ray.put(copy.deepcopy(encoder).cpu()), "token": uuid.uuid4().hex}
    kwargs: dict[str, Any] = {"num_gpus": gpus} if gpus else {}
    out: ray.data.Dataset = images.map_batches(
        _encode,  # type: ignore[arg-type]  # Ray's stub: a one-argument callable
        fn_kwargs={"encoder": weights, "image_size": image_size,
                            "threads": int(cpus), "keep": keep},
        batch_size=batch_size, batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=tasks or concurrency), num_cpus=cpus,
        **kwargs)
    return out.materialize() if materialize else out


def dataset_pixels(images: ray.data.Dataset, side: int) -> ray.data.Dataset:
    """Raw pixels of ``images`` at ``side`` px as features (the baseline), materialized."""
    out: ray.data.Dataset = images.map_batches(
        _pixels, fn_kwargs={"side": side},  # type: ignore[arg-type]  # Ray's stub: one argument
        batch_size=1024, batch_format="numpy").materialize()
    return out


def extract_features(encoder: nn.Module, images: np.ndarray, image_size: int,
                     batch_size: int = 512, tasks: int = 0) -> Tensor:
    """(N, D) float32 features of (N, H, W, C) uint8 ``images``, in their order (via Ray Data)."""
    features, _ = gather(dataset_features(encoder, _dataset(images, tasks), image_size,
                                          batch_size, tasks))
    return features


def _dataset(images: np.ndarray, tasks: int) -> ray.data.Dataset:
    # At least two blocks per task, so a small set still keeps every task busy.
    concurrency = tasks or extraction_resources()[2]
    rows = max(1, min(1024, -(-len(images) // (2 * concurrency))))
    return arrays_to_dataset(images, None, rows, with_index=True)


def gather(features: ray.data.Dataset) -> tuple[Tensor, Tensor | None]:
    """All rows in this process, in ``index`` order: features (N, D), labels (N,) if any."""
    parts, labels, index = [], [], []
    for batch in features.iter_batches(batch_size=None, batch_format="numpy"):
        parts.append(batch["features"])
        index.append(batch["index"])
        if "label" in batch:
            labels.append(batch["label"])
    if not parts:
        raise RuntimeError("feature extraction returned no rows")
    order = np.argsort(np.concatenate(index), kind="stable")
    x = torch.from_numpy(np.concatenate(parts)[order])
    return x, torch.from_numpy(np.concatenate(labels)[order]) if labels else None


class DatasetBank(Bank):
    """A bank whose features are a materialized Ray Dataset (``features``, ``label``, ``index``).

    ``shift`` is subtracted from every feature on access (the pixel baseline is centred).
    """

    def __init__(self, features: ray.data.Dataset, dim: int, shift: Tensor | None = None
                 ) -> None:
        self.features, self.dim, self.shift = features, dim, shift
        self.num_rows = features.count()

    @classmethod
    def of(cls, features: ray.data.Dataset, shift: Tensor | None = None) -> DatasetBank:
        """A bank of ``features``, its dimension read from the first row."""
        first = features.take(1)
        if not first:
            raise RuntimeError("feature extraction returned no rows")
        return cls(features, int(np.asarray(first[0]["features"]).shape[-1]), shift)

    def map_blocks(self, fn: Callable[[Tensor, Tensor, Tensor], T]) -> Iterator[T]:
        """``fn`` on blocks of up to 65536 rows, as Ray Data tasks beside the blocks."""
        shift = self.shift  # not self: the tasks need the function, not the dataset

        def apply(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            result = np.empty(1, dtype=object)
            result[0] = fn(*_tensors(batch, shift))
            return {"result": result}

        for out in self.features.map_batches(apply, batch_size=BLOCK_ROWS,
                                             batch_format="numpy").iter_batches(
                batch_size=None, batch_format="numpy"):
            yield from out["result"]

    def batches(self, batch_size: int, seed: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """A pass in a seeded block order, rows shuffled in a local buffer."""
        ordered = self.features.randomize_block_order(seed=RandomSeedConfig(seed, False))
        for batch in ordered.iter_batches(batch_size=batch_size, batch_format="numpy",
                                          local_shuffle_buffer_size=16 * batch_size,
                                          local_shuffle_seed=seed):
            yield _tensors(batch, self.shift)

    def gather(self) -> tuple[Tensor, Tensor]:
        """All rows, in ``index`` order."""
        x, y = gather(self.features)
        if y is None:
            raise RuntimeError("the bank's features carry no labels")
        return (x - self.shift if self.shift is not None else x), y


def _tensors(batch: dict[str, np.ndarray], shift: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """A feature batch as (features - shift, labels, row indices)."""
    x = torch.from_numpy(np.array(batch["features"], copy=True))
    if shift is not None:
        x -= shift
    # Copies: Ray hands out read-only views of its object store, which torch warns about.
    return x, torch.from_numpy(np.array(batch["label"])), torch.from_numpy(np.array(batch["index"]))
