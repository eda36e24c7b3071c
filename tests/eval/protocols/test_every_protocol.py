"""Every registered protocol, on data where the answer is known (new protocols are picked up)."""

import numpy as np
import pytest
import torch

from raysl import catalog
from raysl import config as C
from raysl.config import ModelConfig
from raysl.eval.protocols.base import (
    FeatureProtocol,
    Features,
    ImageProtocol,
    InMemoryBank,
    cheapest_first,
)
from raysl.eval.splits import LabeledSplit
from raysl.nn.backbones import build_encoder

EVAL = C.load(None, ["eval.knn_k=5", "eval.linear_lrs=[0.1]", "eval.linear_epochs=[5]",
                     "eval.finetune_fractions=[1.0]", "eval.finetune_epochs=1",
                     "eval.finetune_min_steps=40", "eval.finetune_batch_size=16",
                     "eval.finetune_lr=6.4"]).eval  # 0.4 at batch 16


def _separable_features(seed: int) -> Features:
    """Three well-separated clusters: any sound protocol scores them (almost) perfectly."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(3, 8) * 10

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 3
        return centres[y] + torch.randn(n, 8, generator=g), y

    bank, bank_y = draw(90)
    queries, query_y = draw(30)
    return Features(InMemoryBank(bank, bank_y, block_rows=32), queries, query_y, 3)


def _halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dark 16 px images with a bright top (class 0) or bottom (class 1) half.

    Top and bottom, not left and right: training augmentation flips images horizontally.
    """
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 40, (n, 16, 16, 1)).astype(np.uint8)
    for i, c in enumerate(y):
        x[i, 8 * c:8 * c + 8] += 200
    return x, y


@pytest.mark.parametrize("name", catalog.names("protocol"))
def test_every_protocol_scores_an_easy_split(name):
    protocol = catalog.get("protocol", name)()
    assert protocol.name == name and protocol.title and protocol.summary
    if isinstance(protocol, FeatureProtocol):
        scores = protocol.score(_separable_features(0), EVAL, seed=0)
    else:
        assert isinstance(protocol, ImageProtocol)
        x, y = _halves(64, 0)
        xt, yt = _halves(32, 1)
        jobs = protocol.jobs(EVAL, y, seed=0)
        assert jobs and all(len(j.train_indices) <= len(y) for j in jobs)
        torch.manual_seed(0)
        encoder = build_encoder(ModelConfig(width=8, small_stem=True), 1, 16)
        job = jobs[0]
        split = LabeledSplit(x[job.train_indices], y[job.train_indices], xt, yt, 2, "halves")
        scores = protocol.run(encoder, split, job, "cpu", from_scratch=False)
    assert scores.metrics and all(k.startswith(f"{name}_") for k in scores.metrics)
    assert all(0.0 <= v <= 1.0 for v in scores.metrics.values())
    top1 = [v for k, v in scores.metrics.items() if k.endswith("top1")]
    assert top1 and min(top1) >= 0.9, scores.metrics
    if scores.predictions is not None:
        assert scores.predictions.shape == (30,)


def test_smoke_order_is_cheapest_first():
    assert cheapest_first(["finetune", "linear", "knn"]) == ["knn", "linear", "finetune"]


def test_unknown_protocol_names_the_field_and_the_known_ones():
    with pytest.raises(C.ConfigError, match=r"eval\.protocols\[1\]='probe': must be one of "
                                            r"\['finetune', 'knn', 'linear'\]"):
        C.load(None, ["eval.protocols=knn,probe"])
