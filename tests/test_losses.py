"""Every loss of raysl.losses against a naive transcription of its paper, analytic values,
stop-gradients, and 2 gloo processes with DDP vs 1 process on the concatenated batch.

The ``naive_*`` references are plain Python loops over samples and dimensions in float64,
transcribed from the papers' pseudocode/equations; they never call raysl.
"""

import cmath
import math
from collections.abc import Callable, Sequence

import gloo_harness as gh
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from raysl import distributed
from raysl.losses import (
    barlow_twins,
    byol_regression,
    dino,
    ema_center,
    feature_distillation,
    ibot_patch_loss,
    info_nce_queue,
    koleo,
    lejepa,
    moco_v3_contrastive,
    nearest_neighbours,
    negative_cosine,
    nnclr_contrastive,
    nt_xent,
    self_distillation,
    sigreg,
    sigreg_directions,
    sinkhorn_knopp,
    standardised_targets,
    swapped_prediction,
    vicreg,
)

Rows = Sequence[Sequence[float]]  # a (N, D) matrix as nested sequences (numpy arrays work)


# ---------------------------------- small loop helpers ----------------------------------------


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b, strict=True))


def _unit(v: Sequence[float]) -> list[float]:
    """v / ||v||_2."""
    norm = math.sqrt(_dot(v, v))
    return [float(x) / norm for x in v]


def _log_softmax(logits: Sequence[float]) -> list[float]:
    """log(exp(l_k) / sum_j exp(l_j)), shifted by the max for finite exp()."""
    top = max(logits)
    log_z = top + math.log(sum(math.exp(x - top) for x in logits))
    return [x - log_z for x in logits]


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


