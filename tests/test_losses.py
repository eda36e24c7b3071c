"""NT-Xent against a naive transcription of the paper, analytic values, and 2 gloo processes."""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from raysl.losses import nt_xent


def naive_nt_xent(z0: np.ndarray, z1: np.ndarray, tau: float) -> float:
    """SimCLR eq. (1) and Algorithm 1, loop by loop, in float64 (arXiv:2002.05709)."""
    n = len(z0)
    z = np.empty((2 * n, z0.shape[1]))
    z[0::2], z[1::2] = z0, z1  # z_{2k-1}, z_{2k}: the two views of image k
    z = z / np.linalg.norm(z, axis=1, keepdims=True)

    def sim(i: int, j: int) -> float:
        return float(z[i] @ z[j])

    def ell(i: int, j: int) -> float:
        denom = sum(math.exp(sim(i, k) / tau) for k in range(2 * n) if k != i)
        return -math.log(math.exp(sim(i, j) / tau) / denom)

    return sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


@pytest.mark.parametrize("b", [1, 3, 8])
@pytest.mark.parametrize("d", [2, 16])
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_matches_paper_reference(b, d, tau):
    g = torch.Generator().manual_seed(b * 100 + d)
    z0, z1 = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    ours = nt_xent(z0.double(), z1.double(), tau).item()
    assert ours == pytest.approx(naive_nt_xent(z0.numpy(), z1.numpy(), tau), rel=1e-9, abs=1e-9)


def test_collinear_embeddings_give_log_2n_minus_1():
    # Every similarity is 1: each anchor's positive is one of 2N - 1 equal logits.
    b = 5
    z = torch.ones(b, 4)
    assert nt_xent(z, z, 0.3).item() == pytest.approx(math.log(2 * b - 1), rel=1e-6)


def test_symmetric_in_the_two_views():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    assert nt_xent(z0, z1, 0.2).item() == pytest.approx(nt_xent(z1, z0, 0.2).item(), rel=1e-6)


def test_perfect_alignment_beats_random():
    z = torch.eye(8)
    assert nt_xent(z, z, 0.1).item() < nt_xent(z, torch.roll(z, 1, 0), 0.1).item()


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.ones(2, 2), torch.ones(2, 2), 0.0)
    with pytest.raises(ValueError, match="both be"):
        nt_xent(torch.ones(2, 2), torch.ones(3, 2), 0.5)


# ---- distributed equivalence: 2 gloo processes with DDP == 1 process on the whole batch ----

B_PER_RANK, D_IN, D_OUT, TAU = 4, 6, 5, 0.3


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.nn.Linear]:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2 * B_PER_RANK, D_IN, generator=g)
    x1 = torch.randn(2 * B_PER_RANK, D_IN, generator=g)
    torch.manual_seed(1)
    return x0, x1, torch.nn.Linear(D_IN, D_OUT)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x0, x1, model = _data()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        sl = slice(rank * B_PER_RANK, (rank + 1) * B_PER_RANK)
        loss = nt_xent(ddp(x0[sl]), ddp(x1[sl]), TAU)
        loss.backward()
        torch.save({"loss": loss.detach(), "grad_w": model.weight.grad, "grad_b": model.bias.grad},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process_on_concatenated_batch(tmp_path: Path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    x0, x1, model = _data()
    single = nt_xent(model(x0), model(x1), TAU)
    single.backward()

    mean_loss = sum(r["loss"] for r in ranks) / 2
    assert mean_loss.item() == pytest.approx(single.item(), rel=1e-5)
    for r in ranks:  # DDP averaged the gradients: every rank holds the single-process gradient
        torch.testing.assert_close(r["grad_w"], model.weight.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["grad_b"], model.bias.grad, rtol=1e-5, atol=1e-6)
