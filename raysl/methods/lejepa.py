"""LeJEPA: every view predicts the mean of the global views; SIGReg keeps embeddings Gaussian."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from raysl.catalog import register
from raysl.config import MethodConfig
from raysl.errors import check
from raysl.losses import lejepa, sigreg_directions
from raysl.methods.base import (
    NO_TARGETS,
    LossOutput,
    Progress,
    SSLMethod,
    Targets,
    encode_views,
    full_precision,
    head_over_views,
)
from raysl.nn.backbones import Encoder
from raysl.nn.heads import MLP, mlp_dims


@dataclass(frozen=True)
class LeJEPAConfig(MethodConfig):
    """LeJEPA hyperparameters (defaults: arXiv:2511.08544, Sec. 6.1, and Algorithm 1).

    The paper recommends lambda 0.05, 2 global + 8 local views (the ``dino`` preset), a batch of
    at least 128, AdamW (lr 5e-4; weight decay 5e-2 for ViTs, 5e-4 for ResNets), warm-up then
    cosine to lr / 1000; for ResNets all views global (``pipelines/configs/lejepa_fmnist.yaml``).
    """

    name: str = "lejepa"
    # lambda, SIGReg's weight against the invariance term's (1 - lambda). The paper's default;
    # stable across 0.01-0.1 in its fig. 8. Too small lets the views collapse together.
    sigreg_lambda: float = 0.05
    num_slices: int = 1024  # |A|, random directions drawn anew each step (Algorithm 1: 256)
    t_max: float = 5.0  # Epps-Pulley integration over [-t_max, t_max]
    knots: int = 17  # trapezoid knots over that domain (odd: t = 0 is one)
    # The projector, whose output SIGReg and the invariance term see (the official minimal
    # example: 3 layers, 2048 wide, BatchNorm; its output 128, 16 in its Imagenette run).
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 128
    proj_layers: int = 3

    def __post_init__(self) -> None:
        check(0 <= self.sigreg_lambda <= 1, "sigreg_lambda", self.sigreg_lambda,
              "a weight in [0, 1] (0.05 in the paper; 0.01-0.1 work)")
        check(self.num_slices >= 1, "num_slices", self.num_slices, "must be >= 1 (paper: 1024)")
        check(self.t_max > 0, "t_max", self.t_max, "must be > 0 (paper: 5)")
        check(self.knots >= 3 and self.knots % 2 == 1, "knots", self.knots,
              "an odd number >= 3 (paper: 17)")
        check(self.proj_hidden_dim >= 1, "proj_hidden_dim", self.proj_hidden_dim, "must be >= 1")
        check(self.proj_output_dim >= 1, "proj_output_dim", self.proj_output_dim, "must be >= 1")
        check(self.proj_layers >= 1, "proj_layers", self.proj_layers, "must be >= 1")


@register("method", "lejepa")
class LeJEPA(SSLMethod):
    """LeJEPA [0]: prediction of the global views' mean + SIGReg, one weight, no teacher.

    "The prediction loss is then given by having all views predict the global views" [0]: every
    view's projection, global and local, regresses the mean projection of the image's global
    views, while SIGReg (the sketched Epps-Pulley test over random 1-D projections, drawn anew
    each step from the step number, so every worker draws the same) pulls each view's
    projections towards an isotropic Gaussian over the global batch. No stop-gradient, predictor
    or EMA teacher. The two terms are logged unweighted (``lejepa/invariance``,
    ``lejepa/sigreg``).

    - [0]: Balestriero & LeCun, LeJEPA: Provable and Scalable Self-Supervised Learning Without
      the Heuristics, 2025, https://arxiv.org/abs/2511.08544
    """

    Config = LeJEPAConfig
    summary = "views predict the global views' mean + SIGReg (Gaussian embeddings), multi-crop"
    paper = "Balestriero & LeCun 2025, arXiv:2511.08544"
    collapse_hint = ("sigreg_lambda too small for the invariance term (the paper's 0.05), or a "
                     "learning rate too high")
    default_preset = "dino"  # "we adopt the DINO setup of generating V_g global views" (Sec. 5.1)
    multicrop = True

    def __init__(self, encoder: Encoder, cfg: MethodConfig) -> None:
        super().__init__(encoder)
        assert isinstance(cfg, LeJEPAConfig)
        self.cfg = cfg
        self.projector = MLP(mlp_dims(encoder.num_features, cfg.proj_hidden_dim,
                                      cfg.proj_output_dim, cfg.proj_layers))

    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """``(1 - lambda) * invariance + lambda * SIGReg`` on every view's projection."""
        # Same-size views share one encoder pass and the projector sees all of them at once, as
        # the official code (one projector call over every view).
        z = head_over_views(self.projector, encode_views(self.encoder, views))  # V x (B, D)
        c = self.cfg
        directions = sigreg_directions(progress.step, c.proj_output_dim, c.num_slices)  # (D, M)
        with full_precision(z[0]):  # cos and sin of t * x need more than bf16's 8 bits
            loss, terms = lejepa([v.float() for v in z], self.global_views, directions,
                                 c.sigreg_lambda, c.t_max, c.knots)
        return LossOutput(loss, {f"lejepa/{k}": float(v.detach()) for k, v in terms.items()})
