"""Momentum (EMA) copies of networks: BYOL's target, MoCo's key encoder, DINO's teacher."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters get no gradients (updated by EMA only)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target = momentum * target + (1 - momentum) * online``, parameter by parameter.

    Buffers (BatchNorm running statistics) are left alone: the target's forward passes keep its
    own, as in the BYOL, MoCo and DINO reference code.

    Raises:
        ValueError: if ``momentum`` is outside [0, 1] or the two modules differ in structure.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum={momentum}: must be in [0, 1]")
    t_params: list[Tensor] = list(target.parameters())
    o_params: list[Tensor] = list(online.parameters())
    if [t.shape for t in t_params] != [o.shape for o in o_params]:
        raise ValueError(f"target and online differ in structure: {len(t_params)} vs "
                         f"{len(o_params)} parameters, or their shapes differ")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, [p.detach() for p in o_params], alpha=1.0 - momentum)
