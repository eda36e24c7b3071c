"""Optimizer and learning-rate schedule (``optim``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from raysl.errors import check
from raysl.schedules import cosine

OptimizerName = Literal["lars", "sgd", "adamw"]


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (linear warm-up, then cosine decay)."""

    name: OptimizerName = "lars"
    base_lr: float = 0.3  # per 256 images: lr = base_lr * batch_size_global / 256 (Goyal et al.)
    weight_decay: float = 1e-6  # SimCLR with LARS; ~5e-4 with SGD on CIFAR-sized data
    momentum: float = 0.9
    warmup_epochs: float = 10.0
    final_lr_ratio: float = 0.0  # lr at the end of the cosine, as a fraction of the peak
    # AdamW's (beta1, beta2); MAE pretrains with (0.9, 0.95), the usual for ViTs.
    adam_betas: tuple[float, float] = (0.9, 0.999)
    lars_eta: float = 0.001  # LARS trust coefficient (You et al. 2017)
    # Cap LARS's step of a tensor at eta of its norm (solo-learn's clip_lars_lr; with eta 0.02
    # in its small-batch recipes); see raysl/train/optim.py:LARS.
    lars_clip: bool = False
    exclude_bias_and_norm: bool = True  # no weight decay / LARS adaptation on biases and norms
    # Learning rate of biases and norms relative to the weights' (with exclude_bias_and_norm).
    # Barlow Twins: 0.0048 / 0.2 = 0.024.
    bias_norm_lr_scale: float = 1.0
    # DINO raises weight decay from 0.04 to 0.4 along a cosine; "constant" keeps weight_decay.
    weight_decay_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay_end: float = 0.0  # cosine schedule only: the value at the end of training
    clip_grad: float = 0.0  # max L2 norm of the gradients; 0 = no clipping (DINO: 3.0)
    # "global": one norm over all gradients (torch's clip_grad_norm_); "per_param": each tensor
    # on its own, as DINO's reference (a much looser bound for a model of many tensors).
    clip_mode: Literal["global", "per_param"] = "global"

    def __post_init__(self) -> None:
        check(self.base_lr > 0, "base_lr", self.base_lr, "must be > 0")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        check(0 <= self.momentum < 1, "momentum", self.momentum, "must be in [0, 1)")
        check(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, "must be >= 0")
        check(0 <= self.final_lr_ratio <= 1, "final_lr_ratio", self.final_lr_ratio, "in [0, 1]")
        check(self.lars_eta > 0, "lars_eta", self.lars_eta, "must be > 0")
        check(all(0 <= b < 1 for b in self.adam_betas), "adam_betas", self.adam_betas,
              "a pair of decay rates in [0, 1), e.g. [0.9, 0.95]")
        check(self.bias_norm_lr_scale > 0, "bias_norm_lr_scale", self.bias_norm_lr_scale,
              "must be > 0 (1 = the weights' learning rate)")
        check(self.exclude_bias_and_norm or self.bias_norm_lr_scale == 1.0, "bias_norm_lr_scale",
              self.bias_norm_lr_scale, "needs exclude_bias_and_norm=true (biases and norms in "
              "their own group)")
        check(self.weight_decay_end >= 0, "weight_decay_end", self.weight_decay_end, ">= 0")
        check(self.clip_grad >= 0, "clip_grad", self.clip_grad, ">= 0 (0 = off)")

    def weight_decay_at(self, progress: float) -> float:
        """Weight decay at a fraction of training (cosine from weight_decay to weight_decay_end)."""
        if self.weight_decay_schedule == "constant":
            return self.weight_decay
        return cosine(progress, self.weight_decay, self.weight_decay_end)

    def peak_lr(self, batch_size_global: int) -> float:
        """Learning rate after warm-up under the linear scaling rule."""
        return self.base_lr * batch_size_global / 256

