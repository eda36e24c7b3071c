"""Pure loss functions. They work in one process and across workers (via raysl.distributed).

Letters used in shape comments throughout raysl: B batch per rank, W world size, D embedding dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl import distributed


def nt_xent(z0: Tensor, z1: Tensor, temperature: float) -> Tensor:
    """NT-Xent / InfoNCE loss of SimCLR (Chen et al. 2020, arXiv:2002.05709, eq. 1 and Alg. 1).

    Each of the 2N embeddings (N = B * W images, two views each) is classified against the other
    2N - 1: its positive is the other view of the same image, every other embedding of every rank
    is a negative. The result is the mean over all 2N anchors; with DDP's gradient averaging the
    update equals one process computing this on the concatenated global batch.

    Args:
        z0: (B, D) projections of the first views on this rank.
        z1: (B, D) projections of the second views, row-aligned with ``z0``.
        temperature: tau > 0 dividing the cosine similarities.

    Returns:
        Scalar loss (this rank's mean over its 2B anchors).
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    if z0.shape != z1.shape or z0.ndim != 2:
        shapes = f"{tuple(z0.shape)} and {tuple(z1.shape)}"
        raise ValueError(f"z0 and z1 must both be (B, D); got {shapes}")
    b = z0.shape[0]
    z0, z1 = F.normalize(z0, dim=1), F.normalize(z1, dim=1)
    z0_all, z1_all = distributed.gather(z0), distributed.gather(z1)  # (B*W, D) each
    offset = distributed.rank() * b
    # Anchors from view 0 against [view 1 | view 0] of all ranks, and symmetrically for view 1.
    logits_0 = torch.cat([z0 @ z1_all.T, z0 @ z0_all.T], dim=1) / temperature  # (B, 2BW)
    logits_1 = torch.cat([z1 @ z0_all.T, z1 @ z1_all.T], dim=1) / temperature  # (B, 2BW)
    n_all = z0_all.shape[0]
    rows = torch.arange(b, device=z0.device)
    # An anchor is never its own negative: mask its self-similarity in the same-view block.
    self_cols = n_all + offset + rows  # (B,)
    logits_0[rows, self_cols] = float("-inf")
    logits_1[rows, self_cols] = float("-inf")
    targets = offset + rows  # positive: same image, other view, in the first block
    return 0.5 * (F.cross_entropy(logits_0, targets) + F.cross_entropy(logits_1, targets))


def info_nce_queue(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """InfoNCE of MoCo v1/v2 (He et al. 2019, arXiv:1911.05722, Algorithm 1).

    Each query's positive is its own key; the negatives are the queue of keys from earlier
    batches (of every worker). Nothing is gathered here: the queue already holds all workers'
    keys, so the mean over this rank's queries is this rank's share of the global loss.

    Args:
        q: (B, D) queries (gradients flow).
        k: (B, D) keys of the other view from the momentum encoder (treated as constants).
        queue: (K, D) negative keys, L2-normalised.
        temperature: tau > 0.

    Returns:
        Scalar: mean cross-entropy over the B queries of classifying the key among K + 1.
    """
    q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    l_pos = (q * k).sum(dim=1, keepdim=True)  # (B, 1)
    l_neg = q @ queue.detach().T  # (B, K)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # (B, 1 + K)
    targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, targets)


def moco_v3_contrastive(q: Tensor, k: Tensor, temperature: float) -> Tensor:
    """MoCo v3's ``ctr(q, k)`` (Chen, Xie, He 2021, arXiv:2104.02057, Algorithm 1).

    The keys of every worker's batch are the negatives (no queue); the positive of query i is key
    i. The paper scales the cross-entropy by ``2 * tau`` so the gradient scale does not depend on
    the temperature.

    Args:
        q: (B, D) predictions of the online branch on this rank.
        k: (B, D) momentum-encoder keys of the other view (constants), row-aligned with ``q``.
        temperature: tau > 0.

    Returns:
        Scalar: ``2 * tau * CE`` averaged over this rank's queries.
    """
    q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    k_all = distributed.gather_no_grad(k)  # (B*W, D)
    logits = q @ k_all.T / temperature  # (B, B*W)
    targets = distributed.rank() * q.shape[0] + torch.arange(q.shape[0], device=q.device)
    return 2 * temperature * F.cross_entropy(logits, targets)


def negative_cosine(p: Tensor, z: Tensor, stop_gradient: bool = True) -> Tensor:
    """SimSiam's D(p, z) with stop-gradient on z (Chen & He 2020, arXiv:2011.10566, Alg. 1).

    Args:
        p: (B, D) predictor outputs.
        z: (B, D) projections of the other view (gradient stopped).
        stop_gradient: False = the paper's ablation (fig. 2), which collapses.

    Returns:
        Scalar in [-1, 1]: minus the mean cosine similarity.
    """
    return -F.cosine_similarity(p, z.detach() if stop_gradient else z, dim=1).mean()


def byol_regression(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's normalised MSE ``2 - 2 cos(p, z)`` (Grill et al. 2020, arXiv:2006.07733, eq. 2).

    Args:
        p: (B, D) online predictions.
        z: (B, D) target projections (constants).

    Returns:
        Scalar in [0, 4], the mean over the batch.
    """
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


def _standardize(z: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-dimension (z - mean) / sqrt(biased var + eps) over the batch: BatchNorm1d, no affine."""
    mean = z.mean(dim=0, keepdim=True)
    var = z.var(dim=0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


def _off_diagonal(m: Tensor) -> Tensor:
    """The off-diagonal entries of a square (D, D) matrix, flattened to (D * (D - 1),)."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def barlow_twins(z0: Tensor, z1: Tensor, lambda_offdiag: float) -> Tensor:
    """Barlow Twins' redundancy-reduction loss (Zbontar et al. 2021, arXiv:2103.03230, Alg. 1).

    The cross-correlation matrix is computed over the GLOBAL batch: embeddings are gathered from
    every worker, so each rank computes the same loss as one process on the concatenated batch
    (and DDP's averaged gradient equals that process's gradient).

    Args:
        z0: (B, D) projections of the first views on this rank.
        z1: (B, D) projections of the second views.
        lambda_offdiag: weight of the redundancy (off-diagonal) term; 5e-3 in the paper.

    Returns:
        Scalar: ``sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2``.
    """
    z0_all, z1_all = distributed.gather(z0), distributed.gather(z1)  # (N, D), N = B*W
    c = _standardize(z0_all).T @ _standardize(z1_all) / z0_all.shape[0]  # (D, D)
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = _off_diagonal(c).pow(2).sum()
    return on_diag + lambda_offdiag * off_diag


def vicreg(z0: Tensor, z1: Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0,
           cov_coeff: float = 1.0, eps: float = 1e-4) -> tuple[Tensor, dict[str, Tensor]]:
    """VICReg (Bardes, Ponce, LeCun 2021, arXiv:2105.04906, Algorithm 1) over the global batch.

    Embeddings are gathered from every worker (as the reference code's FullGatherLayer does), so
    the variance and covariance terms see the whole batch and each rank computes the same loss.

    Args:
        z0: (B, D) expander outputs of the first views on this rank.
        z1: (B, D) expander outputs of the second views.
        sim_coeff: lambda of the paper (25), weight of the invariance term.
        std_coeff: mu (25), weight of the variance term.
        cov_coeff: nu (1), weight of the covariance term.
        eps: added to the variance before the square root.

    Returns:
        The weighted loss and its three unweighted terms (``invariance``, ``variance``,
        ``covariance``) for logging.
    """
    x, y = distributed.gather(z0), distributed.gather(z1)  # (N, D)
    n, d = x.shape
    invariance = F.mse_loss(x, y)
    x, y = x - x.mean(dim=0), y - y.mean(dim=0)
    std_x, std_y = torch.sqrt(x.var(dim=0) + eps), torch.sqrt(y.var(dim=0) + eps)
    variance = 0.5 * (F.relu(1 - std_x).mean() + F.relu(1 - std_y).mean())
    cov_x, cov_y = x.T @ x / (n - 1), y.T @ y / (n - 1)  # (D, D)
    covariance = (_off_diagonal(cov_x).pow(2).sum() + _off_diagonal(cov_y).pow(2).sum()) / d
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return loss, {"invariance": invariance, "variance": variance, "covariance": covariance}


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, epsilon: float = 0.05, iterations: int = 3,
                   rows_global: int | None = None) -> Tensor:
    """Soft equipartitioned cluster assignments of SwAV (Caron et al. 2020, arXiv:2006.09882).

    Sums over samples run over EVERY worker's batch (all-reduce), so the codes on each rank equal
    the rows of one process running this on the concatenated batch. DINOv2 (arXiv:2304.07193,
    Sec. 4) uses the same algorithm to centre its teacher, with the teacher temperature as
    ``epsilon``, on the class tokens and on the masked patch tokens, whose number differs
    between ranks (``rows_global``).

    Args:
        scores: (B, K) prototype scores of this rank's samples (queue rows included, if any);
            B may be 0 on some ranks when ``rows_global`` is given.
        epsilon: entropic regularisation; 0.05 in the paper.
        iterations: Sinkhorn iterations; 3 in the paper.
        rows_global: the number of rows over all ranks, when ranks hold different numbers
            (>= 1); by default B times the world size.

    Returns:
        (B, K) codes: each row sums to 1 (a distribution over prototypes).
    """
    b_global = scores.shape[0] * distributed.world_size() if rows_global is None else rows_global
    k = scores.shape[1]
    # Subtracting the global max leaves the result unchanged (it cancels in the first
    # normalisation) and keeps exp() finite for small epsilon. A rank without rows offers -inf.
    mine = scores.max() if scores.numel() else scores.new_tensor(float("-inf"))
    top = distributed.all_reduce_max(mine)
    q = torch.exp((scores.float() - top) / epsilon).T  # (K, B)
    q /= distributed.all_reduce_sum(q.sum())
    for _ in range(iterations):
        q /= distributed.all_reduce_sum(q.sum(dim=1, keepdim=True))  # rows: each prototype 1/K
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # columns: each sample 1/B
        q /= b_global
    return (q * b_global).T  # (B, K)


def swapped_prediction(scores: list[Tensor], codes: list[Tensor], temperature: float) -> Tensor:
    """SwAV's swapped prediction loss (arXiv:2006.09882, eq. 1 and the reference main_swav.py).

    For each crop i that has codes (the global crops), every OTHER crop predicts those codes from
    its own scores: ``-sum_k q_i[k] log softmax(scores_v / T)[k]``.

    Args:
        scores: one (B, K) tensor of prototype scores per crop (global crops first).
        codes: (B, K) codes of the first ``len(codes)`` crops (constants).
        temperature: softmax temperature of the predictions; 0.1 in the paper.

    Returns:
        Scalar: mean over code crops of the mean over the other crops.
    """
    if len(scores) < 2 or not 1 <= len(codes) <= len(scores):
        raise ValueError(f"need >= 2 crops and 1..n codes; got {len(scores)} and {len(codes)}")
    total = scores[0].new_zeros(())
    for i, q in enumerate(codes):
        sub = [-(q.detach() * F.log_softmax(s / temperature, dim=1)).sum(dim=1).mean()
               for v, s in enumerate(scores) if v != i]
        total = total + torch.stack(sub).mean()
    return total / len(codes)


def dino(student: list[Tensor], teacher: list[Tensor], center: Tensor, student_temp: float,
         teacher_temp: float) -> Tensor:
    """DINO's cross-entropy between teacher and student crops (arXiv:2104.14294, Algorithm 1).

    Caron et al. 2021; the mean over all (teacher crop, other student crop) pairs.

    Args:
        student: one (B, K) output per crop (global crops first, then local ones).
        teacher: one (B, K) output per global crop (constants).
        center: (1, K) running mean of the teacher outputs, subtracted before sharpening.
        student_temp: 0.1 in the paper.
        teacher_temp: 0.04-0.07 (sharper than the student).

    Returns:
        Scalar loss.
    """
    targets = [F.softmax((t.detach() - center) / teacher_temp, dim=1) for t in teacher]
    return self_distillation(student, targets, student_temp)


def self_distillation(student: list[Tensor], targets: list[Tensor],
                      student_temp: float) -> Tensor:
    """DINO's cross-entropy once the teacher's targets are made (centred and sharpened).

    The mean over every pair (target crop i, student crop v), v != i, of
    ``-sum_k targets_i[k] log softmax(student_v / student_temp)[k]`` averaged over the batch.
    :func:`dino` makes the targets by EMA centring; DINOv2 (arXiv:2304.07193) also by
    Sinkhorn-Knopp (:func:`sinkhorn_knopp`).

    Args:
        student: one (B, K) output per crop (global crops first, then local ones).
        targets: one (B, K) distribution per global crop (constants).
        student_temp: 0.1 in the papers.

    Returns:
        Scalar loss.
    """
    log_probs = [F.log_softmax(s / student_temp, dim=1) for s in student]
    terms = [-(q.detach() * log_probs[v]).sum(dim=1).mean()
             for i, q in enumerate(targets) for v in range(len(student)) if v != i]
    if not terms:
        raise ValueError("DINO needs at least 2 crops")
    return torch.stack(terms).mean()


@torch.no_grad()
def ema_center(center: Tensor, teacher: Tensor, momentum: float,
               rows_global: int | None = None) -> Tensor:
    """DINO's center update with the mean teacher output over the GLOBAL batch.

    Args:
        center: (1, K) current center.
        teacher: (N, K) this rank's teacher outputs (all global crops stacked).
        momentum: 0.9 in the paper.
        rows_global: the number of rows over all ranks when ranks hold different numbers
            (DINOv2's masked patch tokens); by default N times the world size.

    Returns:
        (1, K) new center ``m * center + (1 - m) * mean(teacher over all workers)``.
    """
    total = distributed.all_reduce_sum(teacher.sum(dim=0, keepdim=True).float())
    n = teacher.shape[0] * distributed.world_size() if rows_global is None else rows_global
    return center * momentum + total / max(1, n) * (1 - momentum)


def ibot_patch_loss(student: Tensor, targets: Tensor, mask: Tensor,
                    student_temp: float) -> Tensor:
    """The masked-patch loss of iBOT (arXiv:2111.07832), as DINOv2 weighs it (2304.07193).

    The student saw a mask token in place of each masked patch; its output there must predict
    the teacher's (centred, sharpened) output for the same patch of the whole image:
    ``-sum_k targets[k] log softmax(student / student_temp)[k]``. Each image's term is the mean
    over its masked patches, and the loss the mean over all B images, those without a masked
    patch counting 0 (DINOv2's ``masks_weight`` and division by the number of images). Every
    rank holds the same number of images, so the mean of the ranks' losses is the global
    batch's and DDP's averaged gradient its gradient.

    Args:
        student: (M, K) the student's outputs at the masked patches, in the row-major order of
            ``mask``'s True entries (image by image, patch by patch).
        targets: (M, K) the teacher's distributions at the same patches (constants).
        mask: (B, N) bool, True where the student's patch was masked; M = mask.sum().
        student_temp: 0.1 in the papers.

    Returns:
        Scalar loss.
    """
    if student.shape[0] != int(mask.sum()) or student.shape != targets.shape:
        raise ValueError(f"student {tuple(student.shape)} and targets {tuple(targets.shape)} "
                         f"must both have one row per masked patch ({int(mask.sum())})")
    per_patch = -(targets.detach() * F.log_softmax(student / student_temp, dim=-1)).sum(dim=-1)
    counts = mask.sum(dim=1, keepdim=True).clamp(min=1).expand_as(mask)[mask]  # (M,)
    return (per_patch / counts.to(per_patch.dtype)).sum() / mask.shape[0]


def koleo(x: Tensor, eps: float = 1e-8) -> Tensor:
    """The KoLeo regulariser of DINOv2 (arXiv:2304.07193, Sec. 4) over the GLOBAL batch.

    ``-1/n sum_i log(d_n,i)``, ``d_n,i = min_{j != i} ||x_i - x_j||``, the distance of each
    L2-normalised feature to its nearest neighbour "within the batch" (Sablayrolles et al.
    2018, arXiv:1806.03198): it spreads the features uniformly. Where the paper and the code
    disagree we follow the paper: DINOv2's ``KoLeoLoss`` looks for neighbours among its own
    GPU's samples only, so its value depends on the number of workers; here, as the paper's
    "batch" and as DINOv3's ``KoLeoLossDistributed``, the neighbours come from every worker's
    samples (a gather that keeps gradients: a neighbour on another rank gets its gradient
    there). Each rank's loss is the mean over its own samples, so the mean of the ranks'
    losses is the global batch's, and DDP's averaged gradient its gradient. The distance is
    ``torch.pairwise_distance`` (``||x_i - x_j + eps||``) and the log of it plus ``eps``, as
    the reference code.

    Args:
        x: (B, D) features of this rank's samples (any norm); at least 2 over all ranks.
        eps: for the normalisation, the distance and the log.

    Returns:
        Scalar loss.
    """
    x = F.normalize(x, dim=1, eps=eps)
    everyone = distributed.gather(x)  # (B*W, D), with gradients
    if everyone.shape[0] < 2:
        raise ValueError("KoLeo needs at least 2 samples over all ranks")
    b = x.shape[0]
    with torch.no_grad():
        dots = x @ everyone.T  # (B, B*W): the largest dot is the nearest neighbour (unit norms)
        rows = torch.arange(b, device=x.device)
        dots[rows, distributed.rank() * b + rows] = float("-inf")  # never oneself
        nearest = dots.argmax(dim=1)
    distances = F.pairwise_distance(x, everyone[nearest], eps=eps)  # (B,)
    return -torch.log(distances + eps).mean()


def nearest_neighbours(z: Tensor, support: Tensor) -> Tensor:
    """NNCLR's ``NN(z, Q)``: each row's most cosine-similar row of the support set (constants).

    Args:
        z: (B, D) projections (any norm).
        support: (Q, D) L2-normalised projections of earlier batches.

    Returns:
        (B, D) rows of ``support``; no gradient flows into ``z`` or ``support``.
    """
    z = F.normalize(z.detach(), dim=1)
    return support.detach()[(z @ support.detach().T).argmax(dim=1)]


def nnclr_contrastive(nn: Tensor, p: Tensor, temperature: float) -> Tensor:
    """NNCLR's loss (Dwibedi et al. 2021, arXiv:2104.14548, eq. 2, with the prediction head).

    Row i's nearest neighbour ``NN(z_i)`` must pick ``p_i``, the prediction of the other view of
    the same image, out of the predictions of every worker's batch. Gradients flow through ``p``
    only (the neighbour comes from the support set); they reach the other ranks' ``p`` through
    the gather, as SimCLR's.

    Args:
        nn: (B, D) nearest neighbours of one view's projections (constants).
        p: (B, D) predictions of the other view, row-aligned with ``nn``.
        temperature: tau > 0 (0.1 in the paper).

    Returns:
        Scalar: cross-entropy averaged over this rank's B rows.
    """
    nn, p = F.normalize(nn.detach(), dim=1), F.normalize(p, dim=1)
    logits = nn @ distributed.gather(p).T / temperature  # (B, B*W)
    targets = distributed.rank() * p.shape[0] + torch.arange(p.shape[0], device=p.device)
    return F.cross_entropy(logits, targets)


def patchify(x: Tensor, patch: int) -> Tensor:
    """Images cut into flattened patches, in the ViT's (row-major) patch order.

    Args:
        x: (B, C, H, W), H and W multiples of ``patch``.
        patch: side p of the square patches.

    Returns:
        (B, N, p * p * C), N = (H / p) * (W / p); each patch's pixels row by row, channels last
        (MAE's ``patchify``).
    """
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"patchify: a {h}x{w} image is not a whole number of {patch}px patches")
    grid = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return grid.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def masked_patch_mse(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool) -> Tensor:
    """MAE's reconstruction loss (He et al. 2021, arXiv:2111.06377, section 3).

    The mean squared error between predicted and true pixels, on the masked patches only.

    With ``norm_pix`` the target of each patch is its pixels standardised by the patch's own
    mean and (unbiased) variance, the paper's "normalized pixels" that improve representations.
    Every sample masks the same number of patches, so each rank's mean weighs samples equally
    and DDP's gradient average equals the global batch's.

    Args:
        pred: (B, N, P) predicted patches.
        target: (B, N, P) true patches (:func:`patchify` of the normalised input).
        mask: (B, N), 1 where a patch was masked (hidden from the encoder), 0 where visible.
        norm_pix: standardise each target patch.

    Returns:
        Scalar loss: mean over masked patches of the per-patch mean squared error.
    """
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = (pred - target).pow(2).mean(dim=-1)  # (B, N)
    return (per_patch * mask).sum() / mask.sum()


def rebalanced_soft_cross_entropy(logits: Tensor, soft_targets: Tensor, weights: Tensor) -> Tensor:
    """Colorization's classification loss (Zhang et al. 2016, arXiv:1603.08511, eq. 2).

    ``-v(Z) sum_q Z_q log softmax(logits)_q`` per pixel, where Z is the soft-encoded true colour
    and v its rarity weight (class rebalancing), averaged over pixels and samples (the paper
    sums; a mean keeps the scale independent of the image size, and is a mean over samples, so
    DDP's average is the global batch's).

    Args:
        logits: (N, Q) scores of the Q colour bins, one row per pixel.
        soft_targets: (N, Q) rows summing to 1.
        weights: (N,) rarity weight of each pixel's colour (ones = no rebalancing).

    Returns:
        Scalar loss.
    """
    per_pixel = -(soft_targets * F.log_softmax(logits, dim=1)).sum(dim=1)
    return (weights * per_pixel).mean()


def sigreg_directions(step: int, dim: int, num_slices: int) -> Tensor:
    """SIGReg's random unit directions A at optimizer step ``step`` (LeJEPA, Algorithm 1).

    Drawn from a generator seeded with the step, as the paper's ``g.manual_seed(global_step)``:
    every worker draws the same directions without communicating, and each step draws new ones
    (Sec. 4.3: resampling at every step is what lets a few hundred slices constrain a large
    space). The generator is a CPU one, so the directions do not depend on the device either.

    Args:
        step: the optimizer step (the same on every worker).
        dim: K, the dimension of the embeddings.
        num_slices: M = |A|.

    Returns:
        (K, M) float32 on the CPU, each column of unit norm.
    """
    g = torch.Generator().manual_seed(step)
    a = torch.randn(dim, num_slices, generator=g)  # (K, M)
    return F.normalize(a, dim=0)  # unit columns


def sigreg(z: Tensor, directions: Tensor, t_max: float = 5.0, knots: int = 17) -> Tensor:
    """SIGReg with the Epps-Pulley statistic over the GLOBAL batch (arXiv:2511.08544, Sec. 4.2).

    Balestriero & LeCun 2025, eq. 4 with T the Epps-Pulley statistic (Sec. 4.2.3) and
    Algorithm 1: for each direction a, the projections x_n = a^T z_n of the N = B * W samples of
    every worker are tested against N(0, 1) with ``EP = N * int |phi_N(t) - phi(t)|^2 w(t) dt``,
    where ``phi_N(t) = 1/N sum_n exp(i t x_n)`` is their empirical characteristic function,
    ``phi(t) = exp(-t^2 / 2)`` that of N(0, 1), and the window ``w = phi``; the integral is the
    trapezoid rule on ``linspace(-t_max, t_max, knots)``. SIGReg is the mean of EP over the
    directions (and over any leading dimension of ``z``: LeJEPA tests each view on its own).

    Across workers, the characteristic function is a mean over all N samples: the per-worker sums
    of cos and sin are summed over workers with a gather that keeps gradients, so every rank
    computes the same value and, with DDP's averaging, the gradient of one process on the
    concatenated batch (tested with 2 gloo processes; lightly's issue 1920 was a SIGReg whose
    gradient was off by the world size).

    Args:
        z: (..., B, K) embeddings of this rank's samples.
        directions: (K, M) unit directions, the same on every rank (:func:`sigreg_directions`).
        t_max: the integration domain [-t_max, t_max] (paper: 5).
        knots: trapezoid knots over the domain, odd so that t = 0 is one (paper: 17).

    Returns:
        Scalar, the same on every rank: ~1.06 for Gaussian samples at any N (the statistic is
        scaled by N), growing with N when the samples are not Gaussian.
    """
    if knots < 3 or knots % 2 == 0:
        raise ValueError(f"knots={knots}: must be odd and >= 3 (t = 0 is a knot)")
    # Where the paper and the peers' code disagree we follow the paper: Algorithm 1 and Sec. 6.1
    # integrate over [-5, 5] with 17 knots; the official repository's EppsPulley, lightly and
    # stable-pretraining integrate over [0, 3] (doubled). The window is Algorithm 1's
    # exp(-t^2 / 2), as all of them (Sec. 4.2.3's text writes exp(-t^2 / sigma^2), sigma = 1).
    # The integrand is even in t, so the knots t >= 0 with doubled weights give exactly
    # Algorithm 1's trapezoid sum over all 17 knots, at half the cos/sin work.
    half = (knots + 1) // 2
    t = torch.linspace(0.0, t_max, half, dtype=z.dtype, device=z.device)  # (T,)
    dt = 2 * t_max / (knots - 1)
    weights = torch.full_like(t, 2 * dt)
    weights[0], weights[-1] = dt, dt  # t = 0 once; +-t_max are the two ends (dt / 2 each)
    phi = torch.exp(-0.5 * t**2)  # (T,) the N(0, 1) characteristic function, also the window
    x = z @ directions.to(dtype=z.dtype, device=z.device)  # (..., B, M)
    xt = x.unsqueeze(-1) * t  # (..., B, M, T)
    sums = torch.stack([xt.cos().sum(dim=-3), xt.sin().sum(dim=-3)])  # (2, ..., M, T)
    sums = distributed.gather(sums.unsqueeze(0)).sum(dim=0)  # summed over ranks, with grad
    n = z.shape[-2] * distributed.world_size()
    re, im = (sums / n).unbind(0)  # the real and imaginary parts of phi_N(t): (..., M, T)
    err = (re - phi) ** 2 + im**2  # |phi_N(t) - phi(t)|^2
    statistic = (err @ (weights * phi)) * n  # (..., M): EP of each direction
    return statistic.mean()


def lejepa(z: list[Tensor], global_views: int, directions: Tensor, lambd: float,
           t_max: float = 5.0, knots: int = 17) -> tuple[Tensor, dict[str, Tensor]]:
    """LeJEPA's loss (Balestriero & LeCun 2025, arXiv:2511.08544, Sec. 5.1, Algorithm 2).

    ``(1 - lambd) * invariance + lambd * SIGReg``. The invariance (prediction) term is the
    squared error between every view's embedding, global and local, and the mean of the global
    views' embeddings of the same image (mu_n of Sec. 5.1), averaged over views, samples and
    dimensions as Algorithm 2's ``(centers - a_emb).square().mean()``. SIGReg tests each view's
    embeddings on their own and averages over views (Algorithm 2's
    ``mean(SIGReg(emb, global_step) for emb in a_emb)``), over the global batch (:func:`sigreg`).
    Where peers differ we follow the paper: stable-pretraining weights the terms as
    ``invariance + lambd * SIGReg`` and runs SIGReg on all views at once (its issue 413);
    lightly's issue 2002 left the global views out of the invariance term.

    The invariance term is a mean over this rank's samples (equal in number on every rank), so
    DDP's averaged gradient is the global batch's; SIGReg is the same on every rank.

    Args:
        z: V >= 2 embeddings (B, K), the ``global_views`` global views first, then local ones.
        global_views: V_g, the views whose mean every view predicts.
        directions: (K, M) SIGReg's unit directions, the same on every rank.
        lambd: lambda in [0, 1], the weight of SIGReg (0.05 in the paper).
        t_max: SIGReg's integration domain [-t_max, t_max].
        knots: SIGReg's trapezoid knots.

    Returns:
        The loss and its two unweighted terms (``invariance``, ``sigreg``) for logging.
    """
    if not 1 <= global_views <= len(z):
        raise ValueError(f"global_views={global_views}: must be in [1, {len(z)}] (views given)")
    zs = torch.stack(z)  # (V, B, K)
    centers = zs[:global_views].mean(dim=0)  # (B, K): mu_n, the mean of the global views
    invariance = (zs - centers).square().mean()
    regulariser = sigreg(zs, directions, t_max, knots)  # mean over the V views and M slices
    loss = (1 - lambd) * invariance + lambd * regulariser
    return loss, {"invariance": invariance, "sigreg": regulariser}


def feature_distillation(student: Tensor, teacher: Tensor) -> Tensor:
    """The mean squared error between projected student features and the teacher's.

    LightlyTrain's ``distillation`` (v2) loss: unnormalised features, every element weighted
    alike, so that the student regresses the teacher's features themselves (FitNets' hint loss,
    arXiv:1412.6550, Eq. 2, up to its constant 1/2). raysl's ``distill`` hands it
    :func:`standardised_targets` unless ``method.standardise`` is off.

    Args:
        student: (B, ...) the student's projected features.
        teacher: (B, ...) the teacher's, the same shape; no gradient flows into them.
    """
    return F.mse_loss(student.float(), teacher.detach().float())


def standardised_targets(teacher: Tensor, eps: float = 1e-5) -> Tensor:
    """Each teacher feature standardised over the GLOBAL batch: zero mean, unit variance.

    A ResNet teacher's pooled features leave a ReLU: all positive, a few of them wide. Regressed
    as they are, those few dominate the squared error; standardised, every feature counts alike
    (a DINOv2 teacher's tokens leave a LayerNorm, which is why LightlyTrain can regress them
    raw). The statistics are those of every worker's batch, so the targets, and the loss, do
    not depend on how the batch is split.

    Args:
        teacher: (B, D) features or (B, D, h, w) patch features (statistics over the batch and
            the positions); no gradient flows into them.
        eps: added to the variance (a feature constant over the batch becomes 0).

    Returns:
        (B, D, ...) float32, the standardised features.
    """
    t = teacher.detach().double()  # float64 sums: no cancellation in E[x^2] - E[x]^2
    over, d = [0, *range(2, t.dim())], t.shape[1]
    rows = torch.tensor([t.numel() // max(1, d)], dtype=torch.float64, device=t.device)
    moments = distributed.all_reduce_sum(torch.cat([rows, t.sum(over), t.square().sum(over)]))
    mean = moments[1:1 + d] / moments[0]
    var = (moments[1 + d:] / moments[0] - mean.square()).clamp_min(0)
    shape = (1, d) + (1,) * (t.dim() - 2)
    return ((t - mean.view(shape)) / (var.view(shape) + eps).sqrt()).float()