def _t(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _hadamard_columns(n: int, d: int) -> np.ndarray:
    """(n, d) with n a power of 2: columns 1..d of Sylvester's Hadamard matrix H_n.

    Every column is +/-1 with mean 0 and biased variance 1, and the columns are orthogonal: the
    embeddings are standardised and perfectly decorrelated.
    """
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    assert h.shape[0] == n and d < n
    return h[:, 1:d + 1].copy()


# ------------------------------ naive paper transcriptions ------------------------------------


def naive_nt_xent(z0: np.ndarray, z1: np.ndarray, tau: float) -> float:
    """SimCLR eq. (1) and Algorithm 1, loop by loop, in float64 (arXiv:2002.05709)."""
    n = len(z0)
    z = np.empty((2 * n, z0.shape[1]))
    z[0::2], z[1::2] = z0, z1  # z_{2k-1}, z_{2k}: the two views of image k
    z = z / np.linalg.norm(z, axis=1, keepdims=True)

    def sim(i: int, j: int) -> float:
        return float(z[i] @ z[j])

    def ell(i: int, j: int) -> float:
        denom = sum(math.exp(sim(i, k) / tau) for k in range(2 * n) if k != i)
        return -math.log(math.exp(sim(i, j) / tau) / denom)

    return sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


def naive_info_nce_queue(q: Rows, k: Rows, queue: Rows, tau: float) -> float:
    """MoCo Algorithm 1 (arXiv:1911.05722) with the encoders' L2-normalised outputs.

    ``l_pos = q.k``, ``l_neg = q.queue_j`` for every queue entry j, ``logits = [l_pos, l_neg]/t``
    and the loss is CrossEntropy with label 0 (the positive), averaged over the N queries.
    """
    total = 0.0
    for i in range(len(q)):
        qi, ki = _unit(q[i]), _unit(k[i])
        logits = [_dot(qi, ki) / tau] + [_dot(qi, neg) / tau for neg in queue]
        total += -_log_softmax(logits)[0]
    return total / len(q)


def naive_moco_v3(q: Rows, k: Rows, tau: float) -> float:
    """MoCo v3 Algorithm 1 ``ctr(q, k)`` (arXiv:2104.02057), q and k normalised.

    ``logits = q k^T`` (N x N), ``labels = range(N)`` (positives on the diagonal),
    ``loss = CrossEntropy(logits / tau, labels) * 2 * tau``.
    """
    n = len(q)
    qs, ks = [_unit(r) for r in q], [_unit(r) for r in k]
    ce = sum(-_log_softmax([_dot(qs[i], ks[j]) / tau for j in range(n)])[i] for i in range(n))
    return 2 * tau * ce / n


def naive_nnclr(z: Rows, p: Rows, support: Rows, tau: float) -> float:
    """NNCLR eq. 2 (arXiv:2104.14548) with the prediction head, one direction.

    ``NN(z_i, Q) = argmax_q (z_i . q)`` over the support set Q (cosine, all normalised), then
    ``L_i = -log exp(NN(z_i) . p_i / tau) / sum_k exp(NN(z_i) . p_k / tau)``, batch mean.
    """
    n = len(z)
    qs, ps = [_unit(r) for r in support], [_unit(r) for r in p]
    total = 0.0
    for i in range(n):
        zi = _unit(z[i])
        nn = max(qs, key=lambda q: _dot(zi, q))
        total += -_log_softmax([_dot(nn, ps[k]) / tau for k in range(n)])[i]
    return total / n


def naive_negative_cosine(p: Rows, z: Rows) -> float:
    """SimSiam Algorithm 1 (arXiv:2011.10566): ``D(p, z) = -(p/||p|| . z/||z||)``, batch mean."""
    return -sum(_dot(_unit(p[i]), _unit(z[i])) for i in range(len(p))) / len(p)


def naive_byol(p: Rows, z: Rows) -> float:
    """BYOL eq. 2 (arXiv:2006.07733): ``||q_bar - z_bar||_2^2`` with unit vectors, batch mean.

    Written as the squared distance itself, not via its closed form 2 - 2 cos.
    """
    total = 0.0
    for i in range(len(p)):
        pu, zu = _unit(p[i]), _unit(z[i])
        total += sum((pu[j] - zu[j]) ** 2 for j in range(len(pu)))
    return total / len(p)


def _batch_norm(z: np.ndarray, eps: float) -> np.ndarray:
    """BatchNorm1d(affine=False) in training mode: (z - mean) / sqrt(biased var + eps)."""
    n, d = z.shape
    out = np.empty((n, d))
    for j in range(d):
        mean = sum(z[b, j] for b in range(n)) / n
        var = sum((z[b, j] - mean) ** 2 for b in range(n)) / n
        for b in range(n):
            out[b, j] = (z[b, j] - mean) / math.sqrt(var + eps)
    return out


def naive_barlow_twins(za: np.ndarray, zb: np.ndarray, lam: float) -> float:
    """Barlow Twins Algorithm 1 (arXiv:2103.03230).

    ``c = bn(z_a).T @ bn(z_b) / N`` (bn: BatchNorm1d, no affine, eps 1e-5), then
    ``sum_i (1 - c_ii)^2 + lambda * sum_{i != j} c_ij^2``.
    """
    n, d = za.shape
    a, b_ = _batch_norm(za, 1e-5), _batch_norm(zb, 1e-5)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[b, i] * b_[b, j] for b in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lam * c_ij**2
    return loss


def naive_vicreg(za: np.ndarray, zb: np.ndarray, lam: float = 25.0, mu: float = 25.0,
                 nu: float = 1.0, eps: float = 1e-4) -> tuple[float, float, float, float]:
    """VICReg Algorithm 1 (arXiv:2105.04906) as in the official main_vicreg.py.

    Returns ``(loss, invariance, variance, covariance)`` with
    invariance ``mse_loss(z_a, z_b)`` (mean over N*D entries); variance
    ``(mean_j relu(1 - std_j(z_a)) + mean_j relu(1 - std_j(z_b))) / 2`` with
    ``std = sqrt(unbiased var + eps)``; covariance ``sum_{i != j} cov_ij^2 / D`` for each view,
    summed, with ``cov = (z - mean).T (z - mean) / (N - 1)``.
    """
    n, d = za.shape
    invariance = sum((za[b, j] - zb[b, j]) ** 2 for b in range(n) for j in range(d)) / (n * d)

    def means(z: np.ndarray) -> list[float]:
        return [sum(z[b, j] for b in range(n)) / n for j in range(d)]

    def std_term(z: np.ndarray) -> float:
        m = means(z)
        stds = [math.sqrt(sum((z[b, j] - m[j]) ** 2 for b in range(n)) / (n - 1) + eps)
                for j in range(d)]
        return sum(max(0.0, 1 - s) for s in stds) / d

    def cov_term(z: np.ndarray) -> float:
        m = means(z)
        total = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    cov = sum((z[b, i] - m[i]) * (z[b, j] - m[j]) for b in range(n)) / (n - 1)
                    total += cov**2
        return total / d

    variance = 0.5 * (std_term(za) + std_term(zb))
    covariance = cov_term(za) + cov_term(zb)
    return lam * invariance + mu * variance + nu * covariance, invariance, variance, covariance


def naive_sinkhorn(scores: np.ndarray, eps: float, iterations: int) -> np.ndarray:
    """``distributed_sinkhorn`` of SwAV's main_swav.py (arXiv:2006.09882) for one process.

    ``Q = exp(scores / eps).T`` (K x B), ``Q /= sum(Q)``; per iteration: every row (prototype)
    divided by its sum and by K, then every column (sample) divided by its sum and by B; finally
    ``Q *= B`` and the codes are ``Q.T`` (B x K).
    """
    b, k = scores.shape
    q = [[math.exp(scores[i, p] / eps) for i in range(b)] for p in range(k)]  # (K, B)
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        for p in range(k):
            row_sum = sum(q[p])
            q[p] = [v / row_sum / k for v in q[p]]
        for i in range(b):
            col_sum = sum(q[p][i] for p in range(k))
            for p in range(k):
                q[p][i] = q[p][i] / col_sum / b
    return np.array([[q[p][i] * b for p in range(k)] for i in range(b)])


def naive_swapped_prediction(scores: list[np.ndarray], codes: list[np.ndarray],
                             temp: float) -> float:
    """SwAV's swapped prediction (eq. 1, eq. 2 and main_swav.py, arXiv:2006.09882).

    For each crop i with codes q_i, every other crop v predicts them:
    ``-mean_b sum_k q_i[b, k] log softmax(scores_v[b] / T)[k]``; the subloss of crop i is the mean
    over the other crops, and the loss the mean over the crops with codes.
    """
    loss = 0.0
    for i, q in enumerate(codes):
        sub = 0.0
        for v, s in enumerate(scores):
            if v == i:
                continue
            for b in range(len(q)):
                log_p = _log_softmax([x / temp for x in s[b]])
                sub -= sum(q[b][k] * log_p[k] for k in range(len(log_p))) / len(q)
        loss += sub / (len(scores) - 1)
    return loss / len(codes)


def naive_dino(student: list[np.ndarray], teacher: list[np.ndarray], center: Sequence[float],
               tps: float, tpt: float) -> float:
    """DINO Algorithm 1 (arXiv:2104.14294), multi-crop as in the official DINOLoss.

    ``H(t, s) = -sum_k softmax((t - C) / tpt)[k] * log softmax(s / tps)[k]``, mean over the batch,
    averaged over every pair (teacher crop i, student crop v) with v != i.
    """
    total, n_terms = 0.0, 0
    for i, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == i:
                continue
            h = 0.0
            for b in range(len(t)):
                t_log = _log_softmax([(t[b][k] - center[k]) / tpt for k in range(len(center))])
                s_log = _log_softmax([x / tps for x in s[b]])
                h -= sum(math.exp(t_log[k]) * s_log[k] for k in range(len(center)))
            total += h / len(t)
            n_terms += 1
    return total / n_terms


def naive_ema_center(center: Sequence[float], teacher: np.ndarray, m: float) -> list[float]:
    """DINO Algorithm 1: ``C = m * C + (1 - m) * cat([t1, t2]).mean(dim=0)``."""
    n, k = teacher.shape
    return [m * center[j] + (1 - m) * sum(teacher[b, j] for b in range(n)) / n for j in range(k)]


# ------------------------------- against the references ---------------------------------------

TIGHT = {"rel": 1e-9, "abs": 1e-12}


@pytest.mark.parametrize("b", [1, 3, 8])
@pytest.mark.parametrize("d", [2, 16])
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_nt_xent_matches_paper_reference(b: int, d: int, tau: float):
    g = torch.Generator().manual_seed(b * 100 + d)
    z0, z1 = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    ours = nt_xent(z0.double(), z1.double(), tau).item()
    assert ours == pytest.approx(naive_nt_xent(z0.numpy(), z1.numpy(), tau), **TIGHT)


@pytest.mark.parametrize(("b", "d", "k"), [(1, 3, 1), (5, 4, 7), (8, 16, 32)])
@pytest.mark.parametrize("tau", [0.07, 0.2, 1.0])
def test_info_nce_queue_matches_moco_algorithm_1(b: int, d: int, k: int, tau: float):
    rng = np.random.default_rng(b * 1000 + k)
    q, key = _rand(rng, b, d), 3.0 * _rand(rng, b, d)
    queue = _rand(rng, k, d)
    queue /= np.linalg.norm(queue, axis=1, keepdims=True)  # MoCo's queue holds normalised keys
    ours = info_nce_queue(_t(q), _t(key), _t(queue), tau).item()
    assert ours == pytest.approx(naive_info_nce_queue(q, key, queue, tau), **TIGHT)


@pytest.mark.parametrize(("b", "d"), [(1, 3), (2, 4), (6, 16)])
@pytest.mark.parametrize("tau", [0.2, 1.0])
def test_moco_v3_matches_algorithm_1(b: int, d: int, tau: float):
    rng = np.random.default_rng(b * 10 + d)
    q, k = _rand(rng, b, d), 0.5 * _rand(rng, b, d)
    ours = moco_v3_contrastive(_t(q), _t(k), tau).item()
    assert ours == pytest.approx(naive_moco_v3(q, k, tau), **TIGHT)


@pytest.mark.parametrize(("b", "d"), [(1, 3), (7, 8)])
def test_negative_cosine_and_byol_match_their_papers(b: int, d: int):
    rng = np.random.default_rng(b)
    p, z = _rand(rng, b, d), 4.0 * _rand(rng, b, d)
    assert negative_cosine(_t(p), _t(z)).item() == pytest.approx(naive_negative_cosine(p, z),
                                                                  **TIGHT)
    assert byol_regression(_t(p), _t(z)).item() == pytest.approx(naive_byol(p, z), **TIGHT)


@pytest.mark.parametrize(("n", "d"), [(2, 2), (6, 3), (10, 8)])
@pytest.mark.parametrize("lam", [5e-3, 1.0])
def test_barlow_twins_matches_algorithm_1(n: int, d: int, lam: float):
    rng = np.random.default_rng(n * 10 + d)
    scale = np.linspace(0.3, 3.0, d)  # per-dimension scales and offsets: BN must remove them
    za = _rand(rng, n, d) * scale + 1.0
    zb = 0.6 * za + 0.8 * _rand(rng, n, d)  # correlated with za, so C is far from 0 and from I
    ours = barlow_twins(_t(za), _t(zb), lam).item()
    assert ours == pytest.approx(naive_barlow_twins(za, zb, lam), **TIGHT)


@pytest.mark.parametrize(("n", "d"), [(2, 2), (5, 3), (12, 8)])
@pytest.mark.parametrize("coeffs", [(25.0, 25.0, 1.0), (1.0, 3.0, 0.5)])
def test_vicreg_matches_algorithm_1(n: int, d: int, coeffs: tuple[float, float, float]):
    rng = np.random.default_rng(n * 10 + d)
    scale = np.linspace(0.2, 2.5, d)  # some stds below 1 (hinge active), some above
    za = _rand(rng, n, d) * scale
    zb = za + 0.5 * _rand(rng, n, d) * scale
    loss, terms = vicreg(_t(za), _t(zb), *coeffs)
    want = naive_vicreg(za, zb, *coeffs)
    got = (loss.item(), terms["invariance"].item(), terms["variance"].item(),
           terms["covariance"].item())
    assert got == pytest.approx(want, **TIGHT)


# sinkhorn_knopp computes in float32 whatever the input dtype (`scores.float()`), so it can only
# match the float64 reference to float32 precision: see the report on that line.
SINKHORN_CLOSE = {"rtol": 1e-5, "atol": 1e-7}


@pytest.mark.parametrize(("b", "k"), [(1, 3), (5, 4), (16, 10)])
@pytest.mark.parametrize("eps", [0.05, 0.5])
@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_sinkhorn_matches_swav_distributed_sinkhorn(b: int, k: int, eps: float,
                                                    iterations: int):
    rng = np.random.default_rng(b * 100 + k)
    scores = _rand(rng, b, k)
    scores /= np.linalg.norm(scores, axis=1, keepdims=True)  # cosine scores, as in SwAV
    ours = sinkhorn_knopp(_t(scores), eps, iterations).double().numpy()
    np.testing.assert_allclose(ours, naive_sinkhorn(scores, eps, iterations), **SINKHORN_CLOSE)


@pytest.mark.parametrize(("n_crops", "n_codes"), [(2, 1), (2, 2), (5, 2)])
@pytest.mark.parametrize("temp", [0.1, 0.5])
def test_swapped_prediction_matches_swav(n_crops: int, n_codes: int, temp: float):
    rng = np.random.default_rng(n_crops * 10 + n_codes)
    b, k = 4, 6
    scores = [_rand(rng, b, k) for _ in range(n_crops)]
    codes = [rng.dirichlet(np.ones(k), size=b) for _ in range(n_codes)]  # rows are distributions
    ours = swapped_prediction([_t(s) for s in scores], [_t(c) for c in codes], temp).item()
    assert ours == pytest.approx(naive_swapped_prediction(scores, codes, temp), **TIGHT)


@pytest.mark.parametrize(("n_student", "n_teacher"), [(2, 1), (2, 2), (6, 2)])
@pytest.mark.parametrize(("tps", "tpt"), [(0.1, 0.04), (0.5, 0.07)])
def test_dino_matches_algorithm_1(n_student: int, n_teacher: int, tps: float, tpt: float):
    rng = np.random.default_rng(n_student * 10 + n_teacher)
    b, k = 3, 7
    student = [_rand(rng, b, k) for _ in range(n_student)]
    teacher = [_rand(rng, b, k) for _ in range(n_teacher)]
    center = 0.3 * _rand(rng, k)
    ours = dino([_t(s) for s in student], [_t(t) for t in teacher], _t(center[None]), tps,
                tpt).item()
    assert ours == pytest.approx(naive_dino(student, teacher, center, tps, tpt), **TIGHT)


@pytest.mark.parametrize("m", [0.0, 0.9, 1.0])
def test_ema_center_matches_algorithm_1(m: float):
    rng = np.random.default_rng(0)
    center, teacher = _rand(rng, 5), _rand(rng, 6, 5)
    ours = ema_center(_t(center[None]), _t(teacher), m)
    # ema_center sums the teacher outputs in float32 (`.float()`): float32 precision only.
    np.testing.assert_allclose(ours.double().numpy()[0], naive_ema_center(center, teacher, m),
                               rtol=1e-6, atol=1e-7)


# ------------------------------------ analytic values -----------------------------------------


def test_nt_xent_collinear_embeddings_give_log_2n_minus_1():
    # Every similarity is 1: each anchor's positive is one of 2N - 1 equal logits.
    b = 5
    z = torch.ones(b, 4)
    assert nt_xent(z, z, 0.3).item() == pytest.approx(math.log(2 * b - 1), rel=1e-6)


def test_nt_xent_symmetric_in_the_two_views():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    assert nt_xent(z0, z1, 0.2).item() == pytest.approx(nt_xent(z1, z0, 0.2).item(), rel=1e-6)


def test_nt_xent_perfect_alignment_beats_random():
    z = torch.eye(8)
    assert nt_xent(z, z, 0.1).item() < nt_xent(z, torch.roll(z, 1, 0), 0.1).item()


def test_nt_xent_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.ones(2, 2), torch.ones(2, 2), 0.0)
    with pytest.raises(ValueError, match="both be"):
        nt_xent(torch.ones(2, 2), torch.ones(3, 2), 0.5)


