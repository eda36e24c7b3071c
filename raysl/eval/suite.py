"""The kNN evaluation reported after pretraining: trained encoder vs random init vs raw pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from raysl.config import EvalConfig
from raysl.data.readers import DataError, read_source, to_numpy
from raysl.eval.features import encoder_features, pixel_features
from raysl.eval.knn import knn_top1

PIXELS = "raw_pixels"


@dataclass
class LabeledSplit:
    """A labeled bank (the kNN memory) and the queries scored against it."""

    bank_images: np.ndarray  # (N, H, W, C) uint8
    bank_labels: np.ndarray  # (N,) int64
    query_images: np.ndarray  # (M, H, W, C) uint8
    query_labels: np.ndarray  # (M,) int64
    num_classes: int
    description: str


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


def load_labeled_split(cfg: EvalConfig, channels: int, decode_size: int, seed: int
                       ) -> LabeledSplit:
    """Read ``cfg.bank`` and ``cfg.query`` (or hold out ``cfg.holdout`` of the bank)."""
    bank_src = read_source(cfg.bank, channels, decode_size, seed, "eval.bank")
    bank_x, bank_y = to_numpy(bank_src)
    if bank_y is None:
        raise DataError(f"eval.bank.path={cfg.bank.path!r}: has no labels; kNN evaluation needs "
                        "a labeled set (class sub-folders, IDX labels or an npz 'labels' array)")
    if cfg.query.is_set:
        query_src = read_source(cfg.query, channels, decode_size, seed, "eval.query")
        query_x, query_y = to_numpy(query_src)
        if query_y is None:
            raise DataError(f"eval.query.path={cfg.query.path!r}: has no labels")
        desc = f"bank: {bank_src.description}; queries: {query_src.description}"
    else:
        keep, held = stratified_holdout(bank_y, cfg.holdout, seed)
        query_x, query_y, bank_x, bank_y = bank_x[held], bank_y[held], bank_x[keep], bank_y[keep]
        desc = f"{bank_src.description}, {cfg.holdout:.0%} held out as queries (stratified)"
    num_classes = int(max(bank_y.max(), query_y.max())) + 1
    return LabeledSplit(bank_x, bank_y, query_x, query_y, num_classes, desc)


def knn_suite(encoders: dict[str, nn.Module], split: LabeledSplit, cfg: EvalConfig,
              image_size: int, with_pixels: bool = True) -> dict[str, float]:
    """Top-1 kNN accuracy of each encoder (and raw pixels) on ``split``, keyed by name.

    Raw pixels are centred by the bank mean before the cosine kNN, so the baseline is not just
    comparing overall brightness.
    """
    bank_y = torch.from_numpy(split.bank_labels)
    query_y = torch.from_numpy(split.query_labels)
    results = {}
    for name, encoder in encoders.items():
        bank = encoder_features(encoder, split.bank_images, image_size, cfg.batch_size)
        queries = encoder_features(encoder, split.query_images, image_size, cfg.batch_size)
        results[name] = knn_top1(bank, bank_y, queries, query_y, split.num_classes, cfg.knn_k,
                                 cfg.knn_temperature)
    if with_pixels:
        bank = pixel_features(split.bank_images, image_size)
        mean = bank.mean(dim=0)
        queries = pixel_features(split.query_images, image_size) - mean
        results[PIXELS] = knn_top1(bank - mean, bank_y, queries, query_y, split.num_classes,
                                   cfg.knn_k, cfg.knn_temperature)
    return results
