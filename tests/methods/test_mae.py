"""MAE (raysl/methods/mae.py): masking, patches, loss and positions against the paper."""

import math

import pytest
import torch

from raysl import config as C
from raysl.errors import ConfigError
from raysl.losses import masked_patch_mse, patchify
from raysl.methods.base import Progress, build_method
from raysl.methods.mae import random_masking
from raysl.nn.vit import sincos_pos_embed
from tests.test_methods import tiny_batch, tiny_config


def test_a_ratio_of_075_leaves_exactly_a_quarter_visible_per_sample():
    torch.manual_seed(0)
    keep, mask = random_masking(6, 64, 16, torch.device("cpu"))
    assert keep.shape == (6, 16) and mask.shape == (6, 64)
    assert mask.sum(dim=1).tolist() == [48.0] * 6
    for row_keep, row_mask in zip(keep, mask, strict=True):  # kept = exactly the unmasked
        assert sorted(row_keep.tolist()) == torch.nonzero(row_mask == 0).flatten().tolist()
    assert len({tuple(sorted(k.tolist())) for k in keep}) == 6  # drawn per sample


def test_the_method_keeps_the_papers_number_of_patches_and_the_encoder_sees_only_those():
    cfg = tiny_config("mae")  # 32 px, patch 4: 64 patches
    method = build_method(cfg)
    assert method.visible == 16  # int(64 * (1 - 0.75)), MAE's len_keep
    seen = []
    method.vit.blocks[0].register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape))
    views, _ = tiny_batch(cfg)
    method(views, Progress(0, 1, 1))
    assert seen[0] == (8, 1 + 16, 32)  # [CLS] + the visible patches, not all 64
    assert method.exported_projector() is None


def test_patchify_orders_patches_and_pixels_like_the_vit():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 12, generator=g)
    out = patchify(x, 4)
    assert out.shape == (2, 6, 48)
    for b in range(2):
        for i in range(2):
            for j in range(3):
                patch = x[b, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4]  # (C, p, p)
                torch.testing.assert_close(out[b, i * 3 + j], patch.permute(1, 2, 0).flatten())
    with pytest.raises(ValueError, match="whole number of 5px patches"):
        patchify(x, 5)


def naive_mae_loss(pred, target, mask, norm_pix):
    """Section 3 of arXiv:2111.06377, one masked patch at a time."""
    total, count = 0.0, 0
    for b in range(pred.shape[0]):
        for n in range(pred.shape[1]):
            if mask[b, n] == 0:
                continue  # the loss is on masked patches only
            t = target[b, n].tolist()
            if norm_pix:
                mean = sum(t) / len(t)
                var = sum((v - mean) ** 2 for v in t) / (len(t) - 1)
                t = [(v - mean) / math.sqrt(var + 1e-6) for v in t]
            total += sum((p - v) ** 2 for p, v in zip(pred[b, n].tolist(), t, strict=True)) / len(t)
            count += 1
    return total / count


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_against_a_naive_transcription_and_analytic_cases(norm_pix):
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(3, 10, 12, generator=g), torch.randn(3, 10, 12, generator=g)
    mask = (torch.rand(3, 10, generator=g) < 0.7).float()
    loss = masked_patch_mse(pred, target, mask, norm_pix)
    assert loss.item() == pytest.approx(naive_mae_loss(pred, target, mask, norm_pix), rel=1e-5)
    # Visible patches do not count: changing their prediction changes nothing.
    moved = pred + 5.0 * (1 - mask).unsqueeze(-1)
    assert masked_patch_mse(moved, target, mask, norm_pix).item() == pytest.approx(loss.item())
    # A perfect reconstruction (of the normalised target with norm_pix) gives 0.
    perfect = target
    if norm_pix:
        perfect = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True)
                                                              + 1e-6).sqrt()
    assert masked_patch_mse(perfect, target, mask, norm_pix).item() == pytest.approx(0, abs=1e-10)


def test_sincos_positions_are_the_papers_fixed_table():
    dim, h, w = 8, 3, 4
    table = sincos_pos_embed(dim, h, w)
    assert table.shape == (1, 1 + h * w, dim) and torch.equal(table[0, 0], torch.zeros(dim))
    for r in range(h):
        for c in range(w):
            expected = []
            for pos in (r, c):  # first half: the row; second half: the column
                omegas = [1 / 10000 ** (k / (dim // 4)) for k in range(dim // 4)]
                expected += [math.sin(pos * o) for o in omegas]
                expected += [math.cos(pos * o) for o in omegas]
            torch.testing.assert_close(table[0, 1 + r * w + c], torch.tensor(expected))


def test_sincos_positions_are_fixed_saved_and_computed_for_other_grids():
    cfg = tiny_config("mae", extra=("model.pos_embed=sincos",))
    method = build_method(cfg)
    vit = method.vit
    assert "pos_embed" not in dict(vit.named_parameters())
    assert "backbone.pos_embed" in method.exported_encoder().state_dict()  # travels with it
    assert not any(n.startswith("decoder") for n in method.exported_encoder().state_dict())
    torch.testing.assert_close(vit.pos_embed_for(5, 5), sincos_pos_embed(32, 5, 5))


@pytest.mark.parametrize(("overrides", "field"), [
    (["method.name=mae"], "model.backbone"),  # the default ResNet
    (["method.name=mae", "model.backbone=vit_tiny", "model.patch_size=8",
      "data.image_size=28"], "data.image_size"),
    (["method.name=mae", "model.backbone=vit_tiny", "model.patch_size=4",
      "eval.online_probe=true"], "eval.online_probe"),
    (["method.name=mae", "method.decoder_dim=100", "method.decoder_heads=3"],
     "method.decoder_dim"),
    (["model.pos_embed=sincos"], "model.pos_embed"),  # a ViT option on the ResNet
])
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as info:
        C.load(None, overrides)
    assert info.value.field == field, str(info.value)