@pytest.mark.parametrize("n_queue", [1, 9])
def test_info_nce_queue_of_a_queue_of_copies_of_the_key_is_log_k_plus_1(n_queue: int):
    # Every negative equals the positive: K + 1 equal logits whatever q is.
    g = torch.Generator().manual_seed(n_queue)
    q, key = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.ones(4, 5).double()
    queue = F.normalize(torch.ones(n_queue, 5, dtype=torch.float64), dim=1)
    got = info_nce_queue(q, key, queue, 0.2).item()
    assert got == pytest.approx(math.log(n_queue + 1), **TIGHT)


def test_info_nce_queue_with_key_equal_to_query_and_orthogonal_queue():
    # l_pos = 1 / tau, every l_neg = 0: loss = log(1 + K exp(-1 / tau)).
    eye = torch.eye(6, dtype=torch.float64)
    q, queue, tau = eye[:2], eye[2:], 0.5
    got = info_nce_queue(3.0 * q, q, queue, tau).item()
    assert got == pytest.approx(math.log(1 + 4 * math.exp(-1 / tau)), **TIGHT)


@pytest.mark.parametrize("tau", [0.1, 0.2, 1.0])
def test_moco_v3_collinear_embeddings_give_2_tau_log_b(tau: float):
    b = 6
    q, k = torch.ones(b, 3, dtype=torch.float64), 2 * torch.ones(b, 3, dtype=torch.float64)
    assert moco_v3_contrastive(q, k, tau).item() == pytest.approx(2 * tau * math.log(b), **TIGHT)


def test_moco_v3_orthonormal_matching_keys():
    # Diagonal logits 1 / tau, the others 0: 2 tau log(1 + (B - 1) exp(-1 / tau)).
    b, tau = 5, 0.2
    eye = torch.eye(b, dtype=torch.float64)
    want = 2 * tau * math.log(1 + (b - 1) * math.exp(-1 / tau))
    assert moco_v3_contrastive(eye, eye, tau).item() == pytest.approx(want, **TIGHT)


