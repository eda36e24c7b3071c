"""Hierarchical k-means with resampling, and hierarchical balanced sampling (pure torch/numpy).

Vo et al. 2024, "Automatic Data Curation for Self-Supervised Learning: A Clustering-Based
Approach" (arXiv:2405.15613). Level 1 clusters the images' embeddings; level l+1 clusters the
centroids of level l. Each level runs k-means, then ``steps`` resampling-clustering steps: "we
sample from each cluster a fixed number of points closest to the centroid" (``size`` of them),
k-means on their union gives the level's new centroids, and every point is assigned again.
Balanced sampling goes top down: a cluster's target is split over its children as evenly as
their sizes allow (children smaller than their share give all they have, the rest is shared by
the others), down to level 1, where a cluster's target is drawn from its images at random.

The rows of level 1 are never all in one process: every pass over them goes through a
:data:`BlockMap`, which applies a function to each block of rows and yields the results (a
loop in one process, or Ray tasks beside the blocks, :mod:`raysl.curate.command`). Only
per-cluster sums, the ``k x size`` resampled points and the drawn rows come back.

Every random choice is a seeded function of the rows' indices (:func:`row_keys`), so the
result does not depend on how the rows are split into blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor

from raysl.clustering import nearest

T = TypeVar("T")


class BlockMap(Protocol):
    """Applies ``fn(x (n, D) float32, index (n,) int64)`` to every block of rows, in order."""

    def __call__(self, fn: Callable[[Tensor, Tensor], T]) -> Iterator[T]:
        """``fn``'s result for each block."""
        ...


def in_memory(x: Tensor, index: Tensor, rows: int = 65536) -> BlockMap:
    """A :data:`BlockMap` over rows held here: ``x`` (n, D), ``index`` (n,), ``rows`` a block."""

    def each(fn: Callable[[Tensor, Tensor], T]) -> Iterator[T]:
        for start in range(0, len(x), rows):
            yield fn(x[start:start + rows], index[start:start + rows])

    return each


