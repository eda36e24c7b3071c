"""Labeled splits and their stratified, seeded subsets: held-out queries, few-label sets."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LabeledSplit:
    """A labeled bank (kNN memory, linear-probe and fine-tuning data) and the scored queries."""

    bank_images: np.ndarray  # (N, H, W, C) uint8
    bank_labels: np.ndarray  # (N,) int64
    query_images: np.ndarray  # (M, H, W, C) uint8
    query_labels: np.ndarray  # (M,) int64
    num_classes: int
    description: str
    class_names: list[str] = field(default_factory=list)

    def name_of(self, c: int) -> str:
        """Name of class ``c`` (its index when the data has no names)."""
        return self.class_names[c] if c < len(self.class_names) else str(c)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held_out)``: ``fraction`` of every class held out, seeded.

    Every class with at least two examples contributes at least one to each side.
    """
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_held = round(len(idx) * fraction)
        if len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def label_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of ``fraction`` of the examples of every class (at least one each), seeded.

    The few-label protocol of SimCLR (1% and 10% of ImageNet's labels, class-balanced): the same
    ``seed`` gives the same subset, so pretrained and from-scratch models see the same images.
    """
    if fraction >= 1:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        chosen.append(idx[:max(1, round(len(idx) * fraction))])
    return np.sort(np.concatenate(chosen))
