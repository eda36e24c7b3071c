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
