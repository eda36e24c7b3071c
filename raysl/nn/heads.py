"""Projection, prediction and prototype heads shared by the SSL methods."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """Linear layers with (BatchNorm +) activation between them, none after the last by default.

    Args:
        dims: ``[input_dim, hidden_dim, ..., output_dim]``; at least two entries.
        hidden_norm: BatchNorm after each hidden layer (every SSL head except MoCo v2's and
            DINO's has it).
        last_norm: a BatchNorm without affine after the last layer (SimSiam, MoCo v3).
        activation: ``relu`` (ResNet-era heads) or ``gelu`` (DINO).
    """

    def __init__(self, dims: list[int], hidden_norm: bool = True, last_norm: bool = False,
                 activation: str = "relu") -> None:
        super().__init__()
        if len(dims) < 2 or min(dims) < 1:
            raise ValueError(f"dims={dims}: need at least [input_dim, output_dim], all >= 1")
        act: type[nn.Module] = {"relu": nn.ReLU, "gelu": nn.GELU}[activation]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            last = i == len(dims) - 2
            norm = last_norm if last else hidden_norm
            # A bias before BatchNorm is redundant (the BN shift absorbs it).
            layers.append(nn.Linear(d_in, d_out, bias=not norm))
            if norm:
                layers.append(nn.BatchNorm1d(d_out, affine=not last))
            if not last:
                layers.append(act())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, dims[0]) -> (B, dims[-1])."""
        out: Tensor = self.layers(x)
        return out


def mlp_dims(input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> list[int]:
    """``[input, hidden, ..., hidden, output]`` with ``num_layers`` linear layers."""
    if num_layers < 1:
        raise ValueError(f"num_layers={num_layers}: must be >= 1")
    return [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]


class SimCLRProjectionHead(MLP):
    """Projection head g(.) of SimCLR.

    "We use a MLP with one hidden layer to obtain z_i = g(h_i) = W(2) sigma(W(1) h_i) where sigma is
    a ReLU non-linearity." [0] BatchNorm in the hidden layer follows the reference code and
    lightly; SimCLR v2 [1] makes it deeper (``num_layers=3``).

    - [0]: SimCLR, 2020, https://arxiv.org/abs/2002.05709
    - [1]: SimCLR v2, 2020, https://arxiv.org/abs/2006.10029
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int = 2):
        if num_layers < 2:
            raise ValueError(f"num_layers={num_layers}: the SimCLR head has at least 2 layers")
        super().__init__(mlp_dims(input_dim, hidden_dim, output_dim, num_layers))


class NormalizedLinear(nn.Module):
    """``x @ normalize(V).T * g`` without bias: the weight-normalised last layer of DINO.

    With ``learn_scale=False`` the scale g is fixed to 1 (DINO's ``norm_last_layer=True``, which
    the paper found stabilises training), so every output is a cosine similarity to a prototype
    when the input is normalised too. Our own instead of ``nn.utils.weight_norm`` (deprecated).
    """

    def __init__(self, in_dim: int, out_dim: int, learn_scale: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.scale = nn.Parameter(torch.ones(out_dim, 1), requires_grad=learn_scale)
        if not learn_scale:
            del self.scale
            self.register_buffer("scale", torch.ones(out_dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        return F.linear(x, F.normalize(self.weight, dim=1) * self.scale)


class DINOHead(nn.Module):
    """DINO's projection head: MLP (GELU, no BN) -> L2 normalise -> weight-normalised linear.

    Args:
        input_dim: backbone features.
        hidden_dim, bottleneck_dim: 2048 and 256 in the paper.
        out_dim: number of output "prototypes" K (65536 in the paper).
        num_layers: linear layers in the MLP part (3 in the paper).
        norm_last_layer: fix the last layer's scale to 1.
        use_bn: BatchNorm after the hidden layers (the reference's ``--use_bn_in_head``).
    """

    def __init__(self, input_dim: int, hidden_dim: int, bottleneck_dim: int, out_dim: int,
                 num_layers: int = 3, norm_last_layer: bool = True, use_bn: bool = False) -> None:
        super().__init__()
        self.mlp = MLP(mlp_dims(input_dim, hidden_dim, bottleneck_dim, num_layers),
                       hidden_norm=use_bn, activation="gelu")
        self.last_layer = NormalizedLinear(bottleneck_dim, out_dim,
                                           learn_scale=not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        """(B, input_dim) -> (B, out_dim) logits."""
        out: Tensor = self.last_layer(F.normalize(self.mlp(x), dim=-1))
        return out
