import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raysl.nn.heads import MLP, DINOHead, NormalizedLinear, mlp_dims


def _linears(mlp):
    return [m for m in mlp.layers if isinstance(m, nn.Linear)]


def _norms(mlp):
    return [m for m in mlp.layers if isinstance(m, nn.BatchNorm1d)]


def test_mlp_bias_only_where_no_batchnorm_follows():
    head = MLP([8, 16, 16, 4])
    assert [lin.bias is not None for lin in _linears(head)] == [False, False, True]
    layers = list(head.layers)
    for i, m in enumerate(layers):
        if isinstance(m, nn.Linear):
            followed_by_bn = i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm1d)
            assert (m.bias is None) == followed_by_bn
    # Hidden BatchNorms keep their affine shift/scale; nothing follows the last Linear.
    assert [bn.affine for bn in _norms(head)] == [True, True]
    assert isinstance(layers[-1], nn.Linear)
    assert sum(isinstance(m, nn.ReLU) for m in layers) == 2


def test_mlp_last_norm_is_batchnorm_without_affine():
    head = MLP([8, 16, 4], last_norm=True)
    last = head.layers[-1]
    assert isinstance(last, nn.BatchNorm1d) and last.num_features == 4
    assert not last.affine and last.weight is None and last.bias is None
    assert all(lin.bias is None for lin in _linears(head))
    # Train-mode output of a non-affine BN is standardised per feature.
    out = head.train()(torch.randn(64, 8))
    torch.testing.assert_close(out.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(0, unbiased=False), torch.ones(4), atol=1e-3, rtol=0)


def test_mlp_without_hidden_norm_has_no_batchnorm_and_all_biases():
    head = MLP([8, 16, 16, 4], hidden_norm=False)
    assert _norms(head) == []
    assert all(lin.bias is not None for lin in _linears(head))
    assert len(head.layers) == 5  # Linear, ReLU, Linear, ReLU, Linear


def test_mlp_gelu_activation():
    head = MLP([8, 16, 16, 4], activation="gelu")
    kinds = [type(m) for m in head.layers]
    assert kinds.count(nn.GELU) == 2 and nn.ReLU not in kinds
    relu_head = MLP([8, 16, 4])
    assert [type(m) for m in relu_head.layers].count(nn.ReLU) == 1


def test_mlp_single_layer_is_one_linear():
    head = MLP([8, 3])
    assert len(head.layers) == 1 and isinstance(head.layers[0], nn.Linear)
    x = torch.randn(5, 8)
    torch.testing.assert_close(head(x), x @ head.layers[0].weight.T + head.layers[0].bias)


@pytest.mark.parametrize("dims", [[], [8], [8, 0, 4], [8, 16, -1]])
def test_mlp_bad_dims_raise(dims):
    with pytest.raises(ValueError, match="dims"):
        MLP(dims)


def test_mlp_dims_values():
    assert mlp_dims(8, 16, 4, 1) == [8, 4]
    assert mlp_dims(8, 16, 4, 2) == [8, 16, 4]
    assert mlp_dims(8, 16, 4, 3) == [8, 16, 16, 4]
    with pytest.raises(ValueError, match="num_layers"):
        mlp_dims(8, 16, 4, 0)


def test_normalized_linear_output_is_x_times_normalized_weight():
    torch.manual_seed(0)
    layer = NormalizedLinear(6, 5)
    x = torch.randn(3, 6)
    expected = x @ F.normalize(layer.weight, dim=1).T
    torch.testing.assert_close(layer(x), expected)
    # Scaling the raw weight must not change the output (only its direction matters).
    with torch.no_grad():
        layer.weight.mul_(7.0)
    torch.testing.assert_close(layer(x), expected)


def test_normalized_linear_effective_rows_have_unit_norm():
    layer = NormalizedLinear(6, 5)
    # Feeding the identity reads out the effective weight W_eff^T.
    effective = layer(torch.eye(6)).T  # (out, in)
    torch.testing.assert_close(effective.norm(dim=1), torch.ones(5))
    assert layer.weight.norm(dim=1).max() < 0.5  # the raw init is far from unit norm


def test_normalized_linear_fixed_scale_is_a_buffer():
    layer = NormalizedLinear(6, 5, learn_scale=False)
    params = dict(layer.named_parameters())
    buffers = dict(layer.named_buffers())
    assert set(params) == {"weight"}
    assert "scale" in buffers and torch.equal(buffers["scale"], torch.ones(5, 1))
    assert "scale" in layer.state_dict()


def test_normalized_linear_learned_scale_is_trainable():
    layer = NormalizedLinear(6, 5, learn_scale=True)
    params = dict(layer.named_parameters())
    assert set(params) == {"weight", "scale"} and params["scale"].requires_grad
    assert "scale" not in dict(layer.named_buffers())
    x = torch.randn(3, 6)
    with torch.no_grad():
        layer.scale.fill_(2.0)
    torch.testing.assert_close(layer(x), 2.0 * x @ F.normalize(layer.weight, dim=1).T)
    layer(x).sum().backward()
    assert layer.scale.grad is not None and layer.scale.grad.abs().sum() > 0


def test_dino_head_output_shape_and_layout():
    head = DINOHead(12, 32, 8, 20, num_layers=3)
    assert head(torch.randn(4, 12)).shape == (4, 20)
    linears = _linears(head.mlp)
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(12, 32), (32, 32), (32, 8)]
    assert _norms(head.mlp) == [] and any(isinstance(m, nn.GELU) for m in head.mlp.layers)


def test_dino_head_normalises_bottleneck_before_last_layer():
    torch.manual_seed(0)
    head = DINOHead(12, 32, 8, 20, num_layers=3)
    seen = []
    head.last_layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    x = torch.randn(4, 12)
    logits = head(x)
    (bottleneck,) = seen
    torch.testing.assert_close(bottleneck.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(bottleneck, F.normalize(head.mlp(x), dim=-1))
    # Scaling the MLP output (last Linear's weight and bias by c > 0) leaves the logits unchanged.
    last = _linears(head.mlp)[-1]
    with torch.no_grad():
        last.weight.mul_(5.0)
        last.bias.mul_(5.0)
    torch.testing.assert_close(head(x), logits)


def test_dino_head_norm_last_layer_gives_cosine_similarities():
    torch.manual_seed(0)
    head = DINOHead(12, 32, 8, 50, norm_last_layer=True)
    assert not any(n.endswith("scale") for n, _ in head.named_parameters())
    x = 100.0 * torch.randn(16, 12)
    logits = head(x)
    assert logits.abs().max() <= 1.0 + 1e-5
    z = F.normalize(head.mlp(x), dim=-1)
    protos = F.normalize(head.last_layer.weight, dim=1)
    torch.testing.assert_close(logits, F.cosine_similarity(z[:, None], protos[None], dim=-1))


def test_dino_head_unnormed_last_layer_has_trainable_scale():
    head = DINOHead(12, 32, 8, 20, norm_last_layer=False)
    assert head.last_layer.scale.requires_grad
    with torch.no_grad():
        head.last_layer.scale.fill_(3.0)
    logits = head(torch.randn(16, 12))
    assert logits.abs().max() <= 3.0 + 1e-5
    torch.testing.assert_close(head.last_layer(torch.eye(8)).T.norm(dim=1), torch.full((20,), 3.0))