def test_negative_cosine_and_byol_known_values():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(5, 7, generator=g, dtype=torch.float64)
    orth = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    assert negative_cosine(p, 3 * p).item() == pytest.approx(-1.0, **TIGHT)
    assert negative_cosine(p, -p).item() == pytest.approx(1.0, **TIGHT)
    assert negative_cosine(orth, orth.flip(1)).item() == pytest.approx(0.0, **TIGHT)
    assert byol_regression(p, 3 * p).item() == pytest.approx(0.0, **TIGHT)
    assert byol_regression(p, -p).item() == pytest.approx(4.0, **TIGHT)
    assert byol_regression(orth, orth.flip(1)).item() == pytest.approx(2.0, **TIGHT)


@pytest.mark.parametrize(("n", "d"), [(4, 3), (8, 5), (16, 8)])
def test_barlow_twins_of_identical_decorrelated_standardised_views_is_zero(n: int, d: int):
    # Orthogonal +/-1 columns: C = I / (1 + 1e-5), the BatchNorm eps being the only deviation.
    z = _t(_hadamard_columns(n, d))
    c_ii = 1 / (1 + 1e-5)
    got = barlow_twins(z, z.clone(), lambda_offdiag=1.0).item()
    assert got == pytest.approx(d * (1 - c_ii) ** 2, rel=1e-9, abs=1e-15)
    assert got < 1e-8
    # Sign flip of one view: C = -I, so every diagonal term is (1 + 1/(1 + eps))^2 ~ 4.
    assert barlow_twins(z, -z, 1.0).item() == pytest.approx(d * (1 + c_ii) ** 2, **TIGHT)


def test_barlow_twins_redundancy_term_counts_off_diagonal_correlations():
    # Two identical columns in both views: C = [[1, 1], [1, 1]] / (1 + eps); off-diagonal 2 c^2.
    col = _hadamard_columns(8, 1)
    z = _t(np.hstack([col, col]))
    c = 1 / (1 + 1e-5)
    want = 2 * (1 - c) ** 2 + 0.25 * 2 * c**2
    assert barlow_twins(z, z, lambda_offdiag=0.25).item() == pytest.approx(want, **TIGHT)


def test_vicreg_identical_spread_decorrelated_views_cost_nothing():
    n, d = 8, 5
    z = _t(2.0 * _hadamard_columns(n, d))  # every std = 2 sqrt(n / (n - 1)) >= 1, cov = 0
    loss, terms = vicreg(z, z.clone())
    assert terms["invariance"].item() == 0.0
    assert terms["variance"].item() == 0.0
    assert terms["covariance"].item() == pytest.approx(0.0, abs=1e-12)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


def test_vicreg_collapsed_embeddings_pay_the_full_variance_hinge():
    # Constant embeddings: std = sqrt(0 + eps) = 0.01 in every dimension, covariance 0.
    z = torch.full((6, 4), 0.7, dtype=torch.float64)
    loss, terms = vicreg(z, z.clone(), eps=1e-4)
    assert terms["variance"].item() == pytest.approx(0.99, **TIGHT)
    assert terms["covariance"].item() == pytest.approx(0.0, abs=1e-30)
    assert loss.item() == pytest.approx(25 * 0.99, **TIGHT)


def test_vicreg_covariance_of_two_equal_columns():
    # x = [c, c] with unit-variance c: cov = [[1, 1], [1, 1]], off-diagonal squares 2, / D = 1.
    col = _hadamard_columns(8, 1) * math.sqrt(7 / 8)  # unbiased variance exactly 1
    z = _t(np.hstack([col, col]))
    _, terms = vicreg(z, z)
    assert terms["covariance"].item() == pytest.approx(2.0, **TIGHT)  # 1 per view, two views


@pytest.mark.parametrize(("b", "k"), [(6, 4), (12, 3), (5, 5)])
def test_sinkhorn_codes_are_distributions_and_equipartition_the_batch(b: int, k: int):
    g = torch.Generator().manual_seed(b * k)
    scores = F.normalize(torch.randn(b, k, generator=g), dim=1)
    codes = sinkhorn_knopp(scores, epsilon=0.5, iterations=200)
    assert codes.shape == (b, k) and (codes >= 0).all()
    # The last step normalises the samples: each row sums to 1 exactly (up to rounding).
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(b), rtol=0, atol=1e-6)
    # Converged: each prototype receives the same total mass B / K.
    torch.testing.assert_close(codes.sum(dim=0), torch.full((k,), b / k), rtol=1e-4, atol=0)
    # The paper's 3 iterations already roughly equipartition.
    few = sinkhorn_knopp(scores, epsilon=0.5, iterations=3)
    torch.testing.assert_close(few.sum(dim=0), torch.full((k,), b / k), rtol=0.05, atol=0)


def test_sinkhorn_special_inputs():
    # Equal scores: uniform codes. A constant offset and a sample permutation change nothing
    # but the order of the rows.
    assert torch.allclose(sinkhorn_knopp(torch.zeros(4, 5)), torch.full((4, 5), 0.2))
    g = torch.Generator().manual_seed(0)
    scores = F.normalize(torch.randn(8, 4, generator=g), dim=1)
    codes = sinkhorn_knopp(scores)
    torch.testing.assert_close(sinkhorn_knopp(scores + 3.0), codes, rtol=1e-5, atol=1e-6)
    perm = torch.randperm(8, generator=g)
    torch.testing.assert_close(sinkhorn_knopp(scores[perm]), codes[perm], rtol=1e-5, atol=1e-6)
    # Each sample scoring one distinct prototype highest, with the sharp epsilon of the paper:
    # (nearly) one-hot codes on those prototypes.
    onehot = torch.eye(4)[torch.tensor([2, 0, 3, 1])]
    torch.testing.assert_close(sinkhorn_knopp(onehot, epsilon=0.05), onehot, rtol=0, atol=1e-6)


def test_swapped_prediction_known_values():
    b, k = 3, 5
    g = torch.Generator().manual_seed(0)
    codes = torch.softmax(torch.randn(b, k, generator=g, dtype=torch.float64), dim=1)
    uniform = [torch.zeros(b, k, dtype=torch.float64) for _ in range(3)]
    # Uniform predictions: -sum_k q_k log(1/K) = log K for every pair.
    assert swapped_prediction(uniform, [codes, codes], 0.1).item() == pytest.approx(
        math.log(k), **TIGHT)
    # One-hot codes predicted with the same hard scores: the loss is the CE of a single logit.
    onehot = torch.eye(k, dtype=torch.float64)[:b]
    t = 0.5
    want = -math.log(math.exp(1 / t) / (math.exp(1 / t) + k - 1))
    assert swapped_prediction([onehot, onehot], [onehot], t).item() == pytest.approx(want, **TIGHT)


def test_swapped_prediction_rejects_bad_input():
    s = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="crops"):
        swapped_prediction([s], [s], 0.1)
    with pytest.raises(ValueError, match="crops"):
        swapped_prediction([s, s], [], 0.1)


def test_dino_known_values():
    b, k = 4, 6
    g = torch.Generator().manual_seed(0)
    teacher = [torch.randn(b, k, generator=g, dtype=torch.float64) for _ in range(2)]
    center = torch.zeros(1, k, dtype=torch.float64)
    # A uniform student costs log K whatever the teacher.
    flat = [torch.zeros(b, k, dtype=torch.float64) for _ in range(4)]
    assert dino(flat, teacher, center, 0.1, 0.04).item() == pytest.approx(math.log(k), **TIGHT)
    # A teacher equal to the center gives uniform targets: the loss is the mean of
    # -mean_k log softmax(s / tps)[k] over the student crops paired with it.
    s = torch.randn(b, k, generator=g, dtype=torch.float64)
    t = torch.randn(1, k, generator=g, dtype=torch.float64)
    want = -F.log_softmax(s / 0.1, dim=1).mean(dim=1).mean().item()
    got = dino([t.expand(b, k), s], [t.expand(b, k)], t, 0.1, 0.04).item()
    assert got == pytest.approx(want, **TIGHT)
    with pytest.raises(ValueError, match="2 crops"):
        dino([s], [s], center, 0.1, 0.04)


