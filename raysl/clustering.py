"""k-means over features spread across the train workers, as DeepCluster clusters (pure torch).

Each worker holds the features of its share of the training set. Every statistic the
clustering needs is a sum over images, so it is all-reduced rather than gathered: the PCA's
mean and covariance, and each k-means iteration's per-cluster sums and counts. Only the final
(index, cluster) pairs are gathered, so that every worker can label any image it is handed.
Every draw (the initial centroids, the clusters split to re-seed an empty one) depends on the
seed and the images' indices, never on how the images are spread over workers: two processes
give what one process gives on the concatenated features
(tests/methods/test_distributed_methods.py).

Everything runs on the features' device (the collectives of NCCL need CUDA tensors); the seeded
draws come from CPU generators, so they are the same on any device. Without a process group
everything runs in one process (:mod:`raysl.distributed`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl import distributed

# faiss's perturbation when an empty cluster takes half of another one's points (Clustering.cpp).
SPLIT_EPS = 1.0 / 1024
_ROWS_PER_CHUNK = 4096  # rows of the (rows, k) distance matrix computed at once


@dataclass(frozen=True)
class Clustering:
    """One k-means run over the whole (distributed) training set.

    Attributes:
        assignment: (max index + 1,) int64, the cluster of the image with each row index;
            -1 for an index no worker had. The same on every rank.
        centroids: (k, d) float32, in the whitened space.
        sizes: (k,) int64 images per cluster in the final assignment.
        reseeded: empty clusters re-seeded over all iterations.
        inertia: mean squared distance of an image to its centroid.
    """

    assignment: Tensor
    centroids: Tensor
    sizes: Tensor
    reseeded: int
    inertia: float

    @property
    def images(self) -> int:
        """Images clustered."""
        return int(self.sizes.sum())


# Rows whitened at a time: float64 copies of a chunk, not of all of a worker's features (at a
# million images on one worker, a 512-d head's float64 copies were 3 x 4 GB).
WHITEN_ROWS = 65536


def pca_whiten(x: Tensor, dim: int) -> Tensor:
    """DeepCluster's pre-processing: PCA to ``dim`` dimensions, whitening, then L2-normalisation.

    Args:
        x: (n, D) this rank's features.
        dim: output dimensions; at most D (more are cut to D).

    Returns:
        (n, min(dim, D)) float32 rows of unit norm.
    """
    mean, projection = _whitening(x, dim)
    return torch.cat([F.normalize((c.double() - mean) @ projection, dim=1).float()
                      for c in _row_chunks(x)])


def whitened(x: Tensor, dim: int) -> Tensor:
    """The rows projected on the ``dim`` top principal axes and scaled to unit variance.

    Args:
        x: (n, D) this rank's features.
        dim: output dimensions; at most D (more are cut to D).

    Returns:
        (n, min(dim, D)) float64; over all ranks, mean 0 and covariance the identity.
    """
    mean, projection = _whitening(x, dim)
    return torch.cat([(c.double() - mean) @ projection for c in _row_chunks(x)])


def _whitening(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """The mean (D,) and the projection (D, min(dim, D)) that whiten every rank's rows.

    The mean and covariance are those of every rank's rows together (float64 sums,
    all-reduced, :data:`WHITEN_ROWS` rows at a time). Each axis's sign is fixed (its largest
    component positive), so every process picks the same basis. Directions with (near) zero
    variance are floored at 1e-6 of the largest variance instead of being blown up.
    """
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    n = distributed.all_reduce_sum(torch.tensor(float(len(x)), dtype=torch.float64,
                                                device=x.device))
    total = sum((c.double().sum(0) for c in _row_chunks(x)), zero.expand(x.shape[1]))
    second = sum((c.double().T @ c.double() for c in _row_chunks(x)),
                 zero.expand(x.shape[1], x.shape[1]))
    mean = distributed.all_reduce_sum(total.contiguous()) / n
    cov = distributed.all_reduce_sum(second.contiguous()) / n - torch.outer(mean, mean)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    dim = min(dim, x.shape[1])
    values, vectors = values.flip(0)[:dim], vectors.flip(1)[:, :dim]
    vectors = vectors * vectors.gather(0, vectors.abs().argmax(0, keepdim=True)).sign()
    floor = 1e-6 * values[0].clamp_min(1e-12)
    return mean, vectors / values.clamp_min(floor).sqrt()


def _row_chunks(x: Tensor) -> tuple[Tensor, ...]:
    """``x`` in chunks of :data:`WHITEN_ROWS` rows (one empty chunk for no rows)."""
    return torch.split(x, WHITEN_ROWS) if len(x) else (x,)


def nearest(x: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's nearest centroid (squared L2) and that squared distance.

    Args:
        x: (n, d) rows.
        centroids: (k, d).

    Returns:
        (n,) int64 cluster ids and (n,) float32 squared distances.
    """
    labels, dists = [], []
    norms = (centroids * centroids).sum(1)
    for start in range(0, len(x), _ROWS_PER_CHUNK):
        chunk = x[start:start + _ROWS_PER_CHUNK]
        d = norms - 2 * chunk @ centroids.T + (chunk * chunk).sum(1, keepdim=True)  # (rows, k)
        best, arg = d.min(dim=1)
        labels.append(arg)
        dists.append(best.clamp_min(0))
    if not labels:
        return (torch.empty(0, dtype=torch.long, device=x.device),
                torch.empty(0, device=x.device))
    return torch.cat(labels), torch.cat(dists)


