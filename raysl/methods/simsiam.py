"""SimSiam: a predictor and a stop-gradient, no negatives and no momentum encoder."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from raysl.catalog import register
from raysl.config import MethodConfig
from raysl.errors import check
from raysl.losses import negative_cosine
from raysl.methods.base import (
    NO_TARGETS,
    LossOutput,
    Progress,
    SSLMethod,
    Targets,
    encode_each,
    output_std,
)
from raysl.nn.backbones import Encoder
from raysl.nn.heads import MLP, mlp_dims


@dataclass(frozen=True)
class SimSiamConfig(MethodConfig):
    """SimSiam hyperparameters (defaults: arXiv:2011.10566, ImageNet; CIFAR uses 2 layers)."""

    name: str = "simsiam"
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 2048
    proj_layers: int = 3
    pred_hidden_dim: int = 512  # the bottleneck of the predictor (paper section 4.4)
    # The predictor keeps the peak learning rate, no warm-up or decay (the reference's
    # --fix-pred-lr, in its recommended command; "the predictor adapts to the latest
    # representations", paper section 4.4).
    fix_pred_lr: bool = True
    # False = the paper's ablation without the stop-gradient (fig. 2): the representation
    # collapses to a constant within an epoch. For studying collapse, not for training.
    stop_gradient: bool = True

    def __post_init__(self) -> None:
        for name in ("proj_hidden_dim", "proj_output_dim", "pred_hidden_dim"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        check(self.proj_layers >= 2, "proj_layers", self.proj_layers, "must be >= 2")


@register("method", "simsiam")
class SimSiam(SSLMethod):
    """SimSiam [0]: ``D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2``, D = -cosine.

    The projector ends in BatchNorm (without affine), the predictor is a bottleneck MLP; the
    ``collapse/std`` log is the paper's monitor (~1/sqrt(D) healthy, 0 collapsed).

    - [0]: Chen & He, Exploring Simple Siamese Representation Learning, 2020,
      https://arxiv.org/abs/2011.10566
    """

    Config = SimSiamConfig
    summary = "non-contrastive: predictor + stop-gradient, no momentum encoder"
    paper = "Chen & He 2020, arXiv:2011.10566"
    collapse_hint = ("a missing stop-gradient or predictor, or a learning rate too high (the paper "
                     "keeps the predictor's lr fixed)")
    default_preset = "moco_v2"

    def __init__(self, encoder: Encoder, cfg: MethodConfig) -> None:
        super().__init__(encoder)
        assert isinstance(cfg, SimSiamConfig)
        self.cfg = cfg
        self.projector = MLP(mlp_dims(encoder.num_features, cfg.proj_hidden_dim,
                                      cfg.proj_output_dim, cfg.proj_layers), last_norm=True)
        self.predictor = MLP(mlp_dims(cfg.proj_output_dim, cfg.pred_hidden_dim,
                                      cfg.proj_output_dim, 2))

    def fixed_lr_parameters(self) -> list[nn.Parameter]:
        """The predictor's, with ``fix_pred_lr``."""
        return list(self.predictor.parameters()) if self.cfg.fix_pred_lr else []

    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """Symmetrised negative cosine with stop-gradient on the projections (Algorithm 1)."""
        z0, z1 = (self.projector(h) for h in encode_each(self.encoder, views[:2]))
        p0, p1 = self.predictor(z0), self.predictor(z1)
        stop = self.cfg.stop_gradient
        loss = 0.5 * (negative_cosine(p0, z1, stop) + negative_cosine(p1, z0, stop))
        return LossOutput(loss, {"collapse/std": output_std(z0)})
