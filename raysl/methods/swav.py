"""SwAV: online clustering; each crop predicts the Sinkhorn codes of the other global crops."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raysl import distributed
from raysl.catalog import register
from raysl.config import Config as RunConfig
from raysl.config import MethodConfig
from raysl.errors import ConfigError, check
from raysl.losses import sinkhorn_knopp, swapped_prediction
from raysl.methods.base import (
    NO_TARGETS,
    LossOutput,
    Progress,
    SSLMethod,
    Targets,
    encode_views,
    head_over_views,
)
from raysl.nn.backbones import Encoder
from raysl.nn.heads import MLP, mlp_dims


@dataclass(frozen=True)
class SwAVConfig(MethodConfig):
    """SwAV hyperparameters (defaults: arXiv:2006.09882 and its reference main_swav.py)."""

    name: str = "swav"
    temperature: float = 0.1
    epsilon: float = 0.05  # entropic regularisation of Sinkhorn-Knopp
    sinkhorn_iterations: int = 3
    num_prototypes: int = 3000
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 128
    freeze_prototypes_epochs: float = 1.0  # prototypes get no update at first (stabilises)
    # Small batches (< 256 global) give Sinkhorn too few samples to spread over the prototypes:
    # the paper keeps the last `queue_length` embeddings (3840) from `queue_start_epoch` on.
    queue_length: int = 0
    queue_start_epoch: float = 15.0

    def __post_init__(self) -> None:
        check(self.temperature > 0, "temperature", self.temperature, "must be > 0 (0.1 in paper)")
        check(self.epsilon > 0, "epsilon", self.epsilon, "must be > 0 (0.05 in paper)")
        check(self.sinkhorn_iterations >= 1, "sinkhorn_iterations", self.sinkhorn_iterations,
              "must be >= 1")
        check(self.num_prototypes >= 2, "num_prototypes", self.num_prototypes, "must be >= 2")
        check(self.proj_hidden_dim >= 1, "proj_hidden_dim", self.proj_hidden_dim, ">= 1")
        check(self.proj_output_dim >= 1, "proj_output_dim", self.proj_output_dim, ">= 1")
        check(self.freeze_prototypes_epochs >= 0, "freeze_prototypes_epochs",
              self.freeze_prototypes_epochs, "must be >= 0")
        check(self.queue_length >= 0, "queue_length", self.queue_length, ">= 0 (0 = no queue)")
        check(self.queue_start_epoch >= 0, "queue_start_epoch", self.queue_start_epoch, ">= 0")


@register("method", "swav")
class SwAV(SSLMethod):
    """SwAV [0]: swapped prediction of equipartitioned cluster assignments, with multi-crop.

    Codes come from the two global crops only (Sinkhorn-Knopp with sums over every worker); every
    crop, local ones included, predicts the codes of the other global crops. Prototypes are kept
    on the unit sphere and frozen for ``freeze_prototypes_epochs``. The optional queue is per
    worker (``queue_length / world size`` rows each, as the reference), and checkpointed per
    worker as the reference does (``queue<rank>.pth`` there, :meth:`worker_state` here): a
    resumed run of the same size goes on with every worker's own queue.

    - [0]: Caron et al., Unsupervised Learning of Visual Features by Contrasting Cluster
      Assignments, 2020, https://arxiv.org/abs/2006.09882
    """

    Config = SwAVConfig
    summary = "clustering: swapped prediction of Sinkhorn codes, multi-crop, optional queue"
    paper = "Caron et al. 2020, arXiv:2006.09882"
    collapse_hint = ("prototypes updated from the first step (freeze_prototypes_epochs), an "
                     "epsilon too large for Sinkhorn-Knopp, or batches too small without the "
                     "queue")
    default_preset = "swav"
    multicrop = True

    queue: Tensor

    def __init__(self, encoder: Encoder, cfg: MethodConfig) -> None:
        super().__init__(encoder)
        assert isinstance(cfg, SwAVConfig)
        self.cfg = cfg
        self.projector = MLP(mlp_dims(encoder.num_features, cfg.proj_hidden_dim,
                                      cfg.proj_output_dim, 2))
        self.prototypes = nn.Linear(cfg.proj_output_dim, cfg.num_prototypes, bias=False)
        self._normalize_prototypes()
        rows = cfg.queue_length // distributed.world_size()
        self.register_buffer("queue", torch.zeros(2, rows, cfg.proj_output_dim), persistent=False)
        self.queued = 0  # embeddings enqueued on this rank since start (or resume)

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """A queue must hold more than one forward pass of every worker."""
        m = cfg.method
        assert isinstance(m, SwAVConfig)
        per_pass = cfg.micro_batch_size * cfg.train.num_workers
        if m.queue_length and m.queue_length < per_pass:
            raise ConfigError("method.queue_length", m.queue_length,
                              f"must be 0 (off) or >= the {per_pass} embeddings of one forward "
                              "pass (micro-batch x workers); the paper uses 3840")

    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """Swapped prediction over all crops (eq. 1 and the reference training loop)."""
        z = [F.normalize(p, dim=1)
             for p in head_over_views(self.projector, encode_views(self.encoder, views))]
        scores = [self.prototypes(zi) for zi in z]  # (B, K) each
        codes = [self._codes(scores[crop], crop, progress) for crop in range(2)]
        self._enqueue(z[:2])
        return LossOutput(swapped_prediction(scores, codes, self.cfg.temperature))

    @torch.no_grad()
    def _codes(self, scores: Tensor, crop: int, progress: Progress) -> Tensor:
        """(B, K) Sinkhorn codes of global crop ``crop``, with the queue's scores once in use."""
        b = scores.shape[0]
        rows = self.queue.shape[1]
        if rows and progress.epoch >= self.cfg.queue_start_epoch and self.queued >= rows:
            queued = self.prototypes(self.queue[crop])  # (rows, K)
            scores = torch.cat([scores, queued.to(scores.dtype)])
        return sinkhorn_knopp(scores.detach(), self.cfg.epsilon, self.cfg.sinkhorn_iterations)[:b]

    @torch.no_grad()
    def _enqueue(self, z: list[Tensor]) -> None:
        """Shift this batch's global-crop embeddings into the front of the queue (FIFO)."""
        if self.queue.shape[1] == 0:
            return
        for crop, zi in enumerate(z):
            b = zi.shape[0]
            self.queue[crop, b:] = self.queue[crop, :-b].clone()
            self.queue[crop, :b] = zi.detach().to(self.queue.dtype)
        self.queued += z[0].shape[0]

    def worker_state(self) -> dict[str, Tensor]:
        """This worker's queue and how many embeddings it has taken (none without a queue)."""
        if self.queue.shape[1] == 0:
            return {}
        return {"queue": self.queue, "queued": torch.tensor(self.queued,
                                                            device=self.queue.device)}

    def load_worker_state(self, state: Mapping[str, Tensor]) -> None:
        """Continue with the queue this worker had."""
        self.queue.copy_(state["queue"].to(self.queue.device, self.queue.dtype))
        self.queued = int(state["queued"])

    def on_after_backward(self, progress: Progress) -> None:
        """No prototype update during the first ``freeze_prototypes_epochs``."""
        if progress.epoch < self.cfg.freeze_prototypes_epochs:
            self.prototypes.weight.grad = None

    def on_step_end(self, progress: Progress) -> None:
        """Back onto the unit sphere after the update."""
        self._normalize_prototypes()

    @torch.no_grad()
    def _normalize_prototypes(self) -> None:
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))