def kmeans(x: Tensor, index: Tensor, k: int, iters: int, seed: int) -> Clustering:
    """Lloyd's k-means over the rows of every rank, as faiss runs it for DeepCluster.

    Initial centroids: the k images first in a seeded random order of the indices. Each
    iteration assigns every row to its nearest centroid, moves each centroid to the mean of its
    rows (sums and counts all-reduced), then re-seeds every empty cluster by splitting a
    non-empty one, drawn with probability proportional to its size minus one: the empty one
    takes a copy of its centroid, both copies are pushed apart by ``SPLIT_EPS`` in opposite
    directions, and the next assignment divides the points between them (faiss, used by the
    paper). The final assignment is to the final centroids.

    Args:
        x: (n, d) float32 this rank's (whitened) features.
        index: (n,) int64 each row's image index, unique over all ranks.
        k: clusters.
        iters: Lloyd iterations (the paper's faiss: 20).
        seed: seeds the initial centroids and the re-seeding draws.

    Raises:
        ValueError: fewer images than clusters, over all ranks.
    """
    total = int(distributed.all_reduce_sum(torch.tensor(len(x), device=x.device)))
    if total < k:
        raise ValueError(f"k-means of {k} clusters needs at least {k} images; the workers "
                         f"hold {total}")
    centroids = _initial_centroids(x, index, k, seed)
    draws = torch.Generator().manual_seed(seed + 1)  # the same draws on every rank
    reseeded = 0
    for _ in range(iters):
        labels, _ = nearest(x, centroids)
        sums, counts = _cluster_sums(x, labels, k)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None],
                                centroids.double()).float()
        reseeded += _split_into_empty(centroids, counts, draws)
    labels, dists = nearest(x, centroids)
    sizes = distributed.all_reduce_sum(torch.bincount(labels, minlength=k)).cpu()
    inertia = float(distributed.all_reduce_sum(dists.double().sum())) / total
    return Clustering(gathered_table(index, labels), centroids, sizes, reseeded, inertia)


