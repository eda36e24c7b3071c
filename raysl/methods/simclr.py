"""SimCLR: contrastive learning between two augmented views of each image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from raysl.catalog import register
from raysl.config import MethodConfig
from raysl.errors import check
from raysl.losses import nt_xent
from raysl.methods.base import NO_TARGETS, LossOutput, Progress, SSLMethod, Targets
from raysl.nn.backbones import Encoder
from raysl.nn.heads import SimCLRProjectionHead


@dataclass(frozen=True)
class SimCLRConfig(MethodConfig):
    """SimCLR hyperparameters (defaults: the paper's ImageNet setting)."""

    name: str = "simclr"
    temperature: float = 0.1  # 0.1 with large batches (paper); 0.2-0.5 for batches <= 512
    proj_hidden_dim: int = 0  # 0 = the backbone's feature dimension, as in the paper
    proj_output_dim: int = 128
    proj_layers: int = 2  # 3 = SimCLR v2's deeper head

    def __post_init__(self) -> None:
        check(self.temperature > 0, "temperature", self.temperature, "must be > 0 (try 0.1-0.5)")
        check(self.proj_hidden_dim >= 0, "proj_hidden_dim", self.proj_hidden_dim,
              ">= 0 (0 = backbone feature dimension)")
        check(self.proj_output_dim >= 1, "proj_output_dim", self.proj_output_dim, "must be >= 1")
        check(self.proj_layers >= 2, "proj_layers", self.proj_layers, "must be >= 2")


@register("method", "simclr")
class SimCLR(SSLMethod):
    """SimCLR [0]: NT-Xent between projections of two views, negatives from every worker.

    - [0]: Chen et al., A Simple Framework for Contrastive Learning of Visual Representations,
      2020, https://arxiv.org/abs/2002.05709
    """

    Config = SimCLRConfig
    summary = "contrastive: NT-Xent between two views, negatives gathered from all workers"
    paper = "Chen et al. 2020, arXiv:2002.05709"
    collapse_hint = "a temperature far from the 0.1-0.5 that works, or a learning rate too high"

    def __init__(self, encoder: Encoder, cfg: MethodConfig) -> None:
        super().__init__(encoder)
        assert isinstance(cfg, SimCLRConfig)
        self.cfg = cfg
        hidden = cfg.proj_hidden_dim or encoder.num_features
        self.projection = SimCLRProjectionHead(encoder.num_features, hidden, cfg.proj_output_dim,
                                               cfg.proj_layers)

    def exported_projector(self) -> nn.Module:
        """The projection head g(.)."""
        return self.projection

    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """NT-Xent of the two views; both go through the encoder in one batch (as SimCLR does)."""
        if len(views) != 2:
            raise ValueError(f"SimCLR takes 2 views, got {len(views)}")
        b = views[0].shape[0]
        z = self.projection(self.encoder(torch.cat(views, dim=0)))  # (2B, D)
        loss = nt_xent(z[:b], z[b:], self.cfg.temperature)
        return LossOutput(loss)
