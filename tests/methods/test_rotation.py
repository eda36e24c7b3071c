"""RotNet (raysl/methods/rotation.py) against the paper's definitions."""

import math

import pytest
import torch

from raysl.data.pretext import rotate90
from raysl.errors import ConfigError
from raysl.methods.base import Progress, build_method
from raysl.methods.rotation import with_all_rotations
from tests.test_methods import tiny_batch, tiny_config


def test_all_rotations_label_each_copy_with_its_total_turn():
    g = torch.Generator().manual_seed(0)
    upright = torch.randint(0, 256, (5, 1, 6, 6), dtype=torch.uint8, generator=g)
    turns = torch.tensor([0, 1, 2, 3, 1])
    images, labels = with_all_rotations(rotate90(upright, turns), turns)
    assert images.shape == (20, 1, 6, 6) and labels.shape == (20,)
    # Every copy is the upright image turned by its label, and each image has all four labels.
    assert torch.equal(images, rotate90(upright.repeat(4, 1, 1, 1), labels))
    assert sorted(labels.view(4, 5).T[1].tolist()) == [0, 1, 2, 3]


def naive_rotnet_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Eq. 2-3 of arXiv:1803.07728: -1/N sum_i log F^{y_i}(X_i), F the softmax over rotations."""
    total = 0.0
    for row, y in zip(logits.tolist(), labels.tolist(), strict=True):
        norm = sum(math.exp(v) for v in row)
        total -= math.log(math.exp(row[y]) / norm)
    return total / len(labels)


@pytest.mark.parametrize("all_rotations", [True, False])
def test_loss_is_the_papers_cross_entropy_over_rotations(all_rotations):
    cfg = tiny_config("rotation", extra=(f"method.all_rotations={all_rotations}",))
    torch.manual_seed(0)
    method = build_method(cfg).eval()
    views, targets = tiny_batch(cfg)
    out = method(views, Progress(0, 1, 1), targets)
    x, y = views[0], targets["rotation"]
    if all_rotations:
        x, y = with_all_rotations(x, y)
    with torch.no_grad():
        logits = method.classifier(method.encoder(x))
    assert out.loss.item() == pytest.approx(naive_rotnet_loss(logits, y), rel=1e-5)
    assert 0.0 <= out.logs["rotation_acc"] <= 1.0


def test_a_missing_target_names_the_column():
    cfg = tiny_config("rotation")
    views, _ = tiny_batch(cfg)
    with pytest.raises(KeyError, match="'rotation' column"):
        build_method(cfg)(views, Progress(0, 1, 1))


def test_views_without_rotation_targets_are_refused_at_config_time():
    with pytest.raises(ConfigError) as info:
        tiny_config("rotation", extra=("data.preset=simclr",))
    assert info.value.field == "data.preset" and "rotation target" in str(info.value)
