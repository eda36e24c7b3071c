"""Optimizers: LARS (You et al. 2017), SGD and AdamW, with bias/norm exclusion."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from raysl.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (LARS, arXiv:1708.03888).

    The update of each parameter tensor is ``g + wd * w`` scaled by
    ``eta * ||w|| / ||g + wd * w||``, as in SimCLR, BYOL and Barlow Twins: each step moves a
    tensor by ``lr * eta`` of its norm. Parameter groups with ``lars_adapt=False`` (biases and
    norms, by convention) skip the scaling.

    ``clip=True`` caps the trust ratio at 1 after dividing it by the learning rate (solo-learn's
    and Lightning Bolts' ``clip_lars_lr``): each step moves a tensor by ``min(eta * ||w||,
    lr * ||u||)``, i.e. ``eta`` of its norm unless plain SGD would move it less. Small-batch
    recipes use it with ``eta=0.02``: under the linear scaling rule a batch of 256 gets
    ``lr ~ 0.3``, so the unclipped step is ~0.03% of a tensor's norm and the backbone barely moves
    in a short run.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, eta: float = 0.001, clip: bool = False) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                    "lars_adapt": True, "clip": clip}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad.add(p, alpha=group["weight_decay"])
                if group["lars_adapt"]:
                    w_norm, u_norm = torch.norm(p), torch.norm(update)
                    trust = torch.where((w_norm > 0) & (u_norm > 0),
                                        group["eta"] * w_norm / u_norm, torch.ones_like(w_norm))
                    if group["clip"]:  # lr 0 (the first warm-up step): the cap's limit, 1
                        trust = (torch.clamp(trust / group["lr"], max=1.0) if group["lr"] > 0
                                 else torch.ones_like(trust))
                    update = update.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])


def param_groups(model: nn.Module, cfg: OptimConfig,
                 fixed_lr: Iterable[nn.Parameter] = ()) -> list[dict[str, Any]]:
    """Split parameters: weights get decay (and LARS); biases and norm scales do not, if asked.

    Biases and norms also take ``cfg.bias_norm_lr_scale`` times the learning rate (Barlow
    Twins: 0.0048 vs 0.2). Parameters in ``fixed_lr`` keep the peak learning rate throughout
    (SimSiam's predictor); :func:`raysl.schedules.set_lr` leaves their groups alone.
    """
    fixed = {id(p) for p in fixed_lr}
    groups: dict[tuple[bool, bool], dict[str, Any]] = {}
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (cfg.exclude_bias_and_norm and p.ndim <= 1)
        key = (decay, id(p) in fixed)
        if key not in groups:
            # "decay" marks the groups whose weight decay follows optim.weight_decay_schedule.
            groups[key] = {"params": [], "decay": decay, "fixed_lr": key[1],
                           "weight_decay": cfg.weight_decay if decay else 0.0,
                           "lr_scale": 1.0 if decay else cfg.bias_norm_lr_scale}
            if not decay:
                groups[key]["lars_adapt"] = False
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (not k[0], k[1]))]


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float,
                    fixed_lr: Iterable[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.name`` over ``model``'s trainable parameters, at ``lr``.

    ``fixed_lr``: parameters whose learning rate stays at ``lr`` (see :func:`param_groups`).
    """
    groups = param_groups(model, cfg, fixed_lr)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                    eta=cfg.lars_eta, clip=cfg.lars_clip)
    for g in groups:
        g.pop("lars_adapt", None)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.adam_betas)


def set_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """Set the weight decay of the decayed group (biases and norms keep none)."""
    for group in optimizer.param_groups:
        if group.get("decay", True):
            group["weight_decay"] = weight_decay
