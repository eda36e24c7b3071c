"""Schedules as pure functions of training progress (a step index or a fraction in [0, 1]).

:func:`set_lr` applies a scheduled learning rate to an optimizer's parameter groups; pretraining,
the linear probe and fine-tuning all set theirs through it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak: float,
                  final: float = 0.0) -> float:
    """Linear warm-up from ~0 to ``peak`` over ``warmup_steps``, then cosine decay to ``final``.

    The warm-up starts at ``peak / warmup_steps`` rather than 0 so that the first step learns
    something (as in nanoGPT's ``get_lr``). Steps past ``total_steps`` return ``final``.
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if step >= total_steps:
        return final
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)  # 0 -> 1
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine(progress: float, start: float, end: float) -> float:
    """Cosine ramp from ``start`` (progress 0) to ``end`` (progress 1), e.g. an EMA momentum."""
    progress = min(max(progress, 0.0), 1.0)
    return end - (end - start) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every scheduled group (times its ``lr_scale``, if any)."""
    for group in optimizer.param_groups:
        if not group.get("fixed_lr", False):
            group["lr"] = lr * group.get("lr_scale", 1.0)
