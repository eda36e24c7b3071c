import pytest
import torch

from raysl.config import ModelConfig
from raysl.nn.backbones import build_encoder
from raysl.nn.vit import VisionTransformer


def _vit(**kw):
    torch.manual_seed(0)
    args = {"image_size": 32, "patch_size": 4, "in_channels": 3, "dim": 32, "depth": 2,
            "heads": 4} | kw
    return VisionTransformer(**args)


def test_output_is_normalised_cls_token():
    vit = _vit().eval()
    x = torch.rand(3, 3, 32, 32)
    seen = []
    vit.norm.register_forward_hook(lambda _m, args, out: seen.append((args[0], out)))
    out = vit(x)
    assert out.shape == (3, 32) and vit.num_features == 32
    (norm_in, norm_out) = seen[0]
    assert norm_in.shape == (3, 32)  # the norm sees only the CLS token, not all 1 + 64 tokens
    assert torch.equal(out, norm_out)
    # Recompute the CLS token by hand from the parts.
    with torch.no_grad():
        tokens = vit.patch_embed(x).flatten(2).transpose(1, 2)
        assert tokens.shape == (3, 64, 32)
        z = torch.cat([vit.cls_token.expand(3, -1, -1), tokens], dim=1) + vit.pos_embed
        for block in vit.blocks:
            z = block(z)
        torch.testing.assert_close(out, vit.norm(z[:, 0]))


def test_grid_and_pos_embed_layout():
    vit = _vit()
    assert vit.grid == 8 and vit.pos_embed.shape == (1, 1 + 64, 32)
    assert len(vit.blocks) == 2
    grayscale = _vit(in_channels=1)
    assert grayscale(torch.rand(2, 1, 32, 32)).shape == (2, 32)


def test_pos_embed_unchanged_at_built_resolution():
    vit = _vit()
    assert vit.pos_embed_for(8, 8) is vit.pos_embed


@pytest.mark.parametrize(("h", "w"), [(4, 4), (2, 6), (12, 12)])
def test_pos_embed_interpolated_for_other_grids(h, w):
    vit = _vit()
    pe = vit.pos_embed_for(h, w)
    assert pe.shape == (1, 1 + h * w, 32)
    assert torch.equal(pe[:, 0], vit.pos_embed[:, 0])  # CLS embedding is not interpolated
    assert pe.requires_grad


def test_pos_embed_interpolation_of_a_constant_table_is_constant():
    vit = _vit()
    with torch.no_grad():
        vit.pos_embed[:, 1:] = torch.arange(32.0)  # every patch gets the same embedding
    pe = vit.pos_embed_for(4, 4)
    torch.testing.assert_close(pe[0, 1:], torch.arange(32.0).expand(16, -1))


@pytest.mark.parametrize("size", [(16, 16), (16, 24), (48, 48)])
def test_other_input_resolutions(size):
    vit = _vit().eval()
    out = vit(torch.rand(2, 3, *size))
    assert out.shape == (2, 32) and torch.isfinite(out).all()


def test_input_smaller_than_a_patch_raises():
    vit = _vit()
    with pytest.raises(ValueError, match="smaller than"):
        vit(torch.rand(1, 3, 2, 2))


@pytest.mark.parametrize("size", [32, 16])
def test_gradients_reach_patch_and_pos_embedding(size):
    vit = _vit()
    vit(torch.rand(2, 3, size, size)).pow(2).sum().backward()
    for name in ("patch_embed.weight", "patch_embed.bias", "pos_embed", "cls_token"):
        grad = dict(vit.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    missing = [n for n, p in vit.named_parameters() if p.grad is None]
    assert missing == []


def test_number_of_heads():
    vit = _vit(heads=4)
    assert all(b.attn.num_heads == 4 and b.attn.head_dim == 8 for b in vit.blocks)
    assert all(b.mlp[0].out_features == 4 * 32 for b in vit.blocks)
    with pytest.raises(ValueError, match="divisible"):
        _vit(dim=30, heads=4)


def test_eval_mode_is_deterministic_and_batch_independent():
    vit = _vit().eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        a, b = vit(x), vit(x)
        single = vit(x[1:2])
    assert torch.equal(a, b)
    torch.testing.assert_close(single, a[1:2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[0], a[1])  # different images give different features


def test_build_encoder_vit():
    cfg = ModelConfig(backbone="vit_tiny", width=32, depth=2, patch_size=4)
    enc = build_encoder(cfg, 3, 32)
    assert enc.is_vit and isinstance(enc.backbone, VisionTransformer)
    assert enc.num_features == 32 and enc.backbone.num_features == 32
    assert len(enc.backbone.blocks) == 2 and enc.backbone.patch_size == 4
    assert enc.backbone.blocks[0].attn.num_heads == cfg.heads == 1
    assert enc.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 32)
    assert enc(torch.rand(2, 3, 16, 16)).shape == (2, 32)


def test_build_encoder_resnet_is_not_vit():
    enc = build_encoder(ModelConfig(backbone="resnet18", width=8, small_stem=True), 3, 32)
    assert not enc.is_vit


def test_drop_path_rises_linearly_over_the_blocks():
    vit = _vit(depth=3, drop_path_rate=0.2)
    assert [b.drop_path.p for b in vit.blocks] == pytest.approx([0.0, 0.1, 0.2])


def test_drop_path_drops_whole_samples_while_training_only():
    from raysl.nn.vit import DropPath

    drop = DropPath(0.5).train()
    torch.manual_seed(0)
    x = torch.ones(2000, 3, 4)
    out = drop(x)
    per_sample = out.flatten(1)
    # Each sample is either all zeros or all 1/(1-p): the branch is dropped for whole samples.
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)
    assert out.mean().item() == pytest.approx(1.0, abs=0.1)  # unbiased
    with torch.no_grad():  # a teacher's or momentum encoder's pass: the whole network
        assert torch.equal(drop(x), x)
    assert torch.equal(drop.eval()(x), x)


def test_drop_path_makes_training_forwards_stochastic_and_teachers_deterministic():
    vit = _vit(drop_path_rate=0.5).train()
    x = torch.rand(4, 3, 32, 32)
    assert not torch.allclose(vit(x), vit(x))
    with torch.no_grad():
        assert torch.equal(vit(x), vit(x))


@pytest.mark.parametrize(("cfg", "field"), [
    ({"backbone": "vit_tiny", "drop_path_rate": 1.0}, "drop_path_rate"),
    ({"backbone": "resnet18", "drop_path_rate": 0.1}, "drop_path_rate"),
])
def test_drop_path_rate_errors_name_the_field(cfg, field):
    from raysl.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        ModelConfig(**cfg)
    assert info.value.field == field


@pytest.mark.parametrize("pos_embed", ["learned", "sincos"])
def test_a_vit_builds_on_the_meta_device(pos_embed):
    # pretrain sizes the encoder on "meta" for the monitors' line: a ViT with a drop-path
    # schedule or fixed positions must not need data there (every ViT run failed on it).
    cfg = ModelConfig(backbone="vit_tiny", width=32, depth=3, patch_size=4,
                        drop_path_rate=0.1, pos_embed=pos_embed)
    with torch.device("meta"):
        encoder = build_encoder(cfg, 1, 28)
    assert encoder.num_features == 32
    assert [b.drop_path.p for b in encoder.backbone.blocks] == pytest.approx([0.0, 0.05, 0.1])