def _cluster_sums(x: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-cluster sums (k, d) and counts (k,) of every rank's rows, float64."""
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
    sums.index_add_(0, labels, x.double())
    counts = torch.bincount(labels, minlength=k).double()
    return distributed.all_reduce_sum(sums), distributed.all_reduce_sum(counts)


def _initial_centroids(x: Tensor, index: Tensor, k: int, seed: int) -> Tensor:
    """The rows of the k smallest indices in a seeded random order of all indices: (k, d).

    Each rank offers its k first rows in that order; the k first of all offers win. Which
    images are drawn depends on the seed and the indices only.
    """
    none = torch.tensor(-1, device=x.device)
    top = int(distributed.all_reduce_max(index.max() if len(index) else none))
    order = torch.randperm(top + 1, generator=torch.Generator().manual_seed(seed))
    rank = order.to(x.device)[index]  # each row's place in the random order
    mine = rank.argsort()[:k]
    sizes = _sizes(len(mine), x.device)
    offers = torch.cat([rank[mine, None].double(), x[mine].double()], 1)  # (<= k, 1 + d)
    offered = distributed.gather_rows(offers, sizes)
    return offered[offered[:, 0].argsort()[:k], 1:].to(x.dtype).contiguous()


def _split_into_empty(centroids: Tensor, counts: Tensor, draws: torch.Generator) -> int:
    """Re-seed each empty cluster in place from a split non-empty one; returns how many.

    ``counts`` (k,) float64 is updated as faiss does: the empty cluster takes half of the
    split one's count, so a big cluster is not split again and again in one iteration.
    """
    empty = (counts == 0).nonzero().flatten().tolist()
    sign = torch.ones(centroids.shape[1], device=centroids.device)
    sign[1::2] = -1  # faiss alternates the direction of the push per dimension
    for e in empty:
        j = int(torch.multinomial((counts.cpu() - 1).clamp_min(0), 1, generator=draws))
        centroids[e] = centroids[j] * (1 + sign * SPLIT_EPS)
        centroids[j] = centroids[j] * (1 - sign * SPLIT_EPS)
        counts[e] = math.floor(float(counts[j]) / 2)
        counts[j] -= counts[e]
    return len(empty)


def gathered_table(index: Tensor, values: Tensor) -> Tensor:
    """(max index + 1,) int64: every rank's ``values`` (n,) at their ``index``; -1 elsewhere.

    The assignment of a clustering, or the true label of every image.
    """
    sizes = _sizes(len(index), index.device)
    every_index = distributed.gather_rows(index, sizes)
    table = torch.full((int(every_index.max()) + 1,), -1, dtype=torch.long, device=index.device)
    table[every_index] = distributed.gather_rows(values, sizes)
    return table


def _sizes(rows: int, device: torch.device) -> list[int]:
    """Every rank's number of rows, in rank order."""
    return [int(s) for s in distributed.gather_no_grad(torch.tensor([rows], device=device))]


def normalized_mutual_info(a: Tensor, b: Tensor) -> float:
    """NMI of two labelings of the same images, as the DeepCluster paper defines it (eq. 4).

    ``NMI(A; B) = I(A; B) / sqrt(H(A) H(B))``. Rows where either labeling is negative
    (unassigned) are left out. 1 when the partitions are the same up to renaming, 0 when
    independent; two constant labelings count as the same partition (1).

    Args:
        a: (n,) int64 labels.
        b: (n,) int64 labels of the same rows.
    """
    a, b = a.cpu(), b.cpu()
    keep = (a >= 0) & (b >= 0)
    a, b = a[keep], b[keep]
    if len(a) == 0:
        return 0.0
    a = torch.unique(a, return_inverse=True)[1]
    b = torch.unique(b, return_inverse=True)[1]
    na, nb = int(a.max()) + 1, int(b.max()) + 1
    joint = torch.bincount(a * nb + b, minlength=na * nb).reshape(na, nb).double() / len(a)
    pa, pb = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mutual = float((joint[nz] * (joint[nz] / (pa[:, None] * pb[None, :])[nz]).log()).sum())
    ha = float(-(pa * pa.log()).sum())
    hb = float(-(pb * pb.log()).sum())
    if ha == 0 or hb == 0:
        return 1.0 if ha == hb else 0.0
    return max(0.0, mutual / math.sqrt(ha * hb))
