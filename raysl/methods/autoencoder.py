"""A (denoising) convolutional autoencoder: the baseline contrastive learning is compared to."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raysl.catalog import register
from raysl.config import MethodConfig
from raysl.errors import check
from raysl.methods.base import NO_TARGETS, LossOutput, Progress, SSLMethod, Targets
from raysl.nn.backbones import Encoder, unit_float

Corruption = Literal["none", "masking", "gaussian"]


@dataclass(frozen=True)
class AutoencoderConfig(MethodConfig):
    """Autoencoder hyperparameters (masking noise as the denoising autoencoder, ICML 2008)."""

    name: str = "autoencoder"
    # How the input is corrupted before encoding (the target stays clean): "masking" zeroes a
    # random corruption_level of the pixels (the denoising autoencoder's masking noise),
    # "gaussian" adds noise of std corruption_level (pixels in [0, 1]), "none" is a plain
    # autoencoder.
    corruption: Corruption = "masking"
    corruption_level: float = 0.25
    decoder_width: int = 64  # channels of the decoder's last hidden layer (twice that before)

    def __post_init__(self) -> None:
        check(0.0 <= self.corruption_level < 1.0, "corruption_level", self.corruption_level,
              "in [0, 1): a fraction of pixels (masking) or a noise std (gaussian)")
        check(self.decoder_width >= 1, "decoder_width", self.decoder_width, "must be >= 1")


def corrupt(x: Tensor, kind: Corruption, level: float) -> Tensor:
    """The denoising autoencoder's corrupted input (Vincent et al. 2008, section 2.3).

    Args:
        x: (B, C, S, S) images in [0, 1].
        kind: ``masking`` sets each pixel (all its channels) to 0 with probability ``level``;
            ``gaussian`` adds N(0, level^2) noise and clips to [0, 1]; ``none`` returns ``x``.
        level: the fraction of pixels masked, or the noise std.

    Returns:
        (B, C, S, S) in [0, 1].
    """
    if kind == "none" or level == 0.0:
        return x
    if kind == "masking":
        keep = torch.rand(x.shape[0], 1, *x.shape[2:], device=x.device) >= level
        return x * keep
    return (x + level * torch.randn_like(x)).clamp(0.0, 1.0)


class ConvDecoder(nn.Module):
    """Features (B, F) -> images (B, C, S, S): a linear map to a coarse grid, two 2x upsamplings.

    The grid is S/4 (rounded up) on a side with ``2 * width`` channels; each transposed
    convolution doubles the side (DCGAN-style, kernel 4 stride 2); the output is cropped to S.
    """

    def __init__(self, num_features: int, channels: int, size: int, width: int) -> None:
        super().__init__()
        self.size, self.side = size, math.ceil(size / 4)
        self.fc = nn.Linear(num_features, 2 * width * self.side ** 2)
        self.up = nn.Sequential(
            nn.BatchNorm2d(2 * width), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1))

    def forward(self, h: Tensor) -> Tensor:
        """(B, F) -> (B, C, S, S) reconstructions (in the encoder's normalised pixel space)."""
        grid = self.fc(h).view(h.shape[0], -1, self.side, self.side)
        out: Tensor = self.up(grid)[..., :self.size, :self.size]
        return out


@register("method", "autoencoder")
class Autoencoder(SSLMethod):
    """Denoising convolutional autoencoder [0, 1] on the same encoder as every other method.

    The encoder compresses a corrupted view to its feature vector (the pooled features, what
    consumers use); a convolutional decoder reconstructs the clean view; the loss is the mean
    squared error in the encoder's normalised pixel space (per pixel, per sample, so DDP's
    average is the global batch's). This is the reconstruction baseline of the SSL literature
    (e.g. the autoencoder rows of Doersch et al. 2015 and Zhang et al. 2016), measured here
    with raysl's own protocols.

    - [0]: Vincent et al., Extracting and Composing Robust Features with Denoising
      Autoencoders, ICML 2008
    - [1]: Masci et al., Stacked Convolutional Auto-Encoders for Hierarchical Feature
      Extraction, ICANN 2011
    """

    Config = AutoencoderConfig
    summary = "reconstruction baseline: a (denoising) conv decoder rebuilds the view from features"
    paper = "Vincent et al. 2008 (ICML); Masci et al. 2011 (ICANN)"
    collapse_hint = ("a learning rate too high; an autoencoder keeps what is needed to redraw "
                     "pixels, often few directions")
    default_preset = "mae"  # one view, crop and flip only: the pixels to rebuild are the view's
    global_views = 1

    def __init__(self, encoder: Encoder, cfg: MethodConfig) -> None:
        super().__init__(encoder)
        assert isinstance(cfg, AutoencoderConfig)
        self.cfg = cfg
        self.decoder = ConvDecoder(encoder.num_features, encoder.in_channels,
                                   encoder.image_size, cfg.decoder_width)

    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """Corrupt, encode, decode; MSE against the clean, normalised view."""
        clean = unit_float(views[0])
        # Corruption is a training device: in eval mode the encoder sees the clean view. (So the
        # online probe, which learns from the training forward, sees corrupted views' features
        # and reads a little low; the online kNN and every eval protocol see clean images.)
        noisy = (corrupt(clean, self.cfg.corruption, self.cfg.corruption_level)
                 if self.training else clean)
        reconstruction = self.decoder(self.encoder(noisy))
        loss = F.mse_loss(reconstruction.float(), self.encoder.normalise(clean).float())
        return LossOutput(loss)
