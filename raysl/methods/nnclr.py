"""NNCLR: the nearest neighbour of a view in a support set of earlier embeddings is its positive."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl import distributed
from raysl.catalog import register
from raysl.config import Config as RunConfig
from raysl.config import MethodConfig
from raysl.errors import ConfigError, check
from raysl.losses import nearest_neighbours, nnclr_contrastive
from raysl.methods.base import (
    NO_TARGETS,
    LossOutput,
    Progress,
    SSLMethod,
    Targets,
    encode_each,
    enqueue_ring,
    full_precision,
)
from raysl.nn.backbones import Encoder
from raysl.nn.heads import MLP, mlp_dims


@dataclass(frozen=True)
class NNCLRConfig(MethodConfig):
    """NNCLR hyperparameters (defaults: arXiv:2104.14548, section 4 and appendix A)."""

    name: str = "nnclr"
    temperature: float = 0.1
    support_size: int = 98304  # Q: projections of earlier batches (of every worker)
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 256
    pred_hidden_dim: int = 4096

    def __post_init__(self) -> None:
        check(self.temperature > 0, "temperature", self.temperature, "must be > 0 (0.1 in paper)")
        check(self.support_size >= 1, "support_size", self.support_size, "must be >= 1")
        for name in ("proj_hidden_dim", "proj_output_dim", "pred_hidden_dim"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")


@register("method", "nnclr")
class NNCLR(SSLMethod):
    """NNCLR [0]: ``NN(z1)`` must pick ``p2`` out of the batch's predictions, and vice versa.

    The support set is a FIFO queue of the first view's normalised projections of every worker
    (all-gathered, so it is identical on all ranks), as the reference; it starts as random unit
    vectors (MoCo's queue does too) and holds real projections after ``support_size`` images.
    Heads as the paper: a 3-layer projector with BatchNorm and a 2-layer predictor.

    - [0]: Dwibedi et al., With a Little Help from My Friends: Nearest-Neighbor Contrastive
      Learning of Visual Representations, 2021, https://arxiv.org/abs/2104.14548
    """

    Config = NNCLRConfig
    summary = "contrastive: nearest neighbour from a support set of past embeddings as positive"
    paper = "Dwibedi et al. 2021, arXiv:2104.14548"
    collapse_hint = "a learning rate too high, or a temperature far from 0.1"
    default_preset = "byol"

    support: Tensor
    support_ptr: Tensor

    def __init__(self, encoder: Encoder, cfg: MethodConfig) -> None:
        super().__init__(encoder)
        assert isinstance(cfg, NNCLRConfig)
        self.cfg = cfg
        # As the paper and lightly's NNCLRProjectionHead: BatchNorm after every layer.
        self.projector = MLP(mlp_dims(encoder.num_features, cfg.proj_hidden_dim,
                                      cfg.proj_output_dim, 3), last_norm=True)
        self.predictor = MLP(mlp_dims(cfg.proj_output_dim, cfg.pred_hidden_dim,
                                      cfg.proj_output_dim, 2))
        support = F.normalize(torch.randn(cfg.support_size, cfg.proj_output_dim), dim=1)
        self.register_buffer("support", support)  # (Q, D)
        self.register_buffer("support_ptr", torch.zeros((), dtype=torch.long))

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """The support set must hold one forward pass of every worker."""
        m = cfg.method
        assert isinstance(m, NNCLRConfig)
        per_pass = cfg.micro_batch_size * cfg.train.num_workers
        if m.support_size < per_pass:
            raise ConfigError("method.support_size", m.support_size,
                              f"must be >= the {per_pass} projections enqueued per forward pass "
                              "(micro-batch x workers); the paper uses 98304")

    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """``L(NN(z1), p2) / 2 + L(NN(z2), p1) / 2`` (eq. 2, symmetrised)."""
        z0, z1 = (self.projector(h) for h in encode_each(self.encoder, views[:2]))
        p0, p1 = self.predictor(z0), self.predictor(z1)
        # No copy of the support set is needed before _enqueue overwrites it: the neighbours are
        # rows gathered out of it (new tensors) and nothing in the graph refers to it.
        with full_precision(self.support):
            both = nearest_neighbours(torch.cat([z0, z1]).float(), self.support)  # (2B, D)
            nn0, nn1 = both.chunk(2)
            t = self.cfg.temperature
            loss = 0.5 * (nnclr_contrastive(nn0, p1.float(), t)
                          + nnclr_contrastive(nn1, p0.float(), t))
            # How often both views of an image find the same neighbour: a support-set health check.
            agree = (nn0 == nn1).all(dim=1).float().mean()
        self._enqueue(F.normalize(z0.detach().float(), dim=1))
        return LossOutput(loss, {"nnclr/same_neighbour": float(agree)})

    @torch.no_grad()
    def _enqueue(self, z: Tensor) -> None:
        """Replace the oldest support entries with every worker's projections (a ring buffer)."""
        enqueue_ring(self.support, self.support_ptr, distributed.gather_no_grad(z))
