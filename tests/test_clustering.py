"""DeepCluster's clustering in one process: PCA-whitening, k-means, re-seeding and NMI.

The same functions on 2 gloo processes against 1: tests/methods/test_distributed_methods.py.
"""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from raysl import clustering
from raysl.clustering import (
    _split_into_empty,
    kmeans,
    nearest,
    normalized_mutual_info,
    pca_whiten,
    whitened,
)


def blobs(n_per: int = 30, k: int = 4, d: int = 8, seed: int = 0
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` tight, well-separated Gaussian blobs: (k * n_per, d) points and their blob."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 10
    truth = torch.arange(k).repeat_interleave(n_per)
    return centres[truth] + 0.1 * torch.randn(k * n_per, d, generator=g), truth


def test_whitened_rows_have_identity_covariance_on_the_top_principal_axes():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(500, 6, generator=g) @ torch.randn(6, 6, generator=g) + 3.0).double()
    z = whitened(x, 4)
    assert z.shape == (500, 4)
    torch.testing.assert_close(z.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-9,
                               rtol=0)
    cov = z.T @ z / len(z)
    torch.testing.assert_close(cov, torch.eye(4, dtype=torch.float64), atol=1e-9, rtol=0)
    # The same subspace as numpy's SVD of the centred data (a naive PCA): the top 4 right
    # singular vectors span what the whitened axes span.
    centred = (x - x.mean(0)).numpy()
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    projected = torch.from_numpy(centred @ vt[:4].T)
    coef = torch.linalg.lstsq(z, projected).solution
    torch.testing.assert_close(z @ coef, projected, atol=1e-8, rtol=0)


def test_whitening_a_chunk_at_a_time_equals_whitening_at_once(monkeypatch):
    """Bounded memory (a chunk's float64 copies) changes nothing but the summation order."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 6, generator=g) @ torch.randn(6, 6, generator=g) + 2.0
    whole, unit = whitened(x, 4), pca_whiten(x, 4)
    monkeypatch.setattr(clustering, "WHITEN_ROWS", 7)  # 43 chunks, the last of 6 rows
    torch.testing.assert_close(whitened(x, 4), whole, atol=1e-9, rtol=0)
    torch.testing.assert_close(pca_whiten(x, 4), unit, atol=1e-6, rtol=0)


def test_pca_whiten_gives_unit_rows_and_cuts_dim_to_the_features():
    x, _ = blobs()
    out = pca_whiten(x, 256)  # more than the 8 dimensions there are
    assert out.shape == (len(x), 8) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(len(x)))


def naive_lloyd(x: torch.Tensor, centroids: torch.Tensor, iters: int) -> torch.Tensor:
    """Lloyd's algorithm as the textbook writes it: point by point, cluster by cluster."""
    c = centroids.double().clone()
    pts = x.double()
    for _ in range(iters):
        owner = [min(range(len(c)), key=lambda j, p=p: float(((p - c[j]) ** 2).sum()))
                 for p in pts]
        for j in range(len(c)):
            mine = [pts[i] for i in range(len(pts)) if owner[i] == j]
            if mine:
                c[j] = torch.stack(mine).mean(0)
    return c


def test_kmeans_matches_a_naive_lloyd_from_the_same_start():
    x, _ = blobs(n_per=10, k=3, d=3, seed=2)
    x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(5))  # overlapping
    index = torch.arange(len(x))
    one_step = kmeans(x, index, 3, iters=0, seed=7)  # 0 iterations: the initial centroids
    done = kmeans(x, index, 3, iters=6, seed=7)
    want = naive_lloyd(x, one_step.centroids, 6)
    torch.testing.assert_close(done.centroids.double(), want, rtol=1e-5, atol=1e-5)
    assert done.reseeded == 0


def test_kmeans_finds_separated_blobs_and_labels_every_index():
    x, truth = blobs()
    result = kmeans(x, torch.arange(len(x)), 4, iters=20, seed=0)
    assert normalized_mutual_info(result.assignment, truth) == pytest.approx(1.0)
    assert sorted(result.sizes.tolist()) == [30, 30, 30, 30] and result.images == 120
    assert result.inertia < 0.1 * 8 * 1.5  # ~ the blobs' variance (0.1^2 per dimension x 8)


def test_kmeans_does_not_depend_on_the_row_order():
    """Which rows a worker holds, and in what order, changes nothing (what 2 workers rely on)."""
    x, _ = blobs(n_per=20, k=5, seed=3)
    x = x + 4 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))  # overlapping
    index = torch.arange(len(x))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(9))
    a = kmeans(x, index, 5, iters=10, seed=4)
    b = kmeans(x[perm], index[perm], 5, iters=10, seed=4)
    assert torch.equal(a.assignment, b.assignment)
    torch.testing.assert_close(a.centroids, b.centroids)
    c = kmeans(x, index, 5, iters=10, seed=5)  # ... but the seed does
    assert not torch.equal(a.assignment, c.assignment)


def test_an_index_no_worker_had_is_unassigned():
    x, _ = blobs(n_per=5, k=2)
    index = torch.arange(len(x)) * 2  # every other index missing
    table = kmeans(x, index, 2, iters=5, seed=0).assignment
    assert len(table) == 2 * len(x) - 1
    assert (table[1::2] == -1).all() and (table[0::2] >= 0).all()


def test_kmeans_needs_as_many_images_as_clusters():
    x, _ = blobs(n_per=2, k=2)
    with pytest.raises(ValueError, match="k-means of 5 clusters needs at least 5 images; the "
                                         "workers hold 4"):
        kmeans(x, torch.arange(4), 5, iters=1, seed=0)


def test_an_empty_cluster_takes_half_of_a_split_one():
    centroids = torch.tensor([[9.0, 9.0], [1.0, 2.0], [5.0, 5.0]])
    counts = torch.tensor([0.0, 10.0, 1.0], dtype=torch.float64)  # only cluster 1 can split
    assert _split_into_empty(centroids, counts, torch.Generator().manual_seed(0)) == 1
    eps = 1 / 1024
    torch.testing.assert_close(centroids[0], torch.tensor([1 + eps, 2 * (1 - eps)]))
    torch.testing.assert_close(centroids[1], torch.tensor([1 - eps, 2 * (1 + eps)]))
    assert counts.tolist() == [5.0, 5.0, 1.0]
    # The split pair now divides the points that were cluster 1's between them.
    pts = torch.tensor([[0.9, 2.1], [1.1, 1.9]])
    labels, _ = nearest(pts, centroids)
    assert sorted(labels.tolist()) == [0, 1]


def test_kmeans_reseeds_clusters_left_empty():
    # 10 copies of each of 3 points: of 4 initial centroids (4 of the 30 rows), two are the
    # same point, and the second of them gets no row (ties go to the lower id): empty, it is
    # re-seeded by splitting a cluster, in every iteration.
    places = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = places.repeat_interleave(10, dim=0)
    result = kmeans(x, torch.arange(30), 4, iters=5, seed=0)
    assert result.reseeded >= 1
    assert int(result.sizes.sum()) == 30 and result.inertia < 1e-3


def naive_nmi(a: list[int], b: list[int]) -> float:
    """The paper's eq. 4, NMI(A; B) = I(A; B) / sqrt(H(A) H(B)), from counts."""
    n = len(a)
    pa, pb, pab = Counter(a), Counter(b), Counter(zip(a, b, strict=True))
    mutual = sum(c / n * math.log((c / n) / (pa[i] / n * pb[j] / n)) for (i, j), c in pab.items())
    ha = -sum(c / n * math.log(c / n) for c in pa.values())
    hb = -sum(c / n * math.log(c / n) for c in pb.values())
    return mutual / math.sqrt(ha * hb)


def test_nmi_matches_the_papers_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (200,), generator=g)
    b = torch.where(torch.rand(200, generator=g) < 0.6, a, torch.randint(0, 7, (200,),
                                                                          generator=g))
    assert normalized_mutual_info(a, b) == pytest.approx(naive_nmi(a.tolist(), b.tolist()))


def test_nmi_is_1_for_a_renaming_and_about_0_for_independent_labelings():
    a = torch.randint(0, 10, (5000,), generator=torch.Generator().manual_seed(0))
    assert normalized_mutual_info(a, (a * 7 + 3) % 10) == pytest.approx(1.0)
    other = torch.randint(0, 10, (5000,), generator=torch.Generator().manual_seed(1))
    assert normalized_mutual_info(a, other) < 0.01
    # Unassigned rows (-1) are left out of both.
    assert normalized_mutual_info(torch.tensor([0, 0, 1, 1, -1]),
                                  torch.tensor([1, 1, 0, 0, 0])) == pytest.approx(1.0)