# ------------------------------------- stop-gradients -----------------------------------------

def _queue() -> Tensor:
    return F.normalize(torch.ones(3, 4, dtype=torch.float64), dim=1)


# name -> loss of (online input, stopped input); the stopped input must get no gradient.
STOP_GRAD: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "info_nce_queue k": lambda a, s: info_nce_queue(a, s, _queue(), 0.2),
    "info_nce_queue queue": lambda a, s: info_nce_queue(a, a.detach() + 1, s[:3], 0.2),
    "moco_v3 k": lambda a, s: moco_v3_contrastive(a, s, 0.2),
    "nnclr neighbour": lambda a, s: nnclr_contrastive(s, a, 0.2),
    "negative_cosine z": negative_cosine,
    "byol_regression z": byol_regression,
    "swapped_prediction codes": lambda a, s: swapped_prediction([a, 2 * a], [s.softmax(1)], 0.1),
    "dino teacher": lambda a, s: dino([a, 2 * a], [s, 3 * s], torch.zeros(1, 4), 0.1, 0.04),
}


@pytest.mark.parametrize("name", list(STOP_GRAD))
def test_no_gradient_flows_into_stop_gradient_arguments(name: str):
    g = torch.Generator().manual_seed(0)
    online = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    stopped = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    STOP_GRAD[name](online, stopped).backward()
    assert online.grad is not None and online.grad.abs().sum() > 0
    assert stopped.grad is None


def test_sinkhorn_and_ema_center_are_constants():
    scores = torch.randn(4, 3, requires_grad=True)
    assert not sinkhorn_knopp(scores).requires_grad
    assert not ema_center(torch.zeros(1, 3), scores, 0.9).requires_grad
    assert not nearest_neighbours(scores, torch.eye(3, requires_grad=True)).requires_grad


# ------------- distributed: 2 gloo processes with DDP == 1 process on the whole batch ---------
# Each case gets one (B, 5) embedding per view from a shared Linear (tests/gloo_harness.py).

TAU = 0.3
QUEUE = F.normalize(torch.linspace(-1.0, 1.0, 3 * gh.D_OUT, dtype=torch.float64)
                    .reshape(3, gh.D_OUT).cos(), dim=1)  # the same queue on every rank
CENTER = torch.linspace(-0.2, 0.2, gh.D_OUT, dtype=torch.float64)[None]


def _case_nt_xent(e: list[Tensor]) -> gh.Outputs:
    return gh.Outputs(nt_xent(e[0], e[1], TAU))


def _case_info_nce_queue(e: list[Tensor]) -> gh.Outputs:
    return gh.Outputs(info_nce_queue(e[0], e[1], QUEUE, TAU))


def _case_moco_v3(e: list[Tensor]) -> gh.Outputs:
    return gh.Outputs(moco_v3_contrastive(e[0], e[1], TAU))


def _case_nnclr(e: list[Tensor]) -> gh.Outputs:
    # Neighbours of view 0 in a fixed support set (the same on every rank); view 1 predicts.
    nn = nearest_neighbours(e[0], QUEUE)
    return gh.Outputs(nnclr_contrastive(nn, e[1], TAU), rows=nn)


def _case_negative_cosine(e: list[Tensor]) -> gh.Outputs:
    return gh.Outputs(negative_cosine(e[0], e[1]))


def _case_byol(e: list[Tensor]) -> gh.Outputs:
    return gh.Outputs(byol_regression(e[0], e[1]))


def _case_barlow_twins(e: list[Tensor]) -> gh.Outputs:
    loss = barlow_twins(e[0], e[1], lambda_offdiag=0.1)
    return gh.Outputs(loss, same=loss)  # the global loss: identical on every rank


def _case_vicreg(e: list[Tensor]) -> gh.Outputs:
    loss, terms = vicreg(e[0], e[1])
    return gh.Outputs(loss, same=torch.stack([terms["invariance"], terms["variance"],
                                              terms["covariance"], loss]))


def _case_swav(e: list[Tensor]) -> gh.Outputs:
    # Two global crops with codes and one local crop; cosine scores against the 5 "prototypes".
    scores = [F.normalize(x, dim=1) for x in e]
    codes = [sinkhorn_knopp(s.detach(), epsilon=0.05, iterations=3) for s in scores[:2]]
    loss = swapped_prediction(scores, codes, temperature=0.1)
    return gh.Outputs(loss, rows=torch.cat(codes, dim=1))


def _case_dino(e: list[Tensor]) -> gh.Outputs:
    teacher = [(2.0 * x + 0.1).detach() for x in e[:2]]  # a fixed "teacher" of the global crops
    loss = dino(e, teacher, CENTER, student_temp=0.1, teacher_temp=0.04)
    return gh.Outputs(loss, same=ema_center(CENTER, torch.cat(teacher), momentum=0.9))


def _case_sigreg(e: list[Tensor]) -> gh.Outputs:
    # The directions come from the step alone: a global RNG that differs per rank changes nothing.
    torch.manual_seed(100 + distributed.rank())
    directions = sigreg_directions(7, gh.D_OUT, 16)
    value = sigreg(torch.stack(e), directions)  # both views, each tested on its own
    return gh.Outputs(value, same=torch.cat([value[None], directions.double().flatten()]))


def _case_lejepa(e: list[Tensor]) -> gh.Outputs:
    # 2 global views and 1 local; lambda 0.5 so that neither term's gradient hides the other's.
    loss, terms = lejepa(e, 2, sigreg_directions(3, gh.D_OUT, 16), lambd=0.5)
    return gh.Outputs(loss, same=terms["sigreg"])


# DINOv2's masked patches: 3 "patches" per image (the 3 views), masked unevenly over the ranks:
# rank 0 (samples 0-3) masks 4 patches, rank 1 (samples 4-7) 2; samples 2, 3, 5 and 6 none.
PATCH_MASK = torch.tensor([[1, 1, 0], [0, 1, 1], [0, 0, 0], [0, 0, 0],
                           [0, 0, 1], [0, 0, 0], [0, 0, 0], [1, 0, 0]], dtype=torch.bool)
NO_ROWS_ON_RANK_1 = torch.tensor([1, 0, 1, 1, 0, 0, 0, 0], dtype=torch.bool)


def _mine(x: Tensor) -> Tensor:
    """This rank's rows of a global (WORLD * B, ...) tensor; all of it without a process group."""
    return x.chunk(distributed.world_size())[distributed.rank()]


def _case_koleo(e: list[Tensor]) -> gh.Outputs:
    return gh.Outputs(koleo(e[0]))


