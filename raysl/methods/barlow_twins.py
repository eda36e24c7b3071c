"""Barlow Twins: make the cross-correlation of the two views' embeddings the identity."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from raysl.catalog import register
from raysl.config import MethodConfig
from raysl.errors import check
from raysl.losses import barlow_twins
from raysl.methods.base import (
    NO_TARGETS,
    LossOutput,
    Progress,
    SSLMethod,
    Targets,
    encode_each,
    full_precision,
)
from raysl.nn.backbones import Encoder
from raysl.nn.heads import MLP, mlp_dims


@dataclass(frozen=True)
class BarlowTwinsConfig(MethodConfig):
    """Barlow Twins hyperparameters (defaults: arXiv:2103.03230, ImageNet).

    The paper's optimizer: LARS, lr 0.2 for weights and 0.0048 for biases and norms per 256
    images (``optim.base_lr=0.2``, ``optim.bias_norm_lr_scale=0.024``), weight decay 1.5e-6.
    """

    name: str = "barlow_twins"
    lambda_offdiag: float = 0.0051  # weight of the redundancy-reduction term
    proj_hidden_dim: int = 8192
    proj_output_dim: int = 8192
    proj_layers: int = 3

    def __post_init__(self) -> None:
        check(self.lambda_offdiag >= 0, "lambda_offdiag", self.lambda_offdiag,
              "must be >= 0 (the paper uses 5.1e-3)")
        check(self.proj_hidden_dim >= 1, "proj_hidden_dim", self.proj_hidden_dim, "must be >= 1")
        check(self.proj_output_dim >= 2, "proj_output_dim", self.proj_output_dim, "must be >= 2")
        check(self.proj_layers >= 1, "proj_layers", self.proj_layers, "must be >= 1")


@register("method", "barlow_twins")
class BarlowTwins(SSLMethod):
    """Barlow Twins [0]: on-diagonal invariance plus off-diagonal redundancy reduction.

    The cross-correlation is over the global batch (embeddings gathered from every worker), so
    the loss does not change with the number of workers.

    - [0]: Zbontar et al., Barlow Twins: Self-Supervised Learning via Redundancy Reduction, 2021,
      https://arxiv.org/abs/2103.03230
    """

    Config = BarlowTwinsConfig
    summary = "non-contrastive: cross-correlation -> identity (global-batch statistics)"
    paper = "Zbontar et al. 2021, arXiv:2103.03230"
    collapse_hint = "a learning rate too high, or lambda_offdiag too small to decorrelate"
    default_preset = "byol"

    def __init__(self, encoder: Encoder, cfg: MethodConfig) -> None:
        super().__init__(encoder)
        assert isinstance(cfg, BarlowTwinsConfig)
        self.cfg = cfg
        self.projector = MLP(mlp_dims(encoder.num_features, cfg.proj_hidden_dim,
                                      cfg.proj_output_dim, cfg.proj_layers))

    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """The loss of the paper's Algorithm 1 on the projections of both views."""
        z0, z1 = (self.projector(h) for h in encode_each(self.encoder, views[:2]))
        with full_precision(z0):
            return LossOutput(barlow_twins(z0.float(), z1.float(), self.cfg.lambda_offdiag))
