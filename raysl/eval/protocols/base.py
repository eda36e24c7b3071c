"""The interface of an evaluation protocol, registered by name (``eval.protocols``).

Two kinds, by what they consume:

- :class:`FeatureProtocol` scores frozen features (kNN, linear probe). The suite extracts each
  encoder's features once and hands them to every feature protocol; raw pixels are scored the
  same way, as a baseline.
- :class:`ImageProtocol` trains on images (few-label fine-tuning). It lists its jobs (e.g. one
  per label fraction); the suite runs each job for each encoder as a Ray task, on a GPU if the
  cluster has one.

A protocol reports metrics named ``<protocol>_...`` in [0, 1]. Pure torch: no Ray here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor

from raysl import catalog
from raysl.config import EvalConfig
from raysl.eval.splits import LabeledSplit
from raysl.nn.backbones import Encoder

T = TypeVar("T")


class Bank(ABC):
    """The labeled bank's features: in memory, or blocks spread over a cluster's object store.

    Protocols reach them only through these methods, so the same protocol code scores a bank of
    a thousand images on a laptop and of a million on a cluster.
    """

    num_rows: int
    dim: int

    @property
    def nbytes(self) -> int:
        """Bytes of the features as float32."""
        return self.num_rows * self.dim * 4

    @abstractmethod
    def map_blocks(self, fn: Callable[[Tensor, Tensor, Tensor], T]) -> Iterator[T]:
        """``fn(features (n, D), labels (n,), row ids (n,))`` on every block, where it lives."""

    @abstractmethod
    def batches(self, batch_size: int, seed: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Shuffled mini-batches ``(features, labels, row ids)`` of one pass (seeded)."""

    @abstractmethod
    def gather(self) -> tuple[Tensor, Tensor]:
        """All features (N, D) and labels (N,) in this process, in row-id order."""


class InMemoryBank(Bank):
    """A bank held as two tensors."""

    def __init__(self, features: Tensor, labels: Tensor, block_rows: int = 65536) -> None:
        if features.shape[0] != labels.shape[0]:
            raise ValueError(f"bank has {features.shape[0]} rows but {labels.shape[0]} labels")
        self.features, self.labels, self.block_rows = features, labels, block_rows
        self.num_rows, self.dim = features.shape

    def map_blocks(self, fn: Callable[[Tensor, Tensor, Tensor], T]) -> Iterator[T]:
        """``fn`` on consecutive blocks of ``block_rows``."""
        for i in range(0, self.num_rows, self.block_rows):
            end = min(i + self.block_rows, self.num_rows)
            yield fn(self.features[i:end], self.labels[i:end], torch.arange(i, end))

    def batches(self, batch_size: int, seed: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """A seeded permutation, cut into batches."""
        order = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(seed))
        for i in range(0, self.num_rows, batch_size):
            idx = order[i:i + batch_size]
            yield self.features[idx], self.labels[idx], idx

    def gather(self) -> tuple[Tensor, Tensor]:
        """The tensors themselves."""
        return self.features, self.labels


@dataclass(frozen=True)
class Features:
    """Frozen features of one model on a labeled split: the bank, and the queries in memory."""

    bank: Bank
    queries: Tensor  # (M, D)
    query_labels: Tensor  # (M,) int64
    num_classes: int


@dataclass
class Scores:
    """What a protocol measured for one model."""

    metrics: dict[str, float]  # e.g. {"knn_top1": 0.81, "knn_top5": 0.99}
    predictions: Tensor | None = None  # (M,) predicted labels of the queries, if it predicts
    notes: list[str] = field(default_factory=list)  # settings it chose, one line each


@dataclass(frozen=True)
class ImageJob:
    """One training task of an image protocol, run for every encoder."""

    key: str  # metric infix, e.g. "10pct" (finetune_10pct_top1)
    train_indices: np.ndarray  # rows of the bank it trains on
    settings: Any  # what :meth:`ImageProtocol.run` needs beyond the data (e.g. a schedule)
    description: str  # one log line, e.g. "fine-tuning on 10% of the labels (600 images...)"


class EvalProtocol(ABC):
    """Base of both kinds: a name, a one-line summary, and how much its predictions count."""

    name: ClassVar[str]  # its registry name, the metrics' prefix
    title: ClassVar[str]  # what people call it, in logs, notes and figure titles
    summary: ClassVar[str]  # one line for `raysl protocols`
    # The confusion matrix and per-class table show the predictions of the protocol with the
    # highest rank among those run (the linear probe's over kNN's); 0 = it predicts nothing.
    prediction_rank: ClassVar[int] = 0


class FeatureProtocol(EvalProtocol):
    """Scores frozen features of a labeled bank and labeled queries."""

    @abstractmethod
    def score(self, features: Features, cfg: EvalConfig, seed: int) -> Scores:
        """Metrics of one model's features (``cfg`` holds the protocol's settings)."""


class ImageProtocol(EvalProtocol):
    """Trains each encoder (a copy) on labeled images and scores it on the queries."""

    @abstractmethod
    def jobs(self, cfg: EvalConfig, bank_labels: np.ndarray, seed: int) -> list[ImageJob]:
        """The training tasks to run for every encoder."""

    @abstractmethod
    def run(self, encoder: Encoder, split: LabeledSplit, job: ImageJob, device: str,
            from_scratch: bool) -> Scores:
        """Train ``encoder`` on ``split``'s bank (the job's rows) and score its queries.

        ``from_scratch`` is true for the random-init baseline (its notes say so).
        """


def topk_accuracy(logits: Tensor, y: Tensor, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` highest logits (k clipped to classes)."""
    with torch.no_grad():
        k = min(k, logits.shape[1])
        return float((logits.topk(k, dim=1).indices == y[:, None]).any(dim=1).float().mean())


def cheapest_first(names: list[str]) -> list[str]:
    """Protocol names in the order they cost: feature protocols (by rank), then image ones."""
    def cost(name: str) -> tuple[bool, int]:
        protocol = catalog.get("protocol", name)
        return issubclass(protocol, ImageProtocol), protocol.prediction_rank

    return sorted(names, key=cost)
