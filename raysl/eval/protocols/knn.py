"""Weighted k-nearest-neighbour classification on frozen features (pure tensors).

The protocol of Wu et al. 2018 (arXiv:1805.01978), used by DINO's ``eval_knn.py`` and by solo-learn
and lightly: cosine similarity, the ``k`` nearest bank features vote for their label with weight
``exp(sim / T)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.config import EvalConfig
from raysl.eval.protocols.base import FeatureProtocol, Features, Scores, topk_accuracy
from raysl.registry import register


def knn_votes(bank: Tensor, bank_labels: Tensor, queries: Tensor, num_classes: int,
              k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> Tensor:
    """Weighted class votes of ``queries``: the argmax is the prediction, the top 5 give top-5.

    Args:
        bank: (N, D) features of the labeled bank.
        bank_labels: (N,) int labels in [0, num_classes).
        queries: (M, D) features to classify.
        num_classes: C.
        k: neighbours (clipped to N).
        temperature: T of the vote weights.
        chunk: queries per similarity matrix, to bound memory at (chunk, N).

    Returns:
        (M, num_classes) float votes.
    """
    if bank.shape[0] != bank_labels.shape[0]:
        raise ValueError(f"bank has {bank.shape[0]} rows but {bank_labels.shape[0]} labels")
    k = min(k, bank.shape[0])
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    out = []
    for start in range(0, queries.shape[0], chunk):
        sim = queries[start:start + chunk] @ bank.T  # (m, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (m, k)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, bank_labels[top_idx], weights)  # (m, C)
        out.append(votes)
    return torch.cat(out)


def knn_predict(bank: Tensor, bank_labels: Tensor, queries: Tensor, num_classes: int,
                k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> Tensor:
    """(M,) int64 predicted labels of ``queries``; arguments as :func:`knn_votes`."""
    return knn_votes(bank, bank_labels, queries, num_classes, k, temperature, chunk).argmax(1)


def knn_top1(bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor,
             num_classes: int, k: int = 200, temperature: float = 0.1) -> float:
    """Top-1 accuracy in [0, 1] of :func:`knn_predict`."""
    pred = knn_predict(bank, bank_labels, queries, num_classes, k, temperature)
    return float((pred == query_labels).float().mean())


@register("protocol", "knn")
class KNN(FeatureProtocol):
    """Weighted kNN top-1 and top-5 (``eval.knn_k`` neighbours, ``eval.knn_temperature``)."""

    name = "knn"
    title = "kNN"
    summary = "weighted k-nearest neighbours on frozen features (Wu et al. 2018; DINO's protocol)"
    prediction_rank = 1

    def score(self, features: Features, cfg: EvalConfig, seed: int) -> Scores:
        """``knn_top1`` and ``knn_top5`` of the queries against the bank."""
        f = features
        votes = knn_votes(f.bank, f.bank_labels, f.queries, f.num_classes,
                          cfg.knn_k_for(len(f.bank_labels)), cfg.knn_temperature)
        return Scores({"knn_top1": topk_accuracy(votes, f.query_labels, 1),
                       "knn_top5": topk_accuracy(votes, f.query_labels, 5)}, votes.argmax(1))
