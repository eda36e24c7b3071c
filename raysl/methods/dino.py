"""DINO: self-distillation from an EMA teacher, with centering and sharpening, multi-crop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from raysl import schedules
from raysl.catalog import register
from raysl.config import MethodConfig
from raysl.errors import check
from raysl.losses import dino, ema_center
from raysl.methods.base import (
    NO_TARGETS,
    LossOutput,
    Progress,
    SSLMethod,
    Targets,
    check_momentum,
    encode_views,
    full_precision,
    head_over_views,
)
from raysl.nn.backbones import Encoder
from raysl.nn.ema import ema_update, frozen_copy
from raysl.nn.heads import DINOHead


@dataclass(frozen=True)
class DINOConfig(MethodConfig):
    """DINO hyperparameters (defaults: arXiv:2104.14294 and the reference main_dino.py, ViT-S/16).

    The reference ViT recipe pairs it with AdamW, weight decay 0.04 -> 0.4 (cosine), per-tensor
    gradient clipping at 3.0 and ``model.drop_path_rate=0.1`` (see
    ``pipelines/configs/dino_vit_fmnist.yaml``); ResNets: ``dino_fmnist.yaml``.
    """

    name: str = "dino"
    out_dim: int = 65536  # K, the number of output "prototypes"
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    head_layers: int = 3
    norm_last_layer: bool = True  # fix the last layer's scale (more stable; False for ResNets)
    use_bn_in_head: bool = False  # BatchNorm in the head's hidden layers (reference option)
    student_temp: float = 0.1
    teacher_temp: float = 0.07  # reached after the warm-up (0.04 for the shortest schedules)
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 30.0
    center_momentum: float = 0.9
    momentum_start: float = 0.996  # teacher EMA, cosine-ramped to momentum_end
    momentum_end: float = 1.0
    freeze_last_layer_epochs: float = 1.0  # no update of the last layer at first (stabilises)
    export_teacher: bool = True  # register the teacher's backbone, as DINO evaluates it

    def __post_init__(self) -> None:
        for name in ("out_dim", "hidden_dim", "bottleneck_dim"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        check(self.head_layers >= 1, "head_layers", self.head_layers, "must be >= 1")
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            check(getattr(self, name) > 0, name, getattr(self, name), "must be > 0")
        check(self.warmup_teacher_temp_epochs >= 0, "warmup_teacher_temp_epochs",
              self.warmup_teacher_temp_epochs, "must be >= 0")
        check(0 <= self.center_momentum <= 1, "center_momentum", self.center_momentum,
              "is an EMA momentum in [0, 1] (0.9 in the paper)")
        check_momentum(self.momentum_start, self.momentum_end)
        check(self.freeze_last_layer_epochs >= 0, "freeze_last_layer_epochs",
              self.freeze_last_layer_epochs, "must be >= 0")

    def teacher_temp_at(self, epoch: float) -> float:
        """Linear warm-up from ``warmup_teacher_temp`` to ``teacher_temp``, then constant."""
        if epoch >= self.warmup_teacher_temp_epochs:
            return self.teacher_temp
        t = epoch / self.warmup_teacher_temp_epochs
        return self.warmup_teacher_temp + t * (self.teacher_temp - self.warmup_teacher_temp)


@register("method", "dino")
class DINO(SSLMethod):
    """DINO [0]: the student matches the centred, sharpened teacher over all crop pairs.

    The teacher (EMA of the student) sees the 2 global crops, the student every crop. The center
    is a running mean of the teacher's outputs over the global batch (all-reduced), so it is the
    same on every worker. The last layer gets no update for ``freeze_last_layer_epochs``. The
    teacher's backbone is what is exported (``export_teacher``), as the paper evaluates it.

    - [0]: Caron et al., Emerging Properties in Self-Supervised Vision Transformers, 2021,
      https://arxiv.org/abs/2104.14294
    """

    Config = DINOConfig
    summary = "self-distillation: EMA teacher, centering + sharpening, multi-crop, ViT or ResNet"
    paper = "Caron et al. 2021, arXiv:2104.14294"
    collapse_hint = ("a teacher temperature too high or a center momentum too high (uniform "
                     "collapse), or too low (one dimension dominates)")
    default_preset = "dino"
    multicrop = True

    center: Tensor

    def __init__(self, encoder: Encoder, cfg: MethodConfig) -> None:
        super().__init__(encoder)
        assert isinstance(cfg, DINOConfig)
        self.cfg = cfg
        self.head = DINOHead(encoder.num_features, cfg.hidden_dim, cfg.bottleneck_dim,
                             cfg.out_dim, cfg.head_layers, cfg.norm_last_layer,
                             cfg.use_bn_in_head)
        self.teacher_encoder = frozen_copy(encoder)
        self.teacher_head = frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))

    def forward(self, views: list[Tensor], progress: Progress,
                targets: Targets = NO_TARGETS) -> LossOutput:
        """Cross-entropy between teacher (global crops) and student (every other crop)."""
        student = head_over_views(self.head, encode_views(self.encoder, views))
        with torch.no_grad():
            teacher = head_over_views(self.teacher_head,
                                      encode_views(self.teacher_encoder, views[:2]))
        temp = self.cfg.teacher_temp_at(progress.epoch)
        with full_precision(self.center):
            loss = dino([s.float() for s in student], [t.float() for t in teacher], self.center,
                        self.cfg.student_temp, temp)
        self.center.copy_(ema_center(self.center, torch.cat(teacher).float(),
                                     self.cfg.center_momentum))
        return LossOutput(loss, {"dino/teacher_temp": temp})

    def exported_encoder(self) -> nn.Module:
        """The teacher's backbone (the paper evaluates the teacher), or the student's."""
        return self.teacher_encoder if self.cfg.export_teacher else self.encoder

    def exported_projector(self) -> nn.Module:
        """The MLP of the exported network's head, up to its bottleneck (before the prototypes)."""
        head = self.teacher_head if self.cfg.export_teacher else self.head
        return cast(DINOHead, head).mlp

    def on_after_backward(self, progress: Progress) -> None:
        """Cancel the last layer's gradients during the first ``freeze_last_layer_epochs``."""
        if progress.epoch < self.cfg.freeze_last_layer_epochs:
            for p in self.head.last_layer.parameters():
                p.grad = None

    def on_step_end(self, progress: Progress) -> None:
        """EMA of the student into the teacher."""
        m = schedules.cosine(progress.fraction, self.cfg.momentum_start, self.cfg.momentum_end)
        ema_update(self.teacher_encoder, self.encoder, m)
        ema_update(self.teacher_head, self.head, m)
