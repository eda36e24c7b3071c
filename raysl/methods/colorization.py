"""Colorization: predict the colours of a grayscale image (a pretext task), per pixel.

Letters in shape comments: B images, Q colour bins, h x w the prediction grid (S / 4).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raysl import distributed
from raysl.catalog import register
from raysl.config import MethodConfig
from raysl.errors import check
from raysl.losses import rebalanced_soft_cross_entropy
from raysl.methods.base import NO_TARGETS, LossOutput, Progress, SSLMethod, Targets, target
from raysl.nn.backbones import Encoder, unit_float

AB_RANGE = 110.0  # |a|, |b| of sRGB colours stay below this
_WHITE = (0.95047, 1.0, 1.08883)  # D65 reference white, XYZ
_RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
               (0.2126729, 0.7151522, 0.0721750),
               (0.0193339, 0.1191920, 0.9503041))


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """Standard RGB (B, 3, H, W) in [0, 1] -> CIE Lab (B, 3, H, W): L in [0, 100], |a|, |b| < 110.

    The standard conversion: undo the sRGB gamma, to XYZ (D65), then Lab's cube-root curve.
    """
    lin = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = torch.tensor(_RGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    xyz = torch.einsum("ij,bjhw->bihw", m, lin)
    xyz = xyz / torch.tensor(_WHITE, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    delta = 6.0 / 29.0
    f = torch.where(xyz > delta**3, xyz.clamp(min=1e-12) ** (1.0 / 3.0),
                    xyz / (3 * delta**2) + 4.0 / 29.0)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


@functools.lru_cache(maxsize=4)
def _gamut_bins(grid: float) -> Tensor:
    steps = torch.linspace(0.0, 1.0, 33)
    cube = torch.stack(torch.meshgrid(steps, steps, steps, indexing="ij")).reshape(1, 3, -1, 1)
    ab = rgb_to_lab(cube)[0, 1:, :, 0].T  # (33^3, 2)
    cells: Tensor = torch.unique(torch.floor((ab + AB_RANGE) / grid), dim=0)
    return cells * grid - AB_RANGE + grid / 2


def gamut_bins(grid: float = 10.0) -> Tensor:
    """The colour classes: centres of the ``grid``-sided ab cells that sRGB colours reach.

    The paper keeps the Q = 313 cells of a 10-grid that ImageNet's colours occupy; raysl takes
    the cells that any sRGB colour reaches (a 33^3 sample of the cube), a superset that needs
    no dataset. Returns (Q, 2) float, a then b.
    """
    return _gamut_bins(grid).clone()


def soft_encode(ab: Tensor, centres: Tensor, neighbours: int = 5, sigma: float = 5.0) -> Tensor:
    """Each colour as a distribution over its ``neighbours`` nearest bins (section 2.1).

    Weights are a Gaussian (``sigma``) of the distance to each of the nearest bins, normalised.

    Args:
        ab: (N, 2) colours.
        centres: (Q, 2) bin centres.
        neighbours: bins each colour is spread over (the paper: 5).
        sigma: the Gaussian's width in ab units (the paper: 5).

    Returns:
        (N, Q), rows summing to 1, ``neighbours`` non-zeros each.
    """
    dist2 = torch.cdist(ab, centres).pow(2)  # (N, Q)
    near, idx = dist2.topk(neighbours, dim=1, largest=False)
    w = torch.exp(-near / (2 * sigma**2))
    w = w / w.sum(dim=1, keepdim=True)
    return torch.zeros_like(dist2).scatter_(1, idx, w)


def rebalancing_weights(counts: Tensor, centres: Tensor, mix: float = 0.5,
                        sigma: float = 5.0) -> Tensor:
    """Each bin's weight against the rarity of its colour (eq. 3-4 of the paper).

    ``w ~ ((1 - mix) p~ + mix / Q)^-1`` where p~ is the empirical distribution of the bins
    smoothed by a Gaussian (``sigma``) in ab space, normalised so that ``sum_q p~_q w_q = 1``.

    Args:
        counts: (Q,) how often each bin was the nearest to a true colour.
        centres: (Q, 2) bin centres.
        mix: lambda, the weight of the uniform distribution (the paper: 0.5).
        sigma: the smoothing Gaussian's width in ab units (the paper: 5).
    """
    p = counts.double() / counts.sum().clamp(min=1)
    kernel = torch.exp(-torch.cdist(centres.double(), centres.double()).pow(2) / (2 * sigma**2))
    smooth = kernel @ p
    smooth = smooth / smooth.sum().clamp(min=1e-12)
    w = 1.0 / ((1 - mix) * smooth + mix / len(counts))
    return (w / (smooth * w).sum()).to(centres.dtype)


@dataclass(frozen=True)
class ColorizationConfig(MethodConfig):
    """Colorization hyperparameters (Zhang et al. 2016, arXiv:1603.08511)."""

    name: str = "colorization"
    # "classification": a distribution over quantised ab bins, soft-encoded targets, class
    # rebalancing (the paper). "regression": the ab values under an L2 loss, which the paper
    # shows gives desaturated colours and weaker features (a baseline).
    loss: Literal["classification", "regression"] = "classification"
    bin_size: float = 10.0  # side of the ab cells
    rebalance_mix: float = 0.5  # lambda: 1 = no rebalancing, 0 = full inverse frequency
    head_dim: int = 256  # channels of the prediction head's hidden layer

    def __post_init__(self) -> None:
        check(2.0 <= self.bin_size <= 55.0, "bin_size", self.bin_size,
              "the side of the ab cells, in [2, 55] (the paper: 10)")
        check(0.0 <= self.rebalance_mix <= 1.0, "rebalance_mix", self.rebalance_mix,
              "lambda in [0, 1] (the paper: 0.5; 1 turns rebalancing off)")
        check(self.head_dim >= 1, "head_dim", self.head_dim, "must be >= 1")


@register("method", "colorization")
class Colorization(SSLMethod):
    """Colorful image colorization [0]: gray in, a colour distribution for every pixel out.

    The gray view (replicated to the encoder's channels, so the registered encoder takes
    colour images) goes through the encoder's spatial features; a small convolutional head
    scores the Q bins at that resolution, upsampled to a quarter of the view (the paper's
    output grid); the true colours (Lab of the colour view, averaged to that grid) are
    soft-encoded over their 5 nearest bins and each pixel is weighted by its colour's rarity.
    The bin frequencies are counted from every worker's batches as training goes (the paper
    counts them over ImageNet once, before training): an all-reduced sum, so every rank holds
    the same counts and weights.

    - [0]: Zhang, Isola, Efros, Colorful Image Colorization, ECCV 2016,
      https://arxiv.org/abs/1603.08511
    """

    Config = ColorizationConfig
    summary = "predictive: gray in, per-pixel colour distribution out (rebalanced ab bins)"
    paper = "Zhang et al. 2016, arXiv:1603.08511"
    collapse_hint = ("a learning rate too high, or colours the luminance cannot tell (a "
                     "dataset of gray images converted to RGB has none to learn)")
    default_preset = "colorization"
    global_views = 1
    pretext = "colorization"
    target_columns = ("target",)
    encodes_whole_views = False  # the encoder's feature map, not its pooled output

    centres: Tensor
    bin_counts: Tensor

    def __init__(self, encoder: Encoder, cfg: MethodConfig) -> None:
        super().__init__(encoder)
        assert isinstance(cfg, ColorizationConfig)
        self.cfg = cfg
        centres = gamut_bins(cfg.bin_size)
        self.register_buffer("centres", centres)
        self.register_buffer("bin_counts", torch.zeros(len(centres), dtype=torch.float64))
        out = len(centres) if cfg.loss == "classification" else 2
        self.head = nn.Sequential(
            nn.Conv2d(encoder.num_features, cfg.head_dim, 3, padding=1),
            nn.BatchNorm2d(cfg.head_dim), nn.ReLU(inplace=True),
            nn.Conv2d(cfg.head_dim, out, 1))

    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """Colour scores of every pixel of the gray view against the true colours."""
        gray, colour = views[0], target(targets, "target")  # (B, 1, S, S), (B, 3, S, S) uint8
        size = max(1, gray.shape[-1] // 4)
        channels = self.encoder.in_channels
        scores = self.head(self.encoder.feature_map(gray.expand(-1, channels, -1, -1)))
        scores = F.interpolate(scores, size=(size, size), mode="bilinear", align_corners=False)
        with torch.no_grad():
            lab = rgb_to_lab(unit_float(colour))
            ab = F.interpolate(lab[:, 1:], size=(size, size), mode="area")  # (B, 2, h, w)
            ab = ab.permute(0, 2, 3, 1).reshape(-1, 2)
        pred = scores.float().permute(0, 2, 3, 1).reshape(ab.shape[0], -1)  # (B h w, Q or 2)
        if self.cfg.loss == "regression":
            return LossOutput(F.mse_loss(pred, ab / AB_RANGE))
        soft = soft_encode(ab, self.centres)
        weights = self._pixel_weights(soft)
        loss = rebalanced_soft_cross_entropy(pred, soft, weights)
        accuracy = (pred.argmax(dim=1) == soft.argmax(dim=1)).float().mean().item()
        return LossOutput(loss, {"colour_bin_acc": accuracy})

    @torch.no_grad()
    def _pixel_weights(self, soft: Tensor) -> Tensor:
        """(N,) the rarity weight of each pixel's nearest bin; counts this batch first."""
        nearest = soft.argmax(dim=1)
        if self.training:
            counts = torch.bincount(nearest, minlength=len(self.centres)).to(self.bin_counts)
            self.bin_counts += distributed.all_reduce_sum(counts)
        w = rebalancing_weights(self.bin_counts, self.centres, self.cfg.rebalance_mix)
        return w[nearest].float()
