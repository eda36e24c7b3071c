"""RankMe and LiDAR against naive transcriptions of the papers, analytic cases, the collapse rule,
and the monitors on 2 gloo processes vs 1 process on the whole sample."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from raysl import config as C
from raysl.data.views import MONITOR_CHUNK, monitor_views
from raysl.eval.monitors import (
    COMPLETE_STD,
    LIDAR_DELTA,
    detect_collapse,
    embedding_std,
    lidar,
    rankme,
)
from raysl.eval.online import LabelFreeMonitor
from raysl.nn.backbones import build_encoder
from raysl.nn.heads import MLP, mlp_dims


def naive_rankme(z: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe, eq. 1 of arXiv:2210.02885, term by term."""
    sigma = np.linalg.svd(z, compute_uv=False)
    p = [s / sum(abs(sigma)) + eps for s in sigma]
    return math.exp(-sum(pk * math.log(pk) for pk in p))


def naive_lidar(e: np.ndarray, delta: float = LIDAR_DELTA, eps: float = 1e-7) -> float:
    """LiDAR, eqs. 2-5 of arXiv:2312.04000, with loops over images and views."""
    n, q, d = e.shape
    mu_x = [e[i].mean(axis=0) for i in range(n)]
    mu = sum(mu_x) / n
    sigma_b = sum(np.outer(m - mu, m - mu) for m in mu_x) / (n - 1)
    sigma_w = sum(np.outer(e[i, j] - mu_x[i], e[i, j] - mu_x[i])
                  for i in range(n) for j in range(q)) / (n * (q - 1)) + delta * np.eye(d)
    w, v = np.linalg.eigh(sigma_w)
    inv_sqrt = v @ np.diag(w ** -0.5) @ v.T
    lam = np.linalg.eigvalsh(inv_sqrt @ sigma_b @ inv_sqrt)
    p = [max(x, 0) / sum(abs(lam)) + eps for x in lam]
    return math.exp(-sum(pk * math.log(pk) for pk in p))


def test_rankme_equals_the_papers_formula():
    z = torch.randn(64, 16, generator=torch.Generator().manual_seed(0)) @ torch.diag(
        torch.linspace(0.1, 3, 16))
    assert rankme(z) == pytest.approx(naive_rankme(z.double().numpy()), rel=1e-9)


def test_rankme_of_an_orthogonal_matrix_is_full_and_of_a_rank_one_matrix_is_one():
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(1)))
    assert rankme(q) == pytest.approx(32, rel=1e-4)
    rank_one = torch.randn(50, 1) @ torch.randn(1, 20)
    assert rankme(rank_one) == pytest.approx(1, abs=1e-3)
    assert rankme(torch.zeros(8, 4)) == pytest.approx(1, abs=1e-3)  # no NaN on all zeros


def test_lidar_equals_the_papers_formula():
    g = torch.Generator().manual_seed(2)
    e = torch.randn(12, 1, 6, generator=g) * 2 + 0.3 * torch.randn(12, 4, 6, generator=g)
    assert lidar(e) == pytest.approx(naive_lidar(e.double().numpy()), rel=1e-7)


def test_duplicated_views_leave_lidar_only_the_ridge_as_within_class_scatter():
    """Identical views: Sigma_w = delta I, so LiDAR is the effective rank of Sigma_b's spectrum."""
    images = torch.randn(20, 1, 8, generator=torch.Generator().manual_seed(3))
    e = images.expand(20, 3, 8)
    between = (images[:, 0] - images[:, 0].mean(0)).double()
    spectrum = torch.linalg.eigvalsh(between.T @ between / 19)
    p = spectrum / spectrum.sum() + 1e-7
    assert lidar(e) == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-6)
    # Views that move as far as the images differ separate nothing: LiDAR falls.
    noisy = images + 5 * torch.randn(20, 3, 8, generator=torch.Generator().manual_seed(4))
    assert lidar(noisy) < lidar(e)


def test_lidar_needs_two_views():
    with pytest.raises(ValueError, match="2 views"):
        lidar(torch.randn(5, 1, 3))


def test_collapse_rule():
    g = torch.Generator().manual_seed(5)
    healthy = torch.randn(256, 64, generator=g)
    assert embedding_std(healthy) == pytest.approx(1, abs=0.05)
    assert detect_collapse("encoder", healthy, rankme(healthy), 0.02) is None
    one_point = torch.ones(256, 64) + 1e-6 * torch.randn(256, 64, generator=g)
    complete = detect_collapse("encoder", one_point, rankme(one_point), 0.02)
    assert complete is not None and complete.kind == "complete"
    assert complete.std < COMPLETE_STD and "complete collapse of the encoder's" in \
        complete.describe()
    two_dims = torch.randn(256, 2, generator=g) @ torch.randn(2, 128, generator=g)
    dimensional = detect_collapse("projector", two_dims, rankme(two_dims), 0.02)
    assert dimensional is not None and dimensional.kind == "dimensional"
    assert dimensional.dim == 128 and "of 128" in dimensional.describe()


def _cfg() -> C.Config:
    return C.load(None, ["data.source.format=generated", "data.image_size=16", "data.channels=1",
                         "model.width=4", "model.small_stem=true", "eval.monitor_views=3",
                         "eval.batch_size=4"])


def _images(n: int = 2 * MONITOR_CHUNK + 11) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 20, 20, 1), dtype=np.uint8)


def test_monitor_views_do_not_depend_on_which_rows_are_made_together():
    cfg, images = _cfg(), _images()
    whole = monitor_views(images, cfg.data, 3, seed=7, start=0, stop=len(images))
    assert whole.shape == (len(images), 3, 1, 16, 16) and whole.dtype == torch.uint8
    parts = [monitor_views(images, cfg.data, 3, 7, a, b)
             for a, b in ((0, 100), (100, 101), (101, len(images)))]
    assert torch.equal(torch.cat(parts), whole)
    assert not torch.equal(whole[:, 0], whole[:, 1])  # the views differ...
    assert torch.equal(whole, monitor_views(images, cfg.data, 3, 7, 0, len(images)))  # ...fixed


def _models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    encoder = build_encoder(_cfg().model, 1, 16)
    return encoder, MLP(mlp_dims(encoder.num_features, 16, 8, 2))


def _monitor_rank(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        encoder, projector = _models()
        monitor = LabelFreeMonitor(_images(37), _cfg(), rank, 2)
        values, _ = monitor.measure_encoder(encoder, projector, torch.device("cpu"))
        torch.save(values, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_monitors_on_two_workers_equal_one_process_on_the_whole_sample(tmp_path):
    mp.spawn(_monitor_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    encoder, projector = _models()
    single = LabelFreeMonitor(_images(37), _cfg(), 0, 1)
    assert single.samples == 37 and single.views.shape[:2] == (37, 3)
    expected, _ = single.measure_encoder(encoder, projector, torch.device("cpu"))
    assert set(expected) == {"eval/rankme", "eval/lidar", "eval/embedding_std",
                             "eval/rankme_projector", "eval/lidar_projector",
                             "eval/embedding_std_projector"}
    for values in ranks:  # 19 + 18 images: uneven shares gathered in order
        assert values == pytest.approx(expected, rel=1e-5)
    assert encoder.training  # measured in eval mode, handed back in train mode
