"""Frozen-encoder features in this process (online evaluation), and the resize both paths use."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def resized(chunk: np.ndarray, size: int) -> Tensor:
    """(n, H, W, C) uint8 -> (n, C, size, size) float in [0, 1]."""
    # A copy: Ray hands out read-only views of its object store, which torch warns about.
    x = torch.from_numpy(np.array(chunk)).permute(0, 3, 1, 2).float().div_(255)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
    return x


@torch.no_grad()
def encoder_features(encoder: nn.Module, images: np.ndarray, image_size: int,
                     batch_size: int = 512, device: str | torch.device = "cpu") -> Tensor:
    """Frozen-encoder features of (N, H, W, C) uint8 images resized to ``image_size``.

    Returns:
        (N, D) float32 on the CPU. The encoder is put in eval mode (BatchNorm running stats).
    """
    was_training = encoder.training
    encoder.eval().to(device)
    out = [encoder(resized(images[i:i + batch_size], image_size).to(device)).float().cpu()
           for i in range(0, len(images), batch_size)]
    encoder.train(was_training)
    return torch.cat(out)
