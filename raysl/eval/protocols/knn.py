"""Weighted k-nearest-neighbour classification on frozen features (pure tensors).

The protocol of Wu et al. 2018 (arXiv:1805.01978), used by DINO's ``eval_knn.py`` and by solo-learn
and lightly: cosine similarity, the ``k`` nearest bank features vote for their label with weight
``exp(sim / T)``. A bank of any size is searched block by block (where its blocks live, see
:class:`~raysl.eval.protocols.base.Bank`) and the blocks' top-k lists merged: the result is
exactly the in-memory one.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.catalog import register
from raysl.config import EvalConfig
from raysl.eval.protocols.base import Bank, FeatureProtocol, Features, Scores, topk_accuracy


def block_topk(bank: Tensor, bank_labels: Tensor, queries: Tensor, k: int,
               chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """The ``k`` most similar rows of one bank block for every query (cosine similarity).

    Args:
        bank: (n, D) features of a block of the bank.
        bank_labels: (n,) their labels.
        queries: (M, D) features to classify.
        k: neighbours kept (``min(k, n)`` for a small block).
        chunk: queries per similarity matrix, to bound memory at (chunk, n).

    Returns:
        ``(similarities, labels)``, both (M, min(k, n)), most similar first.
    """
    if bank.shape[0] != bank_labels.shape[0]:
        raise ValueError(f"bank has {bank.shape[0]} rows but {bank_labels.shape[0]} labels")
    k = min(k, bank.shape[0])
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    sims, labels = [], []
    for start in range(0, queries.shape[0], chunk):
        top_sim, top_idx = (queries[start:start + chunk] @ bank.T).topk(k, dim=1)  # (m, k)
        sims.append(top_sim)
        labels.append(bank_labels[top_idx])
    return torch.cat(sims), torch.cat(labels)


def merge_topk(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor], k: int
               ) -> tuple[Tensor, Tensor]:
    """The ``k`` most similar of two blocks' top lists, most similar first.

    The top ``k`` of a union is the top ``k`` of its parts' top ``k`` lists: merging block by
    block is exact.
    """
    sims = torch.cat([a[0], b[0]], dim=1)  # (M, ka + kb)
    labels = torch.cat([a[1], b[1]], dim=1)
    top_sim, where = sims.topk(min(k, sims.shape[1]), dim=1)
    return top_sim, labels.gather(1, where)


def votes_from_topk(sims: Tensor, labels: Tensor, num_classes: int, temperature: float
                    ) -> Tensor:
    """(M, C) class votes: each neighbour votes for its label with weight ``exp(sim / T)``."""
    weights = (sims / temperature).exp()
    votes = torch.zeros(sims.shape[0], num_classes, dtype=weights.dtype)
    return votes.scatter_add_(1, labels, weights)


def bank_votes(bank: Bank, queries: Tensor, num_classes: int, k: int = 200,
               temperature: float = 0.1) -> Tensor:
    """:func:`knn_votes` over a bank in blocks (wherever the blocks live), merged exactly."""
    top: tuple[Tensor, Tensor] | None = None
    for block in bank.map_blocks(functools.partial(_block_topk, queries=queries, k=k)):
        top = block if top is None else merge_topk(top, block, k)
    if top is None:
        raise ValueError("the bank is empty")
    return votes_from_topk(*top, num_classes, temperature)


def _block_topk(features: Tensor, labels: Tensor, ids: Tensor, queries: Tensor, k: int
                ) -> tuple[Tensor, Tensor]:
    return block_topk(features, labels, queries, k)


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
    sims, labels = block_topk(bank, bank_labels, queries, k, chunk)
    return votes_from_topk(sims, labels, num_classes, temperature)


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
        votes = bank_votes(f.bank, f.queries, f.num_classes, cfg.knn_k_for(f.bank.num_rows),
                           cfg.knn_temperature)
        return Scores({"knn_top1": topk_accuracy(votes, f.query_labels, 1),
                       "knn_top5": topk_accuracy(votes, f.query_labels, 5)}, votes.argmax(1))