def row_keys(index: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) for each row index (n,) -> (n,) float64: splitmix64 of both.

    The same row always gets the same key for a seed, whichever block it is in.
    """
    z = index.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + 1) % 2**64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def best_per_group(group: Tensor, score: Tensor, quota: Tensor) -> Tensor:
    """Which rows are among the ``quota[g]`` of smallest ``score`` in their group ``g``.

    Args:
        group: (n,) int64 each row's group.
        score: (n,) float64; ties go to the earlier row.
        quota: (k,) int64 rows wanted per group.

    Returns:
        (n,) bool.
    """
    if len(group) == 0:
        return torch.zeros(0, dtype=torch.bool)
    order = torch.argsort(score, stable=True)
    order = order[torch.argsort(group[order], stable=True)]  # by group, then by score
    sorted_group = group[order]
    starts = torch.searchsorted(sorted_group, sorted_group, side="left")
    rank = torch.arange(len(group)) - starts  # place within its group
    keep = torch.zeros(len(group), dtype=torch.bool)
    keep[order] = rank < quota[sorted_group]
    return keep


def initial_centroids(blocks: BlockMap, k: int, seed: int) -> Tensor:
    """The rows of the ``k`` smallest :func:`row_keys`: (k, D). A seeded uniform draw.

    Raises:
        ValueError: fewer than ``k`` rows.
    """

    def smallest(x: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        keys = torch.from_numpy(row_keys(index.numpy(), seed))
        top = torch.argsort(keys, stable=True)[:k]
        return keys[top], x[top]

    keys, rows = torch.zeros(0, dtype=torch.float64), None
    for block_keys, block_rows in blocks(smallest):  # the k smallest so far: bounded memory
        keys = torch.cat([keys, block_keys])
        rows = block_rows if rows is None else torch.cat([rows, block_rows])
        top = torch.argsort(keys, stable=True)[:k]
        keys, rows = keys[top], rows[top]
    if rows is None or len(keys) < k:
        raise ValueError(f"k-means of {k} clusters needs at least {k} rows; there are "
                         f"{len(keys)}")
    return rows.float()


def lloyd(blocks: BlockMap, centroids: Tensor, iters: int) -> Tensor:
    """``iters`` Lloyd iterations from ``centroids`` (k, D); an empty cluster keeps its centroid.

    Each iteration is one pass: every block returns its per-cluster sums (k, D) and counts (k,)
    in float64, added up here.
    """
    for _ in range(iters):
        c = centroids

        def sums(x: Tensor, index: Tensor, c: Tensor = c) -> tuple[Tensor, Tensor]:
            labels, _ = nearest(x.float(), c)
            total = torch.zeros(c.shape, dtype=torch.float64).index_add_(0, labels, x.double())
            return total, torch.bincount(labels, minlength=len(c)).double()

        total = torch.zeros(c.shape, dtype=torch.float64)
        counts = torch.zeros(len(c), dtype=torch.float64)
        for block_total, block_counts in blocks(sums):  # added as they come
            total += block_total
            counts += block_counts
        centroids = torch.where(counts[:, None] > 0, total / counts.clamp_min(1)[:, None],
                                c.double()).float()
    return centroids


def closest_per_cluster(blocks: BlockMap, centroids: Tensor,
                        size: int) -> Tensor:
    """The paper's resampling: the ``size`` rows of each cluster closest to its centroid.

    Returns:
        (at most k x size, D) float32; fewer for a cluster with fewer rows.
    """
    quota = torch.full((len(centroids),), size, dtype=torch.long)

    def closest(x: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        labels, dists = nearest(x.float(), centroids)
        keep = best_per_group(labels, dists.double(), quota)
        return labels[keep], dists[keep].double(), x[keep]

    labels = torch.zeros(0, dtype=torch.long)
    dists = torch.zeros(0, dtype=torch.float64)
    points = torch.zeros(0, len(centroids[0]))
    for block_labels, block_dists, block_points in blocks(closest):  # the best so far only
        labels, dists = torch.cat([labels, block_labels]), torch.cat([dists, block_dists])
        points = torch.cat([points, block_points.float()])
        keep = best_per_group(labels, dists, quota)
        labels, dists, points = labels[keep], dists[keep], points[keep]
    return points


def kmeans_level(blocks: BlockMap, k: int, iters: int, steps: int, size: int,
                 seed: int) -> Tensor:
    """One level: k-means, then ``steps`` resampling-clustering steps; the centroids (k, D).

    A resampling step takes :func:`closest_per_cluster` and runs k-means (seeded draw,
    ``iters`` iterations) on those points alone; the next step, and whoever assigns the rows
    after, assign every row to the new centroids.
    """
    centroids = lloyd(blocks, initial_centroids(blocks, k, seed), iters)
    for step in range(steps):
        points = closest_per_cluster(blocks, centroids, size)
        if len(points) < k:  # too few to cluster again: the level stays as it is
            break
        sample: BlockMap = in_memory(points, torch.arange(len(points)))
        centroids = lloyd(sample, initial_centroids(sample, k, seed + 1 + step), iters)
    return centroids


@dataclass(frozen=True)
class Hierarchy:
    """Centroids per level and how each level's clusters group into the next level's.

    Attributes:
        centroids: ``centroids[l]`` (k_l, D) of level l + 1 (level 1 clusters the rows).
        parents: ``parents[l]`` (k_l,) int64, the level-(l + 2) cluster of each level-(l + 1)
            cluster; one fewer entry than ``centroids``.
    """

    centroids: list[Tensor]
    parents: list[Tensor]

    @property
    def levels(self) -> int:
        """Levels of clusters."""
        return len(self.centroids)

    def ancestors(self, leaf: Tensor, level: int) -> Tensor:
        """The level-``level`` (1-based) cluster of each level-1 cluster id in ``leaf`` (n,)."""
        out = leaf
        for parent in self.parents[:level - 1]:
            out = parent[out]
        return out


def hierarchical_kmeans(blocks: BlockMap, ks: list[int], iters: int, steps: int, size: int,
                        seed: int) -> Hierarchy:
    """Vo et al.'s hierarchical k-means with resampling over the rows of ``blocks``.

    Args:
        blocks: the rows (level 1's points).
        ks: clusters per level, level 1 first (the paper: decreasing, e.g. [100, 10]).
        iters: Lloyd iterations of each k-means.
        steps: resampling-clustering steps per level.
        size: points taken from each cluster by a resampling step.
        seed: seeds every draw (level l uses ``seed + 100 l``).
    """
    centroids: list[Tensor] = []
    parents: list[Tensor] = []
    points = blocks
    for level, k in enumerate(ks):
        c = kmeans_level(points, k, iters, steps, size, seed + 100 * level)
        if centroids:
            parents.append(nearest(centroids[-1], c)[0])
        centroids.append(c)
        points = in_memory(c, torch.arange(k))
    return Hierarchy(centroids, parents)


def cut_quotas(sizes: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``target`` over clusters of ``sizes`` (k,) as evenly as their sizes allow: (k,).

    The largest ``c`` with ``sum(min(c, sizes)) <= target`` is every cluster's share; the
    ``target - sum`` left over go one each to clusters larger than ``c``, drawn at random (as
    the paper's code draws them). All of every cluster when ``target >= sizes.sum()``.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if target >= sizes.sum():
        return sizes.copy()
    low, high = 0, int(sizes.max())  # sum(min(low, sizes)) <= target < sum(min(high, sizes))
    while high - low > 1:
        mid = (low + high) // 2
        if np.minimum(mid, sizes).sum() <= target:
            low = mid
        else:
            high = mid
    quotas = np.minimum(low, sizes)
    left = target - int(quotas.sum())
    bigger = np.flatnonzero(sizes > low)
    quotas[rng.choice(bigger, left, replace=False)] += 1
    return np.asarray(quotas, dtype=np.int64)


def leaf_quotas(hierarchy: Hierarchy, leaf_sizes: np.ndarray, target: int,
                seed: int) -> np.ndarray:
    """The paper's hierarchical balanced sampling: how many images each level-1 cluster gives.

    The top level's clusters split ``target`` with :func:`cut_quotas` by their sizes in images;
    each cluster's quota is split the same way over its children, down to level 1.

    Args:
        hierarchy: the clusters.
        leaf_sizes: (k_1,) images per level-1 cluster.
        target: images wanted in all.
        seed: seeds the draws of who gives the leftover ones.

    Returns:
        (k_1,) int64; sums to ``min(target, leaf_sizes.sum())``.
    """
    rng = np.random.default_rng(seed)
    leaf = torch.arange(len(leaf_sizes))
    top = hierarchy.levels
    sizes = [np.bincount(hierarchy.ancestors(leaf, level).numpy(), weights=leaf_sizes,
                         minlength=len(hierarchy.centroids[level - 1])).astype(np.int64)
             for level in range(1, top + 1)]  # images under each cluster of each level
    quotas = cut_quotas(sizes[-1], target, rng)
    for level in range(top - 1, 0, -1):  # split level + 1's quotas over level's clusters
        below = np.zeros(len(sizes[level - 1]), dtype=np.int64)
        parent = hierarchy.parents[level - 1].numpy()
        for cluster in range(len(quotas)):
            children = np.flatnonzero(parent == cluster)
            below[children] = cut_quotas(sizes[level - 1][children], int(quotas[cluster]), rng)
        quotas = below
    return np.asarray(quotas, dtype=np.int64)
