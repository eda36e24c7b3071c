"""Process-group helpers that fall back to a single process when none is initialised.

Losses call these instead of ``torch.distributed`` directly, so they run unchanged in one process
(tests, notebooks) and across Ray Train workers (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """Whether a process group with more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank; 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes; 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


class _CommClock:
    """Seconds this process has spent communicating: the union of the collectives' intervals.

    Explicit collectives (gathers for negatives, all-reduced statistics) block on gloo, so their
    wall time is their cost. DDP's gradient all-reduce runs in the background while backward goes
    on; :func:`timed_allreduce_hook` times each bucket from launch to completion, counting only
    the part of an interval after the last counted one ended, so queued buckets are never counted
    twice. Buckets mostly complete in launch order; one that overtakes another (gloo has two
    threads) is undercounted by the gap between their launches. On GPU (NCCL) collectives are
    asynchronous, so only their launch is timed and the rest shows as compute.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # bucket callbacks run on the backend's thread
        self.seconds = 0.0
        self._busy_until = 0.0

    def add(self, started: float, ended: float) -> None:
        with self._lock:
            self.seconds += max(0.0, ended - max(started, self._busy_until))
            self._busy_until = max(self._busy_until, ended)


_CLOCK = _CommClock()


def comm_seconds() -> float:
    """Seconds spent in collectives by this process so far (differences give an interval's)."""
    return _CLOCK.seconds


@contextlib.contextmanager
def _timed() -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        _CLOCK.add(started, time.perf_counter())


def timed_allreduce_hook(state: Any, bucket: Any) -> torch.futures.Future[Tensor]:
    """DDP's gradient averaging (all-reduce, divide by the world size), timed into the clock.

    Register with ``ddp_model.register_comm_hook(None, timed_allreduce_hook)`` before the first
    backward; the update is the same as DDP's built-in all-reduce. ``bucket`` is a
    ``torch.distributed.GradBucket`` (flattened gradients of several parameters).
    """
    started = time.perf_counter()
    gradients = bucket.buffer().div_(dist.get_world_size())
    future = dist.all_reduce(gradients, async_op=True).get_future()

    def finished(done: torch.futures.Future[list[Tensor]]) -> Tensor:
        _CLOCK.add(started, time.perf_counter())
        return done.value()[0]

    return future.then(finished)


# DDP checks a hook's annotations as objects, and this module's are strings (postponed
# evaluation): give it the objects.
timed_allreduce_hook.__annotations__.update(
    {"bucket": dist.GradBucket,  # type: ignore[attr-defined]
     "return": torch.futures.Future[Tensor]})


def gather(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping gradients.

    Args:
        x: (B, ...) on this rank; every rank must pass the same shape.

    Returns:
        (B * W, ...) ordered by rank. Gradients flow back to each rank's own ``x``: the backward
        pass sums the incoming gradients of all ranks, so with DDP's gradient averaging the update
        equals one process computing the loss on the concatenated batch (tested in
        tests/test_losses.py with two gloo processes).
    """
    if not is_distributed():
        return x
    out: Tensor = _GatherWithGrad.apply(x)
    return out


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient and keeps this rank's slice.

    Our own instead of ``torch.distributed.nn.functional.all_gather`` (deprecated in torch 2.14;
    its suggested successor is private API whose backward needs reduce-scatter, which gloo lacks).
    all_reduce works on every backend.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        with _timed():
            dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)  # (B * W, ...)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        with _timed():
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.chunk(dist.get_world_size(), dim=0)[dist.get_rank()]


def _all_reduce(x: Tensor, op: dist.ReduceOp.RedOpType) -> Tensor:
    """``op`` of ``x`` over ranks on a detached copy; ``x`` itself without a process group."""
    if not is_distributed():
        return x
    y = x.detach().clone()
    with _timed():
        dist.all_reduce(y, op=op)
    return y


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` over ranks (no gradient)."""
    return _all_reduce(x, dist.ReduceOp.SUM) / world_size()


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over ranks (no gradient)."""
    return _all_reduce(x, dist.ReduceOp.SUM)


def all_reduce_max(x: Tensor) -> Tensor:
    """Elementwise max of ``x`` over ranks (no gradient)."""
    return _all_reduce(x, dist.ReduceOp.MAX)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenation of ``x`` from every rank along dim 0, without gradients (e.g. queue keys)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    with _timed():
        dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def gather_rows(x: Tensor, sizes: list[int]) -> Tensor:
    """Concatenation of every rank's ``x`` when ranks hold different numbers of rows.

    Args:
        x: (sizes[rank], ...) on this rank.
        sizes: rows of each rank, known to all of them.

    Returns:
        (sum(sizes), ...) ordered by rank, on every rank.
    """
    if not is_distributed():
        return x
    most = max(sizes)
    padded = x.new_zeros((most, *x.shape[1:]))
    padded[:len(x)] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    with _timed():
        dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])
