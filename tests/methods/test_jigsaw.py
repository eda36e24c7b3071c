"""The jigsaw puzzle (raysl/methods/jigsaw.py) against the paper's network and loss."""

import pytest
import torch

from raysl.methods.base import Progress, build_method
from raysl.methods.jigsaw import standardize_tiles
from tests.methods.test_rotation import naive_rotnet_loss as naive_cross_entropy
from tests.test_methods import tiny_batch, tiny_config


def test_each_tile_is_standardised_on_its_own():
    g = torch.Generator().manual_seed(0)
    tiles = torch.rand(6, 3, 5, 5, generator=g) * torch.rand(6, 1, 1, 1, generator=g) + 0.3
    out = standardize_tiles(tiles)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), torch.zeros(6), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.std(dim=(1, 2, 3)), torch.ones(6), atol=1e-3, rtol=0)  # eps
    assert standardize_tiles(torch.full((1, 1, 3, 3), 0.7)).abs().max() < 0.01  # flat: ~0


def test_the_classes_are_the_permutations_and_the_loss_their_cross_entropy():
    cfg = tiny_config("jigsaw", extra=("data.views.jigsaw_permutations=10",))
    torch.manual_seed(0)
    method = build_method(cfg).eval()
    views, targets = tiny_batch(cfg)
    assert views[0].shape[1:3] == (9, 3) and targets["jigsaw"].max() < 10  # 3x3 tiles, RGB
    out = method(views, Progress(0, 1, 1), targets)
    with torch.no_grad():
        logits = method.classifier(method.tile_features(views[0]))
    assert logits.shape == (8, 10)
    assert out.loss.item() == pytest.approx(naive_cross_entropy(logits, targets["jigsaw"]),
                                            rel=1e-5)


def test_the_classifier_sees_where_each_tile_is():
    # One shared trunk per tile, the features concatenated in the order shown: swapping two
    # tiles changes the logits (a bag of tiles could not solve the puzzle).
    cfg = tiny_config("jigsaw")
    torch.manual_seed(0)
    method = build_method(cfg).eval()
    tiles = tiny_batch(cfg)[0][0]
    swapped = tiles.clone()
    swapped[:, [0, 1]] = tiles[:, [1, 0]]
    with torch.no_grad():
        a, b = (method.classifier(method.tile_features(t)) for t in (tiles, swapped))
        one = method.tile_features(tiles[:1])
    assert not torch.allclose(a, b)
    # Each tile's features depend on that tile alone (eval mode: no batch statistics).
    torch.testing.assert_close(one, method.tile_features(tiles)[:1], atol=1e-5, rtol=1e-5)


def test_a_vit_trunk_needs_tiles_that_hold_a_patch():
    from raysl import config as C
    from raysl.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        C.load(None, ["method.name=jigsaw", "model.backbone=vit_tiny", "model.patch_size=16",
                      "data.image_size=32"])  # 3x3 grid: 9 px tiles
    assert info.value.field == "data.image_size" and "9 px" in str(info.value)
