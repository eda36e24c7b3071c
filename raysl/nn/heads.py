"""Projection and prediction heads."""

from __future__ import annotations

import itertools

from torch import Tensor, nn


class MLP(nn.Module):
    """Linear layers with BatchNorm + ReLU between them (none after the last by default).

    Args:
        dims: ``[input_dim, hidden_dim, ..., output_dim]``; at least two entries.
        last_norm: add a BatchNorm (without affine) after the last layer, as SimCLR v2 / BYOL do.
    """

    def __init__(self, dims: list[int], last_norm: bool = False) -> None:
        super().__init__()
        if len(dims) < 2 or min(dims) < 1:
            raise ValueError(f"dims={dims}: need at least [input_dim, output_dim], all >= 1")
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            last = i == len(dims) - 2
            # A bias before BatchNorm is redundant (the BN shift absorbs it).
            layers.append(nn.Linear(d_in, d_out, bias=last and not last_norm))
            if not last:
                layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
            elif last_norm:
                layers.append(nn.BatchNorm1d(d_out, affine=False))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, dims[0]) -> (B, dims[-1])."""
        out: Tensor = self.layers(x)
        return out


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
        super().__init__([input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim])
