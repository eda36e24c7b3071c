"""MoCo v3: symmetric contrastive loss between an online predictor and a momentum encoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from raysl import schedules
from raysl.catalog import register
from raysl.config import MethodConfig
from raysl.errors import check
from raysl.losses import moco_v3_contrastive
from raysl.methods.base import (
    NO_TARGETS,
    LossOutput,
    Progress,
    SSLMethod,
    Targets,
    check_momentum,
    encode_each,
)
from raysl.nn.backbones import Encoder
from raysl.nn.ema import ema_update, frozen_copy
from raysl.nn.heads import MLP, mlp_dims


@dataclass(frozen=True)
class MoCoV3Config(MethodConfig):
    """MoCo v3 hyperparameters (defaults: arXiv:2104.02057 and its reference main_moco.py)."""

    name: str = "moco_v3"
    temperature: float = 1.0  # the reference's ResNet-50 setting; its ViT recipes use 0.2
    momentum_start: float = 0.99  # cosine-ramped to momentum_end
    momentum_end: float = 1.0
    mlp_hidden_dim: int = 4096
    proj_output_dim: int = 256
    proj_layers: int = 0  # 0 = as the paper: 2 for ResNets, 3 for ViTs

    def __post_init__(self) -> None:
        check(self.temperature > 0, "temperature", self.temperature, "must be > 0")
        check_momentum(self.momentum_start, self.momentum_end)
        check(self.mlp_hidden_dim >= 1, "mlp_hidden_dim", self.mlp_hidden_dim, "must be >= 1")
        check(self.proj_output_dim >= 1, "proj_output_dim", self.proj_output_dim, "must be >= 1")
        check(self.proj_layers == 0 or self.proj_layers >= 2, "proj_layers", self.proj_layers,
              "must be 0 (auto) or >= 2")


@register("method", "moco_v3")
class MoCoV3(SSLMethod):
    """MoCo v3 [0]: ``ctr(q1, k2) + ctr(q2, k1)`` with the keys of all workers as negatives.

    Heads as the reference: the projector ends in BatchNorm without affine parameters, and so
    does the predictor for ViTs (not for ResNets). No queue: large batches supply the negatives.

    - [0]: Chen, Xie, He, An Empirical Study of Training Self-Supervised Vision Transformers,
      2021, https://arxiv.org/abs/2104.02057
    """

    Config = MoCoV3Config
    summary = "contrastive: predictor vs momentum encoder, symmetric, no queue"
    paper = "Chen, Xie, He 2021, arXiv:2104.02057"
    collapse_hint = "a learning rate too high (the paper's ViT instability), or a momentum too low"
    default_preset = "byol"

    def __init__(self, encoder: Encoder, cfg: MethodConfig) -> None:
        super().__init__(encoder)
        assert isinstance(cfg, MoCoV3Config)
        self.cfg = cfg
        layers = cfg.proj_layers or (3 if encoder.is_vit else 2)
        self.projector = MLP(mlp_dims(encoder.num_features, cfg.mlp_hidden_dim,
                                      cfg.proj_output_dim, layers), last_norm=True)
        self.predictor = MLP(mlp_dims(cfg.proj_output_dim, cfg.mlp_hidden_dim,
                                      cfg.proj_output_dim, 2), last_norm=encoder.is_vit)
        self.momentum_encoder = frozen_copy(encoder)
        self.momentum_projector = frozen_copy(self.projector)

    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """Symmetrised contrastive loss (Algorithm 1 of the paper)."""
        h0, h1 = encode_each(self.encoder, views[:2])
        q0, q1 = self.predictor(self.projector(h0)), self.predictor(self.projector(h1))
        with torch.no_grad():
            k0, k1 = (self.momentum_projector(h)
                      for h in encode_each(self.momentum_encoder, views[:2]))
        t = self.cfg.temperature
        loss = moco_v3_contrastive(q0, k1, t) + moco_v3_contrastive(q1, k0, t)
        return LossOutput(loss)

    def on_step_end(self, progress: Progress) -> None:
        """EMA of the online encoder and projector into the momentum branch."""
        m = schedules.cosine(progress.fraction, self.cfg.momentum_start, self.cfg.momentum_end)
        ema_update(self.momentum_encoder, self.encoder, m)
        ema_update(self.momentum_projector, self.projector, m)
