"""Colorization (raysl/methods/colorization.py) against Zhang et al. 2016's definitions."""

import math

import pytest
import torch

from raysl import config as C
from raysl.errors import ConfigError
from raysl.losses import rebalanced_soft_cross_entropy
from raysl.methods.base import Progress, build_method
from raysl.methods.colorization import gamut_bins, rebalancing_weights, rgb_to_lab, soft_encode
from tests.test_methods import tiny_batch, tiny_config


@pytest.mark.parametrize(("rgb", "lab"), [
    ((1.0, 0.0, 0.0), (53.24, 80.09, 67.20)),  # CIE Lab of sRGB red (D65)
    ((0.0, 0.0, 1.0), (32.30, 79.19, -107.86)),
    ((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)),
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((0.5, 0.5, 0.5), (53.39, 0.0, 0.0)),
])
def test_rgb_to_lab_gives_the_standard_values(rgb, lab):
    out = rgb_to_lab(torch.tensor(rgb).view(1, 3, 1, 1)).flatten()
    torch.testing.assert_close(out, torch.tensor(lab), atol=0.02, rtol=0)


def test_the_bins_cover_every_srgb_colour():
    centres = gamut_bins(10.0)
    assert 200 < len(centres) < 313 + 50  # the sRGB gamut's cells (ImageNet's: 313)
    ab = rgb_to_lab(torch.rand(1, 3, 4000, 1, generator=torch.Generator().manual_seed(0)))
    ab = ab[0, 1:, :, 0].T
    assert torch.cdist(ab, centres).min(dim=1).values.max() <= 5 * math.sqrt(2) + 1e-4


def test_soft_encoding_spreads_each_colour_over_its_5_nearest_bins():
    centres = gamut_bins(10.0)
    ab = torch.tensor([[3.0, -12.0], [40.0, 41.0]])
    soft = soft_encode(ab, centres)
    assert torch.allclose(soft.sum(dim=1), torch.ones(2))
    assert (soft > 0).sum(dim=1).tolist() == [5, 5]
    for row, colour in zip(soft, ab, strict=True):  # naive: the 5 nearest, Gaussian sigma 5
        d = [float((colour - c).pow(2).sum()) for c in centres]
        nearest = sorted(range(len(d)), key=d.__getitem__)[:5]
        w = [math.exp(-d[i] / 50) for i in nearest]
        for i, wi in zip(nearest, w, strict=True):
            assert row[i].item() == pytest.approx(wi / sum(w), rel=1e-5)


def test_rebalancing_weights_are_the_papers_eq_4():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [50.0, 50.0]])
    counts = torch.tensor([70.0, 20.0, 9.0, 1.0])
    w = rebalancing_weights(counts, centres, mix=0.5, sigma=5.0)
    p = [c / 100 for c in counts.tolist()]
    g = [[math.exp(-float((a - b).pow(2).sum()) / 50) for b in centres] for a in centres]
    smooth = [sum(g[q][j] * p[j] for j in range(4)) for q in range(4)]
    smooth = [s / sum(smooth) for s in smooth]
    raw = [1 / (0.5 * s + 0.5 / 4) for s in smooth]
    norm = sum(s * r for s, r in zip(smooth, raw, strict=True))
    torch.testing.assert_close(w, torch.tensor([r / norm for r in raw]), rtol=1e-5, atol=0)
    assert w[3] > w[0]  # the rare colour weighs more
    assert torch.allclose(rebalancing_weights(counts, centres, mix=1.0), torch.ones(4))


def test_the_loss_is_the_weighted_multinomial_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits, soft = torch.randn(6, 4, generator=g), torch.rand(6, 4, generator=g)
    soft, weights = soft / soft.sum(1, keepdim=True), torch.rand(6, generator=g) + 0.5
    naive = 0.0
    for z_row, s_row, v in zip(logits.tolist(), soft.tolist(), weights.tolist(), strict=True):
        norm = math.log(sum(math.exp(z) for z in z_row))
        naive -= v * sum(s * (z - norm) for s, z in zip(s_row, z_row, strict=True))
    assert rebalanced_soft_cross_entropy(logits, soft, weights).item() == pytest.approx(naive / 6)


@pytest.mark.parametrize("loss", ["classification", "regression"])
def test_one_forward_counts_the_colours_and_predicts_a_quarter_grid(loss):
    cfg = tiny_config("colorization", extra=(f"method.loss={loss}",))
    torch.manual_seed(0)
    method = build_method(cfg)
    views, targets = tiny_batch(cfg)
    assert views[0].shape == (8, 1, 32, 32) and targets["target"].shape == (8, 3, 32, 32)
    out = method(views, Progress(0, 1, 1), targets)
    assert torch.isfinite(out.loss)
    counted = method.bin_counts.sum().item()
    assert counted == (8 * 8 * 8 if loss == "classification" else 0)  # 8 x 8 pixels each


def test_gray_data_is_refused_naming_why():
    with pytest.raises(ConfigError) as info:
        C.load(None, ["method.name=colorization", "data.channels=1"])
    assert info.value.field == "data.channels" and "colorization" in str(info.value)