def _case_ibot(e: list[Tensor]) -> gh.Outputs:
    # The teacher's outputs at the masked patches, centred by Sinkhorn-Knopp over the masked
    # patches of every rank (their count summed over ranks); rows: each sample's codes at its
    # masked patches (0 elsewhere); same: the patch centre of the EMA centring.
    mask = _mine(PATCH_MASK)
    tokens = torch.stack(e, dim=1)  # (B, 3, D)
    teacher = (2.0 * tokens + 0.1).detach()[mask]  # (M, D)
    total = int(distributed.all_reduce_sum(torch.tensor(int(mask.sum()))))
    codes = sinkhorn_knopp(teacher, epsilon=0.1, iterations=3, rows_global=total)
    loss = ibot_patch_loss(tokens[mask], codes.double(), mask, student_temp=0.1)
    rows = torch.zeros(*mask.shape, gh.D_OUT, dtype=codes.dtype)
    rows[mask] = codes
    return gh.Outputs(loss, rows=rows.flatten(1),
                      same=ema_center(CENTER, teacher, momentum=0.9, rows_global=total))


def _case_sinkhorn_no_rows(e: list[Tensor]) -> gh.Outputs:
    # Rank 1 holds none of the 3 rows: its codes are empty, rank 0's those of 1 process.
    keep = _mine(NO_ROWS_ON_RANK_1)
    codes = sinkhorn_knopp(e[0].detach()[keep], epsilon=0.1, iterations=3, rows_global=3)
    rows = torch.zeros(keep.shape[0], gh.D_OUT, dtype=codes.dtype)
    rows[keep] = codes
    return gh.Outputs(0.0 * e[0].sum(), rows=rows)


def _case_standardised_distillation(e: list[Tensor]) -> gh.Outputs:
    # The teacher's features (view 1, detached) standardised with the global batch's moments.
    targets = standardised_targets(e[1].detach() * 3 + 1)
    return gh.Outputs(feature_distillation(e[0], targets), rows=targets.double())


GLOO_CASES = {
    "nt_xent": gh.Case(_case_nt_xent),
    "info_nce_queue": gh.Case(_case_info_nce_queue),
    "moco_v3_contrastive": gh.Case(_case_moco_v3),
    "nearest_neighbours+nnclr_contrastive": gh.Case(_case_nnclr),
    "negative_cosine": gh.Case(_case_negative_cosine),
    "byol_regression": gh.Case(_case_byol),
    "barlow_twins": gh.Case(_case_barlow_twins),
    "vicreg": gh.Case(_case_vicreg),
    "sinkhorn_knopp+swapped_prediction": gh.Case(_case_swav, n_views=3),
    "dino+ema_center": gh.Case(_case_dino, n_views=3),
    "sigreg+sigreg_directions": gh.Case(_case_sigreg),
    "lejepa": gh.Case(_case_lejepa, n_views=3),
    "koleo": gh.Case(_case_koleo, n_views=1),
    "standardised_targets+feature_distillation": gh.Case(_case_standardised_distillation),
    "ibot_patch_loss+sinkhorn_knopp+ema_center, uneven rows": gh.Case(_case_ibot, n_views=3),
    "sinkhorn_knopp, a rank without rows": gh.Case(_case_sinkhorn_no_rows, n_views=1),
}


@pytest.fixture(scope="module")
def gloo_records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[gh.Record]]:
    """Every case on 2 gloo processes, in one spawn shared by the tests below."""
    return gh.run_distributed(GLOO_CASES, tmp_path_factory.mktemp("gloo"))


@pytest.mark.parametrize("name", list(GLOO_CASES))
def test_two_gloo_processes_equal_one_process_on_concatenated_batch(
        name: str, gloo_records: dict[str, list[gh.Record]]):
    gh.assert_equivalent(gloo_records[name], gh.run_single(GLOO_CASES[name]))


def test_gloo_cases_are_not_trivial(gloo_records: dict[str, list[gh.Record]]):
    # Guards the harness itself: the ranks saw different samples, so their losses differ for the
    # per-rank losses, and the codes are genuine distributions.
    nt = gloo_records["nt_xent"]
    assert not torch.allclose(nt[0]["loss"], nt[1]["loss"])
    codes = gloo_records["sinkhorn_knopp+swapped_prediction"][0]["rows"]
    torch.testing.assert_close(codes[:, :gh.D_OUT].sum(dim=1), torch.ones(gh.B_PER_RANK))


def test_every_rank_timed_its_communication(gloo_records: dict[str, list[gh.Record]]):
    # Each case all-reduces gradients through the timed hook, most also gather: every rank
    # measured some communication, and never more than it took (under a minute here).
    for name, ranks in gloo_records.items():
        for rank, record in enumerate(ranks):
            assert 0 < record["comm_s"].item() < 60, (name, rank, record["comm_s"])


def test_lejepa_gloo_cases_are_not_trivial(gloo_records: dict[str, list[gh.Record]]):
    # The ranks' invariance shares differ, SIGReg moved the Linear, and the SIGReg of 2 views of
    # 8 samples is not the null value of a large Gaussian batch.
    r0, r1 = gloo_records["lejepa"]
    assert not torch.allclose(r0["loss"], r1["loss"])
    sig = gloo_records["sigreg+sigreg_directions"][0]
    assert sig["grad_w"].abs().max() > 1e-3 and sig["same"][0] > 1.5


# ----------------------------------------- LeJEPA ---------------------------------------------
# Balestriero & LeCun 2025, arXiv:2511.08544: SIGReg (Sec. 4.2, eq. 4; Epps-Pulley, Sec. 4.2.3;
# Algorithm 1) and the LeJEPA loss (Sec. 5.1, Algorithm 2), transcribed with complex numbers.


def naive_epps_pulley(x: Sequence[float], t_max: float, knots: int) -> float:
    """``N * int |phi_N(t) - phi(t)|^2 w(t) dt``, w = phi = exp(-t^2/2) (Algorithm 1's window),
    phi_N(t) = 1/N sum_n exp(i t x_n), trapezoid rule on linspace(-t_max, t_max, knots)."""
    n = len(x)
    ts = [-t_max + 2 * t_max * i / (knots - 1) for i in range(knots)]
    f = []
    for t in ts:
        ecf = sum(cmath.exp(1j * t * xi) for xi in x) / n
        phi = math.exp(-t * t / 2)
        f.append(abs(ecf - phi) ** 2 * phi)
    return n * sum((ts[i + 1] - ts[i]) * (f[i] + f[i + 1]) / 2 for i in range(knots - 1))


def naive_sigreg(z: Rows, a: Rows, t_max: float, knots: int) -> float:
    """Eq. 4: the mean over the directions (columns of A) of the test of a^T z_n."""
    columns = [[row[j] for row in a] for j in range(len(a[0]))]
    return sum(naive_epps_pulley([_dot(zn, col) for zn in z], t_max, knots)
               for col in columns) / len(columns)


def naive_lejepa(views: list[Rows], n_global: int, a: Rows, lam: float, t_max: float,
                 knots: int) -> float:
    """Algorithm 2: (1 - lambda) * mean_{v,n,k} (mu_nk - z_vnk)^2 + lambda * mean_v SIGReg(z_v),
    mu_n the mean of the global views of sample n."""
    v_all, b, k = len(views), len(views[0]), len(views[0][0])
    invariance = 0.0
    for n in range(b):
        mu = [sum(views[v][n][d] for v in range(n_global)) / n_global for d in range(k)]
        for v in range(v_all):
            invariance += sum((mu[d] - views[v][n][d]) ** 2 for d in range(k))
    invariance /= v_all * b * k
    sig = sum(naive_sigreg(z, a, t_max, knots) for z in views) / v_all
    return (1 - lam) * invariance + lam * sig


