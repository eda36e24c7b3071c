"""One optimisation step of any SSL method: plain torch, no Ray (tested without a cluster)."""

from __future__ import annotations

import contextlib
import math
from typing import cast

import torch
from torch import Tensor, nn

from raysl import distributed
from raysl.config import Precision
from raysl.methods.base import LossOutput, SSLMethod


def unwrap(model: nn.Module) -> SSLMethod:
    """The method inside a DDP/FSDP wrapper (or the method itself)."""
    return cast(SSLMethod, getattr(model, "module", model))


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; ``None`` means full fp32.

    ``auto`` uses bf16 on GPUs that support it (no loss scaling needed), fp16 on older GPUs and
    fp32 on CPU, where autocast is slower than fp32 for convolutions.
    """
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops instead of corrupting the weights."""


def train_step(model: nn.Module, views: list[Tensor], optimizer: torch.optim.Optimizer,
               progress: float, step: int, amp_dtype: torch.dtype | None = None,
               scaler: torch.amp.GradScaler | None = None) -> tuple[float, LossOutput]:
    """Forward, backward and update on one batch of views.

    Args:
        model: an SSL method, possibly DDP-wrapped.
        views: view tensors (B, C, H, W) on the model's device.
        optimizer: updates ``model``'s parameters.
        progress: training progress in [0, 1] (for the method's own schedules).
        step: global step index, for error messages.
        amp_dtype: autocast dtype, or ``None`` for fp32.
        scaler: gradient scaler, needed for fp16 only.

    Returns:
        The loss averaged over all workers (identical on every rank) and the method's output.

    Raises:
        NonFiniteLossError: on every rank at once (the check uses the all-reduced loss, so no rank
            is left waiting in a collective), before the weights are touched.
    """
    device_type = views[0].device.type
    ctx = (torch.autocast(device_type=device_type, dtype=amp_dtype) if amp_dtype is not None
           else contextlib.nullcontext())
    optimizer.zero_grad(set_to_none=True)
    with ctx:
        out: LossOutput = model(views, progress)
    global_loss = distributed.all_reduce_mean(out.loss.detach().float()).item()
    if not math.isfinite(global_loss):
        raise NonFiniteLossError(f"loss={global_loss} at step {step}: stopping (lower the "
                                 "learning rate, raise the temperature, or use fp32)")
    if scaler is not None:
        scaler.scale(out.loss).backward()  # type: ignore[no-untyped-call]
        scaler.step(optimizer)
        scaler.update()
    else:
        out.loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    unwrap(model).on_step_end(progress)
    return global_loss, out
