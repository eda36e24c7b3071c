"""One optimisation step of any SSL method: plain torch, no Ray (tested without a cluster)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from raysl import distributed
from raysl.config import Precision
from raysl.errors import NonFiniteLossError
from raysl.methods.base import NO_TARGETS, Progress, SSLMethod, Targets


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


def memory_format(setting: str, device: torch.device, is_vit: bool) -> torch.memory_format:
    """Layout of the model's 4-D weights and of the views: channels-last (NHWC) or contiguous.

    ``auto`` picks channels-last for convolutional backbones on GPU, where cuDNN's tensor-core
    kernels run NHWC natively (NCHW costs a transpose around every convolution under AMP); on
    CPU and for ViTs (one patch convolution) it changes little, so they stay contiguous.
    """
    if setting == "on" or (setting == "auto" and device.type == "cuda" and not is_vit):
        return torch.channels_last
    return torch.contiguous_format


def in_layout(view: Tensor, layout: torch.memory_format) -> Tensor:
    """An image batch (B, C, S, S) in the model's memory layout (:func:`memory_format`).

    Jigsaw tiles (B, T, C, t, t) are only made contiguous: channels-last is a 4-D layout.
    """
    if view.ndim != 4:
        return view.contiguous()
    return view.contiguous(memory_format=layout)


def forward_seed(seed: int, rank: int, step: int) -> int:
    """The seed of a worker's in-model randomness (MAE's masks, corruption, drop path).

    The weights are initialised from ``seed`` on every rank (they must be equal); after that
    each rank draws its own stream, else sample i of every rank would get the same mask, and a
    resumed run (``step`` > 0) draws new ones instead of replaying those of step 0.
    """
    return (seed * 1_000_003 + rank * 7_919 + step) % 2**63


@dataclass
class StepResult:
    """What one optimizer step measured (identical on every rank)."""

    loss: float  # mean over micro-batches and workers
    logs: dict[str, float] = field(default_factory=dict)  # the method's extras, averaged likewise
    grad_norm: float = float("nan")  # global L2 norm before clipping; NaN when not clipping


def train_step(model: nn.Module, micro_batches: Sequence[list[Tensor]],
               optimizer: torch.optim.Optimizer, progress: Progress,
               amp_dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None,
               clip_grad: float = 0.0, clip_per_param: bool = False,
               targets: Sequence[Targets] = ()) -> StepResult:
    """Forward and backward on each micro-batch, then one update of the weights.

    Gradients of the micro-batches are summed (each loss is divided by their number), so the
    update matches one batch of all of them for losses that are means over independent samples.
    Batch-level statistics are not: a contrastive loss sees only its micro-batch's negatives and
    BatchNorm only its micro-batch, as in every gradient-accumulation implementation.

    Args:
        model: an SSL method, possibly DDP-wrapped.
        micro_batches: one list of view tensors (B, C, S, S) per micro-batch, on the device.
        optimizer: updates ``model``'s parameters.
        progress: where training stands (for the method's schedules); ``progress.step`` is this
            step's index.
        amp_dtype: autocast dtype, or ``None`` for fp32.
        scaler: gradient scaler, needed for fp16 only.
        clip_grad: max L2 norm of the gradients; 0 = no clipping.
        clip_per_param: clip each gradient tensor to ``clip_grad`` on its own (DINO's
            reference) instead of their global norm.
        targets: per micro-batch, the method's ``target_columns`` (B, ...) on the device;
            empty for methods that read none.

    Raises:
        NonFiniteLossError: on every rank at once (the check uses the all-reduced loss, so no rank
            is left waiting in a collective), before the weights are touched.
    """
    method = unwrap(model)
    device_type = micro_batches[0][0].device.type
    n = len(micro_batches)
    optimizer.zero_grad(set_to_none=True)
    loss_sum, logs_sum = 0.0, dict[str, float]()
    no_sync: Any = getattr(model, "no_sync", None)  # DDP's; None for a bare module
    for i, views in enumerate(micro_batches):
        # DDP all-reduces gradients in backward; only the last micro-batch needs to.
        sync = i == n - 1 or no_sync is None
        with contextlib.nullcontext() if sync else no_sync():
            with _autocast(device_type, amp_dtype):
                out = model(views, progress, targets[i] if targets else NO_TARGETS)
            loss = distributed.all_reduce_mean(out.loss.detach().float()).item()
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss={loss} at step {progress.step}: stopping (lower the learning rate, "
                    "raise the temperature, or use fp32)")
            scaled = out.loss / n
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        loss_sum += loss
        for k, v in out.logs.items():
            logs_sum[k] = logs_sum.get(k, 0.0) + v
    if scaler is not None:
        scaler.unscale_(optimizer)  # hooks and clipping see the true gradients
    method.on_after_backward(progress)
    grad_norm = float("nan")
    if clip_grad > 0:
        params = [p for p in model.parameters() if p.grad is not None]
        if clip_per_param:
            grads = cast(list[Tensor], [p.grad for p in params])
            grad_norm = torch.nn.utils.get_total_norm(grads).item()
            for p in params:
                torch.nn.utils.clip_grad_norm_(p, clip_grad)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad).item()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    method.on_step_end(progress)
    return StepResult(loss_sum / n, _mean_over_workers(logs_sum, n, micro_batches[0][0].device),
                      grad_norm)


def _mean_over_workers(sums: dict[str, float], n: int, device: torch.device) -> dict[str, float]:
    """Per-key mean over ``n`` micro-batches and all workers, in one collective."""
    if not sums:
        return {}
    keys = sorted(sums)  # the same order on every rank
    values = distributed.all_reduce_mean(torch.tensor([sums[k] / n for k in keys], device=device))
    return dict(zip(keys, values.tolist(), strict=True))


def _autocast(device_type: str,
              dtype: torch.dtype | None) -> contextlib.AbstractContextManager[None]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)
