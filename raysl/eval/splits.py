"""Stratified, seeded subsets of a labeled set: held-out queries and few-label training sets."""

from __future__ import annotations

import numpy as np


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
