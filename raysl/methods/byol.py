"""BYOL: an online network predicts a slowly moving (EMA) target network's projections."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from raysl import schedules
from raysl.catalog import register
from raysl.config import MethodConfig
from raysl.errors import check
from raysl.losses import byol_regression
from raysl.methods.base import (
    NO_TARGETS,
    LossOutput,
    Progress,
    SSLMethod,
    Targets,
    check_momentum,
    encode_each,
    output_std,
)
from raysl.nn.backbones import Encoder
from raysl.nn.ema import ema_update, frozen_copy
from raysl.nn.heads import MLP, mlp_dims


@dataclass(frozen=True)
class BYOLConfig(MethodConfig):
    """BYOL hyperparameters (defaults: arXiv:2006.07733, section 3.3 and appendix J)."""

    name: str = "byol"
    momentum_start: float = 0.996  # tau_base; cosine-ramped to momentum_end
    momentum_end: float = 1.0
    proj_hidden_dim: int = 4096
    proj_output_dim: int = 256
    pred_hidden_dim: int = 4096

    def __post_init__(self) -> None:
        check_momentum(self.momentum_start, self.momentum_end)
        for name in ("proj_hidden_dim", "proj_output_dim", "pred_hidden_dim"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")


@register("method", "byol")
class BYOL(SSLMethod):
    """BYOL [0]: ``q(g(f(v)))`` regresses the target's ``g'(f'(v'))``, symmetrised over views.

    The target is an EMA of the online encoder and projector with momentum cosine-ramped from
    ``momentum_start`` to ``momentum_end`` over training. Nothing is gathered across workers: the
    loss is a per-sample mean, so DDP's gradient average is already the global-batch gradient.

    - [0]: Grill et al., Bootstrap Your Own Latent, 2020, https://arxiv.org/abs/2006.07733
    """

    Config = BYOLConfig
    summary = "non-contrastive: online predictor regresses an EMA target (momentum schedule)"
    paper = "Grill et al. 2020, arXiv:2006.07733"
    collapse_hint = ("a target momentum too low, or a learning rate too high; BYOL needs its "
                     "predictor")
    default_preset = "byol"

    def __init__(self, encoder: Encoder, cfg: MethodConfig) -> None:
        super().__init__(encoder)
        assert isinstance(cfg, BYOLConfig)
        self.cfg = cfg
        self.projector = MLP(mlp_dims(encoder.num_features, cfg.proj_hidden_dim,
                                      cfg.proj_output_dim, 2))
        self.predictor = MLP(mlp_dims(cfg.proj_output_dim, cfg.pred_hidden_dim,
                                      cfg.proj_output_dim, 2))
        self.target_encoder = frozen_copy(encoder)
        self.target_projector = frozen_copy(self.projector)

    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """``L(v, v') + L(v', v)`` with ``L = 2 - 2 cos`` (eq. 2 of the paper)."""
        h0, h1 = encode_each(self.encoder, views[:2])
        p0, p1 = self.predictor(self.projector(h0)), self.predictor(self.projector(h1))
        with torch.no_grad():
            z0, z1 = (self.target_projector(h)
                      for h in encode_each(self.target_encoder, views[:2]))
        loss = byol_regression(p0, z1) + byol_regression(p1, z0)
        return LossOutput(loss, {"collapse/std": output_std(p0)})

    def on_step_end(self, progress: Progress) -> None:
        """EMA of the online encoder and projector into the target."""
        m = schedules.cosine(progress.fraction, self.cfg.momentum_start, self.cfg.momentum_end)
        ema_update(self.target_encoder, self.encoder, m)
        ema_update(self.target_projector, self.projector, m)

