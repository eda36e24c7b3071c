"""Run loss cases on 2 gloo processes with DDP, and on 1 process with the concatenated batch.

A case maps the embeddings of each view (a tiny float64 ``torch.nn.Linear`` applied to fixed
inputs) to ``Outputs``: the scalar loss to back-propagate and, optionally, per-sample or
replicated tensors to compare as well. ``run_distributed`` runs every case in ONE spawn of
``WORLD`` processes (a spawn costs seconds); rank r gets samples ``r*B .. (r+1)*B - 1`` of every
view. ``assert_equivalent`` then checks what DDP training relies on:

* the mean of the ranks' losses equals the single-process loss on the whole batch;
* every rank's DDP-averaged gradient equals the single-process gradient;
* ``rows`` of rank r are rows ``r*B .. (r+1)*B - 1`` of the single-process ``rows``;
* ``same`` is identical on every rank and equal to the single-process ``same``.

The DDP models average gradients with raysl's timed all-reduce hook, as training does
(``raysl.distributed.timed_allreduce_hook``), so every case also checks that it averages like
DDP's own; each rank records the communication time it measured (``comm_s``).

Case functions must be module-level (``mp.spawn`` pickles them by reference).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from raysl import distributed

WORLD, B_PER_RANK, D_IN, D_OUT = 2, 4, 6, 5


class Outputs(NamedTuple):
    """What a case computes from the embeddings of this rank's samples."""

    loss: Tensor  # scalar, back-propagated
    rows: Tensor | None = None  # (B, ...) one row per sample of this rank
    same: Tensor | None = None  # the same value on every rank


@dataclass(frozen=True)
class Case:
    """A loss computation: ``fn`` gets one (B, D_OUT) embedding tensor per view."""

    fn: Callable[[list[Tensor]], Outputs]
    n_views: int = 2


Record = dict[str, Tensor]


def inputs(n_views: int) -> tuple[Tensor, torch.nn.Linear]:
    """Fixed inputs (n_views, WORLD * B_PER_RANK, D_IN) and a freshly seeded float64 model."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_views, WORLD * B_PER_RANK, D_IN, generator=g, dtype=torch.float64)
    torch.manual_seed(1)
    return x, torch.nn.Linear(D_IN, D_OUT, dtype=torch.float64)


def _record(out: Outputs, model: torch.nn.Linear) -> Record:
    assert model.weight.grad is not None and model.bias.grad is not None
    rec = {"loss": out.loss.detach(), "grad_w": model.weight.grad, "grad_b": model.bias.grad}
    if out.rows is not None:
        rec["rows"] = out.rows.detach()
    if out.same is not None:
        rec["same"] = out.same.detach()
    return rec


def _worker(rank: int, cases: dict[str, Case], init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        records = {}
        mine = slice(rank * B_PER_RANK, (rank + 1) * B_PER_RANK)
        for name, case in cases.items():
            x, model = inputs(case.n_views)
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            ddp.register_comm_hook(None, distributed.timed_allreduce_hook)
            comm = distributed.comm_seconds()
            out = case.fn([ddp(view[mine]) for view in x])
            out.loss.backward()  # DDP all-reduces (averages) the gradients here
            records[name] = _record(out, model)
            records[name]["comm_s"] = torch.tensor(distributed.comm_seconds() - comm)
        torch.save(records, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_distributed(cases: dict[str, Case], tmp_dir: Path) -> dict[str, list[Record]]:
    """Every case on ``WORLD`` gloo processes (one spawn); per case, one record per rank."""
    mp.spawn(_worker, args=(cases, str(tmp_dir / "init"), str(tmp_dir)), nprocs=WORLD,
             join=True)
    per_rank = [torch.load(tmp_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return {name: [records[name] for records in per_rank] for name in cases}


def run_single(case: Case) -> Record:
    """The case in this process (no process group) on the whole concatenated batch."""
    x, model = inputs(case.n_views)
    out = case.fn([model(view) for view in x])
    out.loss.backward()
    return _record(out, model)


def assert_equivalent(ranks: list[Record], single: Record, rtol: float = 1e-5,
                      atol: float = 1e-8) -> None:
    """The checks listed in the module docstring."""
    close = {"rtol": rtol, "atol": atol}
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / len(ranks), single["loss"], **close)
    for r in ranks:
        torch.testing.assert_close(r["grad_w"], single["grad_w"], **close)
        torch.testing.assert_close(r["grad_b"], single["grad_b"], **close)
    assert ("rows" in single) == all("rows" in r for r in ranks)
    if "rows" in single:
        torch.testing.assert_close(torch.cat([r["rows"] for r in ranks]), single["rows"], **close)
    assert ("same" in single) == all("same" in r for r in ranks)
    if "same" in single:
        for r in ranks:
            torch.testing.assert_close(r["same"], single["same"], **close)
