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
    ``eta * ||w|| / ||g + wd * w||``, as in SimCLR, BYOL and Barlow Twins. Parameter groups with
    ``lars_adapt=False`` (biases and norms, by convention) skip the scaling.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, eta: float = 0.001) -> None:
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                    "lars_adapt": True}
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
                    update = update.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Split parameters: weights get decay (and LARS); biases and norm scales do not, if asked."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if cfg.exclude_bias_and_norm and p.ndim <= 1 else decay).append(p)
    # "decay" marks the group whose weight decay follows optim.weight_decay_schedule.
    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": cfg.weight_decay,
                                     "decay": True}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_adapt": False,
                       "decay": False})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.name`` over ``model``'s trainable parameters."""
    groups = param_groups(model, cfg)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                    eta=cfg.lars_eta)
    for g in groups:
        g.pop("lars_adapt", None)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def set_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """Set the weight decay of the decayed group (biases and norms keep none)."""
    for group in optimizer.param_groups:
        if group.get("decay", True):
            group["weight_decay"] = weight_decay
