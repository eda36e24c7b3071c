"""Tiny teachers for the distillation tests: raysl checkpoint directories, made once per process.

``method.teacher`` may name a checkpoint directory, which a method built directly (as the
registry-driven tests build every method) reads itself; the driver resolves registry URIs.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch

from raysl import config as C
from raysl.checkpoint import save_checkpoint
from raysl.nn.backbones import build_encoder

VIT = ["model.backbone=vit_tiny", "model.width=32", "model.depth=2"]


@functools.cache
def tiny_teacher(channels: int = 3, size: int = 32, vit: bool = False, patch: int = 4,
                 seed: int = 7) -> str:
    """A random teacher's checkpoint directory: a width-8 ResNet, or a 2-block ViT of width 32."""
    model = [*VIT, f"model.patch_size={patch}"] if vit else ["model.width=8",
                                                             "model.small_stem=true"]
    cfg = C.load(None, [*model, f"data.image_size={size}", f"data.channels={channels}"])
    torch.manual_seed(seed)
    encoder = build_encoder(cfg.model, channels, size)
    directory = Path(tempfile.mkdtemp(prefix="raysl-teacher-"))
    save_checkpoint(directory, encoder, encoder, torch.optim.SGD(encoder.parameters(), lr=0.1),
                    {"epoch": 0, "step": 1, "config": cfg.to_dict()})
    return str(directory)
