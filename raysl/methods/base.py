"""The interface every SSL method implements. It holds no training logic (see train/step.py)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor, nn

from raysl import registry
from raysl.config import Config, MethodConfig
from raysl.nn.backbones import Encoder, build_encoder


@dataclass
class LossOutput:
    """What a method's forward returns: the loss to minimise and scalars to log."""

    loss: Tensor  # scalar, differentiable
    logs: dict[str, float] = field(default_factory=dict)  # detached extras, e.g. {"train/acc": .9}


class SSLMethod(nn.Module, ABC):
    """A self-supervised objective around an :class:`Encoder`.

    Subclasses set ``Config`` (their config dataclass), ``summary`` and ``paper``, and register
    themselves with ``@registry.register("method", name)``. ``forward`` is what DDP wraps, so all
    trainable parameters must be used in it.
    """

    Config: ClassVar[type[MethodConfig]]
    summary: ClassVar[str]  # one line for `raysl methods`
    paper: ClassVar[str]  # citation with arXiv id
    num_views: ClassVar[int] = 2

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    @abstractmethod
    def forward(self, views: list[Tensor], progress: float) -> LossOutput:
        """Loss on a batch of views.

        Args:
            views: ``num_views`` tensors (B, C, H, W), float in [0, 1] or uint8.
            progress: fraction of training done, in [0, 1], for schedules inside the method.
        """

    def on_step_end(self, progress: float) -> None:
        """Called after each optimizer step (EMA updates go here)."""


def build_method(cfg: Config) -> SSLMethod:
    """The registered method of ``cfg.method.name`` with a fresh encoder from ``cfg.model``."""
    encoder = build_encoder(cfg.model, cfg.data.channels, cfg.data.image_size)
    method_cls = registry.get("method", cfg.method.name)
    method: SSLMethod = method_cls(encoder, cfg.method)
    return method
