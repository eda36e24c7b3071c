"""Label-free measures of representation quality, and the collapse rule built on them.

RankMe and LiDAR need no labels, so they can rank the trials of a sweep on unlabeled data and
notice a representation that collapses while it trains. Pure torch, no Ray: the values are
computed on the embeddings of every worker gathered into one matrix (``eval/online.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from raysl.methods.base import output_std

# What the monitors log (eval/online.py), with their names for people; sweeps may rank on them.
MONITOR_METRICS = {"eval/rankme": "RankMe", "eval/lidar": "LiDAR",
                   "eval/rankme_projector": "projector RankMe",
                   "eval/lidar_projector": "projector LiDAR"}
ENTROPY_EPS = 1e-7  # the epsilon both papers add to the normalised spectrum
LIDAR_DELTA = 1e-4  # LiDAR's ridge on the within-class scatter, so it can be inverted


def _effective_rank(spectrum: Tensor, eps: float) -> float:
    """exp(entropy) of ``spectrum`` / its L1 norm (+ ``eps``): between 1 and its length."""
    spectrum = spectrum.clamp(min=0)
    p = spectrum / spectrum.sum().clamp(min=torch.finfo(spectrum.dtype).tiny) + eps
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def rankme(z: Tensor, eps: float = ENTROPY_EPS) -> float:
    """RankMe (Garrido et al., ICML 2023, arXiv:2210.02885, eq. 1) of embeddings z: (N, D).

    The smooth effective rank of the embedding matrix: exp of the entropy of its singular values
    normalised to sum to 1, p_k = sigma_k / ||sigma||_1 + eps. 1 for embeddings that all point
    the same way (complete collapse), min(N, D) for a matrix whose singular values are all equal.
    Not centred, as in the paper.
    """
    return _effective_rank(torch.linalg.svdvals(z.detach().double()), eps)


@torch.no_grad()
def lidar(e: Tensor, delta: float = LIDAR_DELTA, eps: float = ENTROPY_EPS) -> float:
    """LiDAR (Thilak et al., ICLR 2024, arXiv:2312.04000, eqs. 2-5) of embeddings e: (n, q, D).

    Each of the n images is a class whose q samples are its augmented views. With class means
    mu_x and their mean mu, the between-class scatter is sum_x (mu_x - mu)(mu_x - mu)^T / (n - 1),
    the within-class scatter sum_x sum_i (e_xi - mu_x)(e_xi - mu_x)^T / (n (q - 1)) + delta I,
    and LiDAR is the effective rank (as RankMe's, of the eigenvalues) of the LDA matrix
    Sigma_w^-1/2 Sigma_b Sigma_w^-1/2: how many directions separate images more than their own
    augmentations move them.

    Raises:
        ValueError: fewer than 2 images or 2 views.
    """
    n, q, d = e.shape
    if n < 2 or q < 2:
        raise ValueError(f"lidar needs >= 2 images and >= 2 views of each, got e of shape "
                         f"{tuple(e.shape)}")
    e = e.detach().double()
    class_means = e.mean(dim=1)  # (n, D)
    between = class_means - class_means.mean(dim=0)
    sigma_b = between.T @ between / (n - 1)
    within = (e - class_means[:, None]).reshape(n * q, d)
    sigma_w = within.T @ within / (n * (q - 1)) + delta * torch.eye(d, dtype=e.dtype)
    values, vectors = torch.linalg.eigh(sigma_w)
    inv_sqrt = vectors @ torch.diag(values.rsqrt()) @ vectors.T
    lda = inv_sqrt @ sigma_b @ inv_sqrt
    return _effective_rank(torch.linalg.eigvalsh((lda + lda.T) / 2), eps)


def embedding_std(z: Tensor) -> float:
    """SimSiam's collapse monitor (:func:`output_std`) of z: (N, D), times sqrt(D).

    1 when the directions spread evenly over the sphere, 0 when every embedding is the same;
    scaled so that it does not depend on D.
    """
    return output_std(z) * math.sqrt(z.shape[1])


@dataclass(frozen=True)
class Collapse:
    """A collapsed representation, as the monitors saw it."""

    kind: str  # "complete" (one point) or "dimensional" (a few directions)
    where: str  # "encoder" or "projector"
    rank: float  # its RankMe
    dim: int  # the largest rank it could have: min(samples, embedding dimensions)
    std: float  # its embedding_std

    def describe(self) -> str:
        """``complete collapse of the encoder's embeddings (RankMe 1.0 of 512, std 0.001)``."""
        return (f"{self.kind} collapse of the {self.where}'s embeddings (RankMe {self.rank:.1f} "
                f"of {self.dim}, std {self.std:.3f})")


# Below this embedding_std, the embeddings are one point. Measured on Fashion-MNIST (BENCHMARKS.md,
# label-free monitors): random-init and trained ResNet-18s keep an encoder RankMe of 12-25% of
# their dimensions, projectors 4-13%, and an embedding_std of 0.12 or more; SimSiam without its
# stop-gradient (its paper's fig. 2 ablation) took its projector's RankMe from 33 to 1.9 of 256
# (0.7%) in 46 steps while a SimSiam with it held 31.
COMPLETE_STD = 0.02


def detect_collapse(where: str, z: Tensor, rank: float, rank_fraction: float
                    ) -> Collapse | None:
    """The collapse of embeddings z: (N, D) with RankMe ``rank``, or None if they are healthy.

    Complete: the embeddings are (nearly) one point: embedding_std < ``COMPLETE_STD`` or a
    RankMe below 1.5. Dimensional: RankMe below ``rank_fraction`` of min(N, D).
    """
    dim = min(z.shape)
    std = embedding_std(z)
    if std < COMPLETE_STD or rank < 1.5:
        return Collapse("complete", where, rank, dim, std)
    if rank < rank_fraction * dim:
        return Collapse("dimensional", where, rank, dim, std)
    return None
