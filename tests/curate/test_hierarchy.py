"""Hierarchical k-means with resampling and balanced sampling, against the paper's procedure."""

import numpy as np
import pytest
import torch

from raysl.curate.hierarchy import (
    Hierarchy,
    best_per_group,
    cut_quotas,
    hierarchical_kmeans,
    in_memory,
    leaf_quotas,
    row_keys,
)


def _naive_kmeans(x: np.ndarray, k: int, iters: int, seed: int) -> np.ndarray:
    """Lloyd's k-means as loops: start at the rows of the k smallest keys, empty keeps its own."""
    keys = row_keys(np.arange(len(x)), seed)
    c = x[np.argsort(keys, kind="stable")[:k]].astype(np.float64)
    for _ in range(iters):
        labels = [int(np.argmin([((p - q) ** 2).sum() for q in c])) for p in x]
        for j in range(k):
            members = [p for p, label in zip(x, labels, strict=True) if label == j]
            if members:
                c[j] = np.mean(members, axis=0)
    return c


def _naive_level(x: np.ndarray, k: int, iters: int, steps: int, size: int, seed: int):
    """One level as the paper's Algorithm 1 (its code's ``closest`` resampling)."""
    c = _naive_kmeans(x, k, iters, seed)
    for step in range(steps):
        labels = np.array([np.argmin(((c - p) ** 2).sum(1)) for p in x])
        dist = np.array([((c[label] - p) ** 2).sum() for p, label in zip(x, labels, strict=True)])
        chosen = []
        for j in range(k):
            members = np.flatnonzero(labels == j)
            chosen += list(members[np.argsort(dist[members], kind="stable")[:size]])
        sample = x[np.sort(chosen)]  # in the rows' order
        if len(sample) < k:
            break
        c = _naive_kmeans(sample, k, iters, seed + 1 + step)
    return c


def _naive_hierarchy(x: np.ndarray, ks, iters, steps, size, seed):
    levels, parents, points = [], [], x
    for level, k in enumerate(ks):
        c = _naive_level(points, k, iters, steps, size, seed + 100 * level)
        if levels:
            parents.append(np.array([np.argmin(((c - p) ** 2).sum(1)) for p in levels[-1]]))
        levels.append(c)
        points = c
    return levels, parents


@pytest.mark.parametrize("rows", [7, 1000])
def test_hierarchical_kmeans_matches_a_naive_transcription(rng, rows):
    centres = rng.standard_normal((6, 4)) * 5
    x = np.concatenate([c + 0.3 * rng.standard_normal((20 + 5 * i, 4))
                        for i, c in enumerate(centres)]).astype(np.float32)
    x = x[rng.permutation(len(x))]
    got = hierarchical_kmeans(in_memory(torch.from_numpy(x), torch.arange(len(x)), rows),
                              [8, 3], iters=5, steps=2, size=4, seed=3)
    levels, parents = _naive_hierarchy(x.astype(np.float64), [8, 3], 5, 2, 4, 3)
    assert got.levels == 2
    for mine, naive in zip(got.centroids, levels, strict=True):
        np.testing.assert_allclose(mine.numpy(), naive, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got.parents[0].numpy(), parents[0])


def test_cut_quotas_split_evenly_and_give_the_rest_to_the_larger():
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(cut_quotas(np.array([16, 10, 4]), 14, rng), [5, 5, 4])
    assert cut_quotas(np.array([16, 10, 4]), 15, rng).tolist() in ([6, 5, 4], [5, 6, 4])
    np.testing.assert_array_equal(cut_quotas(np.array([3, 1]), 9, rng), [3, 1])
    np.testing.assert_array_equal(cut_quotas(np.array([3, 3, 3]), 0, rng), [0, 0, 0])


def test_balanced_sampling_draws_what_the_paper_draws():
    """Worked by hand: leaves of 10, 1, 5 | 2, 8 | 4 images under three top clusters.

    Top (16, 10, 4 images), target 14: each takes up to 5 (5 + 5 + 4 = 14). Cluster 0's 5 over
    (10, 1, 5): up to 2 each (2 + 1 + 2); cluster 1's 5 over (2, 8): up to 3 (2 + 3); cluster
    2's 4 from its one leaf.
    """
    hierarchy = Hierarchy([torch.zeros(6, 2), torch.zeros(3, 2)],
                          [torch.tensor([0, 0, 0, 1, 1, 2])])
    quotas = leaf_quotas(hierarchy, np.array([10, 1, 5, 2, 8, 4]), 14, seed=0)
    np.testing.assert_array_equal(quotas, [2, 1, 2, 2, 3, 4])
    # three levels: the middle one groups leaves in pairs, the top has one cluster
    three = Hierarchy([torch.zeros(4, 2), torch.zeros(2, 2), torch.zeros(1, 2)],
                      [torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0])])
    # the top's 16 over middle clusters of 32 and 12 images: 8 + 8; then (30, 2) gives its 8
    # as 6 + 2 and (6, 6) as 4 + 4
    np.testing.assert_array_equal(leaf_quotas(three, np.array([30, 2, 6, 6]), 16, seed=0),
                                  [6, 2, 4, 4])
    assert leaf_quotas(three, np.array([30, 2, 6, 6]), 100, seed=0).tolist() == [30, 2, 6, 6]


def test_best_per_group_takes_the_smallest_scores_of_each_group():
    group = torch.tensor([0, 1, 0, 0, 1, 2])
    score = torch.tensor([0.5, 0.1, 0.2, 0.9, 0.3, 0.4], dtype=torch.float64)
    keep = best_per_group(group, score, torch.tensor([2, 1, 0]))
    assert keep.tolist() == [True, True, True, False, False, False]


def test_row_keys_are_uniform_and_seeded():
    keys = row_keys(np.arange(100_000), 0)
    assert keys.min() >= 0 and keys.max() < 1 and abs(keys.mean() - 0.5) < 0.01
    assert np.array_equal(keys[:10], row_keys(np.arange(10), 0))
    assert not np.array_equal(keys[:10], row_keys(np.arange(10), 1))
