"""MoCo v2: a momentum key encoder and a queue of negatives from earlier batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from raysl import distributed, schedules
from raysl.catalog import register
from raysl.config import Config as RunConfig
from raysl.config import MethodConfig
from raysl.errors import ConfigError, check
from raysl.losses import info_nce_queue
from raysl.methods.base import (
    NO_TARGETS,
    LossOutput,
    Progress,
    SSLMethod,
    Targets,
    check_momentum,
    enqueue_ring,
    full_precision,
)
from raysl.nn.backbones import Encoder
from raysl.nn.ema import ema_update, frozen_copy
from raysl.nn.heads import MLP, mlp_dims


@dataclass(frozen=True)
class MoCoV2Config(MethodConfig):
    """MoCo v2 hyperparameters (defaults: arXiv:2003.04297, ResNet-50 on ImageNet)."""

    name: str = "moco_v2"
    temperature: float = 0.2
    queue_size: int = 65536  # negatives K; must hold at least one step's keys of all workers
    momentum_start: float = 0.999  # MoCo keeps m fixed: start = end
    momentum_end: float = 0.999
    proj_hidden_dim: int = 0  # 0 = the backbone's feature dimension, as the reference
    proj_output_dim: int = 128
    # BatchNorm leak (a query and its key normalised with the same batch statistics let the
    # model cheat): the key encoder runs on a shuffled batch in `bn_splits` chunks, so the key of
    # image i is normalised with other images than its query. 1 = off (ViTs have no BatchNorm).
    bn_splits: int = 2
    symmetric: bool = False  # also use view 1 as query (MoCo v3 / solo-learn style); 2x keys

    def __post_init__(self) -> None:
        check(self.temperature > 0, "temperature", self.temperature, "must be > 0 (0.2 in paper)")
        check(self.queue_size >= 1, "queue_size", self.queue_size, "must be >= 1")
        check_momentum(self.momentum_start, self.momentum_end)
        check(self.proj_hidden_dim >= 0, "proj_hidden_dim", self.proj_hidden_dim, ">= 0")
        check(self.proj_output_dim >= 1, "proj_output_dim", self.proj_output_dim, ">= 1")
        check(self.bn_splits >= 1, "bn_splits", self.bn_splits, ">= 1 (1 = off)")


@register("method", "moco_v2")
class MoCoV2(SSLMethod):
    """MoCo v2 [0, 1]: InfoNCE of queries against their momentum keys and a queue of negatives.

    Instead of MoCo's shuffling BN across GPUs (which needs an all-to-all per step), each worker
    normalises its keys in ``bn_splits`` shuffled chunks and its queries in ordered chunks: the
    single-device variant of shuffle BN from the authors' CIFAR demo. The queue holds the keys of
    every worker (all-gathered), so it is identical on all ranks.

    - [0]: He et al., Momentum Contrast for Unsupervised Visual Representation Learning, 2019,
      https://arxiv.org/abs/1911.05722
    - [1]: Chen et al., Improved Baselines with Momentum Contrastive Learning, 2020,
      https://arxiv.org/abs/2003.04297
    """

    Config = MoCoV2Config
    summary = "contrastive: momentum key encoder + queue of negatives (split-BN shuffle)"
    paper = "Chen et al. 2020, arXiv:2003.04297"
    collapse_hint = ("a learning rate too high, or a key encoder that moves too fast (momentum too "
                     "low)")
    default_preset = "moco_v2"

    def __init__(self, encoder: Encoder, cfg: MethodConfig) -> None:
        super().__init__(encoder)
        assert isinstance(cfg, MoCoV2Config)
        self.cfg = cfg
        hidden = cfg.proj_hidden_dim or encoder.num_features
        # MoCo v2's head: a 2-layer MLP without BatchNorm.
        self.projector = MLP(mlp_dims(encoder.num_features, hidden, cfg.proj_output_dim, 2),
                             hidden_norm=False)
        self.momentum_encoder = frozen_copy(encoder)
        self.momentum_projector = frozen_copy(self.projector)
        queue = F.normalize(torch.randn(cfg.queue_size, cfg.proj_output_dim), dim=1)
        self.queue: Tensor
        self.queue_ptr: Tensor
        self.register_buffer("queue", queue)  # (K, D)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        """The queue must hold one step's keys; the micro-batch must split for the BN shuffle."""
        m = cfg.method
        assert isinstance(m, MoCoV2Config)
        keys = cfg.micro_batch_size * cfg.train.num_workers * (2 if m.symmetric else 1)
        if m.queue_size < keys:
            raise ConfigError("method.queue_size", m.queue_size,
                              f"must be >= the {keys} keys enqueued per forward pass "
                              "(micro-batch x workers x queries); MoCo uses 65536")
        micro = cfg.micro_batch_size
        if micro % m.bn_splits or micro // m.bn_splits < 2:
            raise ConfigError("method.bn_splits", m.bn_splits,
                              f"must divide the per-worker micro-batch ({micro}) into chunks of "
                              ">= 2 images (BatchNorm needs 2)")

    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """InfoNCE of view-0 queries (and view-1 if symmetric) against the other view's keys."""
        x0, x1 = views[0], views[1]
        queries = [self._query(x0)] + ([self._query(x1)] if self.cfg.symmetric else [])
        with torch.no_grad():
            keys = [self._key(x1)] + ([self._key(x0)] if self.cfg.symmetric else [])
        negatives = self.queue.clone()  # autograd keeps it; _enqueue then writes in place
        with full_precision(negatives):  # bf16 logits / 0.2 would be 0.02 apart at best
            losses = [info_nce_queue(q.float(), k.float(), negatives, self.cfg.temperature)
                      for q, k in zip(queries, keys, strict=True)]
        self._enqueue(torch.cat(keys))
        return LossOutput(torch.stack(losses).mean())

    def _query(self, x: Tensor) -> Tensor:
        """(B, C, S, S) -> (B, D), BatchNorm over ``bn_splits`` consecutive chunks."""
        return torch.cat([self.projector(self.encoder(c)) for c in x.chunk(self.cfg.bn_splits)])

    def _key(self, x: Tensor) -> Tensor:
        """(B, C, S, S) -> (B, D) normalised keys, BatchNorm over chunks of a shuffled batch."""
        perm = torch.randperm(x.shape[0], device=x.device)
        k = torch.cat([self.momentum_projector(self.momentum_encoder(c))
                       for c in x[perm].chunk(self.cfg.bn_splits)])
        return F.normalize(k[torch.argsort(perm)], dim=1)

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
        """Replace the oldest queue entries with the keys of every worker (a ring buffer)."""
        enqueue_ring(self.queue, self.queue_ptr, distributed.gather_no_grad(keys))

    def on_step_end(self, progress: Progress) -> None:
        """EMA of the online encoder and projector into the key encoder."""
        m = schedules.cosine(progress.fraction, self.cfg.momentum_start, self.cfg.momentum_end)
        ema_update(self.momentum_encoder, self.encoder, m)
        ema_update(self.momentum_projector, self.projector, m)