def _trapezoid(f: Callable[[float], float], t_max: float, knots: int) -> float:
    """Trapezoid rule of ``f`` on linspace(-t_max, t_max, knots)."""
    ts = [-t_max + 2 * t_max * i / (knots - 1) for i in range(knots)]
    return sum((ts[i + 1] - ts[i]) * (f(ts[i]) + f(ts[i + 1])) / 2 for i in range(knots - 1))


def _phi(t: float) -> float:
    return math.exp(-t * t / 2)


@pytest.mark.parametrize(("n", "k", "m"), [(1, 2, 1), (5, 3, 4), (16, 8, 7)])
@pytest.mark.parametrize(("t_max", "knots"), [(5.0, 17), (3.0, 9), (2.0, 3)])
def test_sigreg_matches_algorithm_1(n: int, k: int, m: int, t_max: float, knots: int):
    rng = np.random.default_rng(n * 100 + knots)
    z = 1.5 * _rand(rng, n, k)
    a = sigreg_directions(n + m, k, m).double()
    got = sigreg(_t(z), a, t_max, knots).item()
    assert got == pytest.approx(naive_sigreg(z, a.numpy(), t_max, knots), **TIGHT)


@pytest.mark.parametrize(("n_global", "n_local"), [(2, 0), (2, 3), (1, 1)])
@pytest.mark.parametrize("lam", [0.05, 0.5])
def test_lejepa_matches_algorithm_2(n_global: int, n_local: int, lam: float):
    rng = np.random.default_rng(n_global * 10 + n_local)
    views = [_rand(rng, 6, 4) for _ in range(n_global + n_local)]
    a = sigreg_directions(5, 4, 3).double()
    loss, terms = lejepa([_t(v) for v in views], n_global, a, lam)
    want = naive_lejepa(views, n_global, a.numpy(), lam, 5.0, 17)
    assert loss.item() == pytest.approx(want, **TIGHT)
    assert loss.item() == pytest.approx(
        (1 - lam) * terms["invariance"].item() + lam * terms["sigreg"].item(), **TIGHT)


def test_sigreg_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    a = sigreg_directions(0, 3, 4).double()
    assert torch.autograd.gradcheck(lambda x: sigreg(x, a), (z,))


def test_sigreg_directions_are_unit_new_each_step_and_ignore_the_global_rng():
    torch.manual_seed(1)
    a = sigreg_directions(42, 16, 32)
    torch.manual_seed(2)
    torch.testing.assert_close(sigreg_directions(42, 16, 32), a, rtol=0, atol=0)
    assert a.shape == (16, 32) and a.dtype == torch.float32
    torch.testing.assert_close(a.norm(dim=0), torch.ones(32))
    assert not torch.allclose(sigreg_directions(43, 16, 32), a)


def test_sigreg_of_gaussian_samples_is_the_null_expectation_at_any_n():
    # E|phi_N(t) - phi(t)|^2 = (1 - phi(t)^2) / N for i.i.d. N(0, 1) samples, so the N-scaled
    # statistic of a Gaussian batch averages int (1 - phi^2) phi dt (the quadrature's: 1.0594)
    # whatever N. 20 views x 64 slices; measured spread over 20 seeds: std 0.04.
    null = _trapezoid(lambda t: (1 - _phi(t) ** 2) * _phi(t), 5.0, 17)
    assert null == pytest.approx(math.sqrt(2 * math.pi) - math.sqrt(2 * math.pi / 3), rel=1e-5)
    g = torch.Generator().manual_seed(0)
    a = sigreg_directions(0, 32, 64).double()
    for n in (256, 2048):
        z = torch.randn(20, n, 32, generator=g, dtype=torch.float64)
        assert sigreg(z, a).item() == pytest.approx(null, abs=0.15), n
    # Dimensional collapse (Gaussian along one of the 32 dimensions, 0 along the others): most
    # directions see a variance near 1/32, a distance to N(0, 1) that does not shrink with N,
    # so the statistic grows N-fold (measured: 94 and 748).
    small, large = (sigreg(_one_dimensional(g, n, 32), a).item() for n in (256, 2048))
    assert small > 50 * null and large == pytest.approx(8 * small, rel=0.1)


def _one_dimensional(g: torch.Generator, n: int, k: int) -> Tensor:
    """(1, n, k): N(0, 1) samples along the first dimension, 0 along the others."""
    z = torch.zeros(1, n, k, dtype=torch.float64)
    z[..., 0] = torch.randn(1, n, generator=g, dtype=torch.float64)
    return z


def test_sigreg_of_a_collapsed_batch_is_n_times_the_distance_of_a_point_mass():
    # All embeddings equal to 0: phi_N = 1 at every t, so EP = N int (1 - phi)^2 phi dt on every
    # direction (0.4089 per sample): growing with the batch, unlike a Gaussian batch's ~1.06.
    per_sample = _trapezoid(lambda t: (1 - _phi(t)) ** 2 * _phi(t), 5.0, 17)
    a = sigreg_directions(0, 8, 16).double()
    for n in (4, 100):
        got = sigreg(torch.zeros(n, 8, dtype=torch.float64), a).item()
        assert got == pytest.approx(n * per_sample, **TIGHT)


def test_sigreg_scales_with_n_for_a_fixed_empirical_distribution():
    # The same samples twice: the same characteristic function, twice N.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 5, generator=g, dtype=torch.float64)
    a = sigreg_directions(1, 5, 9).double()
    assert sigreg(torch.cat([z, z]), a).item() == pytest.approx(2 * sigreg(z, a).item(), **TIGHT)


def test_lejepa_known_values():
    g = torch.Generator().manual_seed(0)
    z, w = (torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(2))
    a = sigreg_directions(0, 4, 8).double()
    # Identical views predict each other perfectly: only lambda * SIGReg is left.
    loss, terms = lejepa([z, z, z], 2, a, lambd=0.05)
    assert terms["invariance"].item() == 0.0
    assert loss.item() == pytest.approx(0.05 * sigreg(z, a).item(), **TIGHT)
    # Global views z and -z have the mean 0: every view pays its own mean square, local ones too.
    loss, terms = lejepa([z, -z, w], 2, a, lambd=0.0)
    want = (2 * z.square().mean() + w.square().mean()).item() / 3
    assert terms["invariance"].item() == pytest.approx(want, **TIGHT)
    assert loss.item() == pytest.approx(want, **TIGHT)
    # lambda = 1: SIGReg alone, the mean of the views' own statistics.
    loss, _ = lejepa([z, -z, w], 2, a, lambd=1.0)
    per_view = [sigreg(v, a).item() for v in (z, -z, w)]
    assert loss.item() == pytest.approx(sum(per_view) / 3, **TIGHT)


def test_lejepa_rejects_bad_input():
    z = torch.zeros(4, 3)
    a = sigreg_directions(0, 3, 2)
    with pytest.raises(ValueError, match="global_views=0"):
        lejepa([z, z], 0, a, 0.05)
    with pytest.raises(ValueError, match="global_views=3"):
        lejepa([z, z], 3, a, 0.05)
    with pytest.raises(ValueError, match="knots=4"):
        sigreg(z, a, knots=4)


# ----------------------------------------- DINOv2 ---------------------------------------------
# Oquab et al. 2023, arXiv:2304.07193, Sec. 4: KoLeo, iBOT's masked-patch loss (Zhou et al.
# 2021, arXiv:2111.07832) as DINOv2 weighs it, and the Sinkhorn-Knopp centring of the teacher.


