"""VICReg: variance, invariance and covariance terms on the two views' embeddings."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from raysl.catalog import register
from raysl.config import MethodConfig
from raysl.errors import check
from raysl.losses import vicreg
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
class VICRegConfig(MethodConfig):
    """VICReg hyperparameters (defaults: arXiv:2105.04906, ImageNet)."""

    name: str = "vicreg"
    sim_coeff: float = 25.0  # lambda: invariance
    std_coeff: float = 25.0  # mu: variance
    cov_coeff: float = 1.0  # nu: covariance
    proj_hidden_dim: int = 8192
    proj_output_dim: int = 8192
    proj_layers: int = 3

    def __post_init__(self) -> None:
        for name in ("sim_coeff", "std_coeff", "cov_coeff"):
            check(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        check(self.proj_hidden_dim >= 1, "proj_hidden_dim", self.proj_hidden_dim, "must be >= 1")
        check(self.proj_output_dim >= 2, "proj_output_dim", self.proj_output_dim, "must be >= 2")
        check(self.proj_layers >= 1, "proj_layers", self.proj_layers, "must be >= 1")


@register("method", "vicreg")
class VICReg(SSLMethod):
    """VICReg [0]: invariance (MSE), variance (hinge on the std) and covariance terms.

    Variance and covariance are computed over the global batch (gathered from every worker, as
    the reference's FullGatherLayer); the three unweighted terms are logged.

    - [0]: Bardes, Ponce, LeCun, VICReg: Variance-Invariance-Covariance Regularization for
      Self-Supervised Learning, 2021, https://arxiv.org/abs/2105.04906
    """

    Config = VICRegConfig
    summary = "non-contrastive: variance + invariance + covariance (global-batch statistics)"
    paper = "Bardes, Ponce, LeCun 2021, arXiv:2105.04906"
    collapse_hint = ("a variance term (std_coeff) too weak against the invariance term "
                     "(sim_coeff), or a learning rate too high")
    default_preset = "byol"

    def __init__(self, encoder: Encoder, cfg: MethodConfig) -> None:
        super().__init__(encoder)
        assert isinstance(cfg, VICRegConfig)
        self.cfg = cfg
        self.projector = MLP(mlp_dims(encoder.num_features, cfg.proj_hidden_dim,
                                      cfg.proj_output_dim, cfg.proj_layers))

    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """The weighted VICReg loss (Algorithm 1 of the paper) and its terms."""
        z0, z1 = (self.projector(h) for h in encode_each(self.encoder, views[:2]))
        c = self.cfg
        with full_precision(z0):
            loss, terms = vicreg(z0.float(), z1.float(), c.sim_coeff, c.std_coeff, c.cov_coeff)
        return LossOutput(loss, {f"vicreg/{k}": float(v.detach()) for k, v in terms.items()})
