"""Frozen-encoder features in this process (online evaluation), and how images reach encoders."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from raysl.data.decode import square_images


def resized(chunk: np.ndarray, size: int) -> Tensor:
    """(n, H, W, C) uint8 -> (n, C, size, size) float in [0, 1]: an encoder's input.

    Each image is taken to ``size`` as image files are decoded (shorter side resized, centre
    kept: :func:`~raysl.data.decode.square_images`); one already ``size`` x ``size`` is its
    own input, pixel for pixel. Evaluation, the registered pyfunc, ``raysl embed`` and
    ``neighbours`` and the export check all prepare images here, so the same pixels give the
    same embedding wherever they are sent (``tests/serving/test_consumers.py``).
    """
    # A copy: Ray hands out read-only views of its object store, which torch warns about.
    square = np.array(square_images(chunk, size))
    return torch.from_numpy(square).permute(0, 3, 1, 2).float().div_(255)


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