def naive_koleo(x: Rows) -> float:
    """``-1/n sum_i log(min_{j != i} ||x_i - x_j||)`` over the L2-normalised rows (Sec. 4)."""
    u = [_unit(row) for row in x]
    total = 0.0
    for i, ui in enumerate(u):
        nearest = min(math.sqrt(sum((a - b) ** 2 for a, b in zip(ui, uj, strict=True)))
                      for j, uj in enumerate(u) if j != i)
        total -= math.log(nearest)
    return total / len(u)


def naive_ibot(student: np.ndarray, teacher: np.ndarray, mask: np.ndarray, tps: float) -> float:
    """iBOT's eq. 2 with DINOv2's weights: per image, the mean over its masked patches of
    ``-sum_k t[k] log softmax(s / tps)[k]`` (0 without any), then the mean over the images."""
    b, n, _ = student.shape
    total = 0.0
    for i in range(b):
        terms = []
        for j in range(n):
            if mask[i, j]:
                log_p = _log_softmax([x / tps for x in student[i, j]])
                terms.append(-sum(t * lp for t, lp in zip(teacher[i, j], log_p, strict=True)))
        if terms:
            total += sum(terms) / len(terms)
    return total / b


def naive_self_distillation(student: list[np.ndarray], targets: list[np.ndarray],
                            tps: float) -> float:
    """DINO's cross-entropy from given targets: the mean over pairs (i, v != i) of the batch mean
    of ``-sum_k targets_i[k] log softmax(student_v / tps)[k]``."""
    total, pairs = 0.0, 0
    for i, q in enumerate(targets):
        for v, s in enumerate(student):
            if v == i:
                continue
            for b in range(len(q)):
                log_p = _log_softmax([x / tps for x in s[b]])
                total -= sum(q[b][k] * log_p[k] for k in range(len(log_p))) / len(q)
            pairs += 1
    return total / pairs


@pytest.mark.parametrize(("n", "d"), [(2, 3), (5, 4), (17, 8)])
def test_koleo_matches_the_paper(n: int, d: int):
    rng = np.random.default_rng(n * 10 + d)
    x = 3.0 * _rand(rng, n, d)
    # The reference's distance is ||x_i - x_j + 1e-8|| and its log of it + 1e-8: ~1e-8 apart.
    assert koleo(_t(x)).item() == pytest.approx(naive_koleo(x), rel=1e-7, abs=1e-7)


@pytest.mark.parametrize("n", [3, 4, 12])
def test_koleo_of_points_evenly_on_a_circle(n: int):
    # n unit vectors 2 pi / n apart: every nearest neighbour is a chord of 2 sin(pi / n) away.
    angles = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    x = torch.stack([angles.cos(), angles.sin(), torch.zeros(n, dtype=torch.float64)], dim=1)
    scales = torch.linspace(0.5, 4.0, n, dtype=torch.float64)[:, None]  # normalised away
    assert koleo(x * scales).item() == pytest.approx(-math.log(2 * math.sin(math.pi / n)),
                                                     rel=1e-7)
    # Orthonormal rows: sqrt(2) apart; spreading more is impossible for n <= d, so any other
    # arrangement of those n points costs at least as much.
    assert koleo(torch.eye(4, dtype=torch.float64)).item() == pytest.approx(
        -0.5 * math.log(2), rel=1e-7)
    with pytest.raises(ValueError, match="2 samples"):
        koleo(torch.ones(1, 3))


def test_koleo_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(koleo, (x,))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tps", [0.1, 0.5])
def test_ibot_patch_loss_matches_ibot_with_dinov2_weights(seed: int, tps: float):
    rng = np.random.default_rng(seed)
    b, n, k = 4, 6, 5
    student = _rand(rng, b, n, k)
    teacher = rng.dirichlet(np.ones(k), size=(b, n))
    mask = rng.random((b, n)) < 0.4
    mask[0] = False  # an image without a masked patch counts 0
    mask[1, 0] = True
    m = torch.from_numpy(mask)
    ours = ibot_patch_loss(_t(student)[m], _t(teacher)[m], m, tps).item()
    assert ours == pytest.approx(naive_ibot(student, teacher, mask, tps), **TIGHT)


def test_ibot_patch_loss_known_values():
    # A uniform student costs log K at every masked patch: log K x the fraction of images with
    # a masked patch, however many each has.
    k = 7
    mask = torch.tensor([[1, 1, 1], [0, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=torch.bool)
    targets = torch.softmax(torch.randn(4, k, dtype=torch.float64), dim=1)
    flat = torch.zeros(4, k, dtype=torch.float64)
    assert ibot_patch_loss(flat, targets, mask, 0.1).item() == pytest.approx(
        0.5 * math.log(k), **TIGHT)
    with pytest.raises(ValueError, match="masked patch"):
        ibot_patch_loss(flat[:3], targets[:3], mask, 0.1)


@pytest.mark.parametrize("n_student", [2, 4])
def test_self_distillation_matches_dino_from_given_targets(n_student: int):
    rng = np.random.default_rng(n_student)
    student = [_rand(rng, 3, 5) for _ in range(n_student)]
    targets = [rng.dirichlet(np.ones(5), size=3) for _ in range(2)]
    ours = self_distillation([_t(s) for s in student], [_t(t) for t in targets], 0.1).item()
    assert ours == pytest.approx(naive_self_distillation(student, targets, 0.1), **TIGHT)


def test_sinkhorn_and_ema_center_with_rows_global():
    # One process: rows_global equal to the rows changes nothing; the centre's mean divides by
    # the count given; a rank without rows gets empty codes.
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 4, generator=g)
    torch.testing.assert_close(sinkhorn_knopp(scores, 0.1, 3, rows_global=6),
                               sinkhorn_knopp(scores, 0.1, 3))
    center = torch.zeros(1, 4)
    torch.testing.assert_close(ema_center(center, scores, 0.5, rows_global=12),
                               0.5 * scores.sum(dim=0, keepdim=True) / 12)
    assert sinkhorn_knopp(torch.zeros(0, 4), rows_global=3).shape == (0, 4)


def test_dinov2_targets_get_no_gradient():
    g = torch.Generator().manual_seed(0)
    online = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    stopped = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(5, 1, dtype=torch.bool)
    (ibot_patch_loss(online, stopped.softmax(1), mask, 0.1)
     + self_distillation([online, 2 * online], [stopped.softmax(1)], 0.1)).backward()
    assert online.grad is not None and online.grad.abs().sum() > 0 and stopped.grad is None


def test_dinov2_gloo_cases_are_not_trivial(gloo_records: dict[str, list[gh.Record]]):
    # KoLeo: some nearest neighbours lie on the other rank (the gather is needed), and the ranks'
    # shares differ. iBOT: the ranks masked 4 and 2 patches; their codes are distributions.
    x, model = gh.inputs(1)
    z = F.normalize(model(x[0]), dim=1).detach()  # the case's embeddings of the whole batch
    dots = z @ z.T - 3 * torch.eye(len(z), dtype=z.dtype)
    nearest = dots.argmax(dim=1)
    assert ((nearest // gh.B_PER_RANK) != torch.arange(len(z)) // gh.B_PER_RANK).any()
    r0, r1 = gloo_records["koleo"]
    assert not torch.allclose(r0["loss"], r1["loss"]) and r0["grad_w"].abs().max() > 1e-3
    codes = torch.cat([r["rows"] for r in gloo_records[
        "ibot_patch_loss+sinkhorn_knopp+ema_center, uneven rows"]]).reshape(-1, 3, gh.D_OUT)
    torch.testing.assert_close(codes[PATCH_MASK].sum(dim=1), torch.ones(6))
    assert codes[~PATCH_MASK].abs().max() == 0
