"""DINOv2 (raysl/methods/dinov2.py): masks, the student's mask token, the loss's terms, options.

The losses themselves are tested against the papers in tests/test_losses.py, and across workers
in tests/methods/test_distributed_methods.py.
"""

import pytest
import torch

from raysl import config as C
from raysl.errors import ConfigError
from raysl.methods.base import Progress, build_method
from raysl.methods.dinov2 import DINOv2, ibot_masks
from tests.test_methods import tiny_batch, tiny_config

EPOCH_0 = Progress(0, 100, 10)


def test_a_resnet_is_refused_naming_the_field_the_value_and_what_is_expected():
    with pytest.raises(ConfigError) as info:
        C.load(None, ["method.name=dinov2", "model.backbone=resnet18"])
    err = info.value
    assert (err.field, err.value) == ("model.backbone", "resnet18")
    assert "a ViT" in err.expected and "dinov2" in err.expected
    assert str(err).startswith("model.backbone='resnet18': a ViT")


@pytest.mark.parametrize(("overrides", "field"), [
    (["method.mask_ratio=[0.5, 0.1]"], "method.mask_ratio"),
    (["method.mask_ratio=[0.0, 0.5]"], "method.mask_ratio"),
    (["method.mask_probability=0"], "method.mask_probability"),
    (["method.centering=mean"], "method.centering"),
    (["method.koleo_weight=-1"], "method.koleo_weight"),
    (["method.sinkhorn_iterations=0"], "method.sinkhorn_iterations"),
    (["method.ibot_out_dim=0"], "method.ibot_out_dim"),
])
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as info:
        C.load(None, ["method.name=dinov2", "model.backbone=vit_tiny", *overrides])
    assert info.value.field == field, str(info.value)


def test_masks_follow_the_reference_collate():
    # 10 crops at probability 0.5: exactly 5 masked, the i-th smallest count in the i-th of
    # linspace(0.1, 0.5, 6)'s bins (of 49 patches), the others untouched.
    torch.manual_seed(0)
    for _ in range(20):
        mask = ibot_masks(10, 49, 0.5, (0.1, 0.5), torch.device("cpu"))
        assert mask.shape == (10, 49) and mask.dtype == torch.bool
        counts = mask.sum(dim=1)
        assert int((counts > 0).sum()) == 5
        for i, count in enumerate(sorted(int(c) for c in counts if c > 0)):
            low, high = 0.1 + 0.08 * i, 0.1 + 0.08 * (i + 1)
            assert int(49 * low) <= count <= 49 * high, (i, count)
    # At least one crop and one patch, whatever the probability and ratio.
    assert ibot_masks(1, 4, 0.5, (0.1, 0.1), torch.device("cpu")).sum() == 1
    assert ibot_masks(4, 9, 1.0, (0.3, 0.3), torch.device("cpu")).sum(dim=1).tolist() == [2] * 4


def test_the_student_sees_the_mask_token_where_masked_and_the_teacher_the_whole_image():
    torch.manual_seed(0)
    method = build_method(tiny_config("dinov2"))
    assert isinstance(method, DINOv2)
    with torch.no_grad():
        method.mask_token.normal_()
    vit = method.encoder.backbone
    x = torch.randn(3, 3, 32, 32)
    mask = ibot_masks(3, 64, 1.0, (0.3, 0.5), torch.device("cpu"))
    tokens = method._masked_tokens(x, mask)
    whole = vit.patch_tokens(x)
    torch.testing.assert_close(tokens[~mask], whole[~mask])
    positions = vit.pos_embed_for(8, 8)[0, 1:].expand(3, -1, -1)
    torch.testing.assert_close(tokens[mask], method.mask_token.expand(int(mask.sum()), -1)
                               + positions[mask])
    # The student's outputs ignore the masked patches' pixels; the teacher's do not.
    y = x.clone()  # the masked patches' pixels (4 x 4 each, row-major patches) set to 5
    pixel_mask = mask.reshape(3, 8, 8).repeat_interleave(4, 1).repeat_interleave(4, 2)
    y[pixel_mask[:, None].expand_as(y)] = 5.0
    torch.testing.assert_close(method._masked_tokens(y, mask), tokens)
    assert not torch.allclose(vit.patch_tokens(y), whole)


@pytest.mark.parametrize("centering", ["sinkhorn_knopp", "ema"])
@pytest.mark.parametrize("separate", [True, False])
def test_one_forward_is_its_three_terms_and_centring_keeps_its_state(centering, separate):
    cfg = tiny_config("dinov2", extra=(f"method.centering={centering}",
                                       f"method.ibot_separate_head={str(separate).lower()}",
                                       "method.koleo_weight=0.3", "method.ibot_weight=0.7"))
    torch.manual_seed(0)
    method = build_method(cfg)
    assert set(method.head) == ({"dino", "ibot"} if separate else {"dino"})
    assert method.patch_center.shape == (1, 32)
    views, _ = tiny_batch(cfg)
    out = method(views, EPOCH_0)
    logs = out.logs
    want = logs["dinov2/dino"] + 0.7 * logs["dinov2/ibot"] + 0.3 * logs["dinov2/koleo"]
    assert out.loss.item() == pytest.approx(want, rel=1e-5)
    assert logs["dinov2/teacher_temp"] == pytest.approx(0.04)  # warm-up starts at 0.04
    assert logs["dinov2/masked_patches"] > 0
    moved = method.center.abs().max() > 0 and method.patch_center.abs().max() > 0
    assert moved == (centering == "ema")  # Sinkhorn-Knopp needs no running state


def test_both_heads_last_layers_are_frozen_at_first():
    cfg = tiny_config("dinov2")
    assert cfg.method.freeze_last_layer_epochs == 1.0
    for step, frozen in ((5, True), (15, False)):  # 10 steps per epoch: epochs 0.5 and 1.5
        torch.manual_seed(0)
        method = build_method(cfg)
        views, _ = tiny_batch(cfg)
        method(views, EPOCH_0).loss.backward()
        method.on_after_backward(Progress(step, 100, 10))
        for name in ("dino", "ibot"):
            weight = method.head[name].last_layer.weight
            assert (weight.grad is None) == frozen, (name, step)
        assert method.mask_token.grad is not None and method.mask_token.grad.abs().sum() > 0


def test_the_teacher_is_exported_with_its_dino_projector():
    method = build_method(tiny_config("dinov2"))
    assert method.exported_encoder() is method.teacher_encoder
    assert method.exported_projector() is method.teacher_head["dino"].mlp
    student = build_method(tiny_config("dinov2", extra=("method.export_teacher=false",)))
    assert student.exported_encoder() is student.encoder
    assert student.exported_projector() is student.head["dino"].mlp
