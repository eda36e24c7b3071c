"""Encoder weights from other libraries' layouts, loaded strictly (``model.init_from``).

raysl's :class:`~raysl.nn.backbones.Encoder` holds its backbone under ``backbone.`` and its
input normalisation as the ``mean`` and ``std`` buffers. A state dict saved by torchvision
(``resnet18().state_dict()``) or timm (``vit_tiny_patch16_224``) names the same tensors
differently; this module renames them, and nothing else: a tensor whose shape differs is
reported, never cropped, interpolated or averaged over channels.

What a classifier file carries beyond the encoder (torchvision's ``fc.*``, timm's ``head.*``)
is the classifier's, not the encoder's, and is dropped; every other key must match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from torch import Tensor, nn

from raysl.errors import CheckpointError

Layout = Literal["raysl", "torchvision", "timm"]

# Wrappers training scripts put around a state dict: {"state_dict": ...} (Lightning),
# {"model": ...} (timm's and DeiT's train scripts), {"module": ...}.
_WRAPPERS = ("state_dict", "model", "module")
# Prefixes the wrappers put before every key: DDP's ``module.``, Lightning's ``model.``.
_PREFIXES = ("module.", "model.")
# A classifier's own keys, not the encoder's (torchvision's ResNet, timm's ViT).
_CLASSIFIER = re.compile(r"^(fc|head|head_dist)\.")
# timm's ViT names -> raysl's (raysl's blocks use nn.MultiheadAttention, whose in_proj holds
# q, k and v stacked in that order, as timm's qkv does).
_TIMM_VIT = [
    (re.compile(r"^patch_embed\.proj\."), "patch_embed."),
    (re.compile(r"^blocks\.(\d+)\.attn\.qkv\."), r"blocks.\1.attn.in_proj_"),
    (re.compile(r"^blocks\.(\d+)\.attn\.proj\."), r"blocks.\1.attn.out_proj."),
    (re.compile(r"^blocks\.(\d+)\.mlp\.fc1\."), r"blocks.\1.mlp.0."),
    (re.compile(r"^blocks\.(\d+)\.mlp\.fc2\."), r"blocks.\1.mlp.2."),
]
NORMALISATION = ("mean", "std")  # the Encoder's own buffers: no other library saves them


def unwrap(state: Mapping[str, object]) -> dict[str, Tensor]:
    """The tensors of a saved state dict, out of any training-script wrapper and key prefix.

    Raises:
        CheckpointError: the file holds something other than a state dict of tensors.
    """
    inner: Mapping[str, object] = state
    while len(inner) == 1 or any(k in inner for k in _WRAPPERS):
        key = next((k for k in _WRAPPERS if isinstance(inner.get(k), Mapping)), None)
        if key is None:
            break
        inner = inner[key]  # type: ignore[assignment]
    tensors = {k: v for k, v in inner.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"holds no tensors at its top level or under {list(_WRAPPERS)} "
                              f"(keys: {sorted(inner)[:8]})")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
    return tensors


def detect_layout(state: Mapping[str, Tensor]) -> Layout:
    """Which library's names ``state`` uses: raysl's, torchvision's ResNet or timm's ViT."""
    if any(k.startswith("backbone.") for k in state):
        return "raysl"
    if any(".attn.qkv." in k or k.startswith("patch_embed.proj.") for k in state):
        return "timm"
    return "torchvision"


def to_raysl_layout(state: Mapping[str, Tensor], encoder: nn.Module) -> dict[str, Tensor]:
    """``state`` renamed into ``encoder``'s keys (classifier keys dropped).

    The normalisation buffers, which only raysl saves, are taken from ``encoder`` itself when
    ``state`` lacks them: for 3 channels these are ImageNet's statistics, which torchvision's
    and timm's ImageNet weights were trained with.
    """
    layout = detect_layout(state)
    if layout == "raysl":
        renamed = dict(state)
    else:
        renamed = {}
        for key, value in state.items():
            if _CLASSIFIER.match(key):
                continue
            if layout == "timm":
                for pattern, replacement in _TIMM_VIT:
                    key = pattern.sub(replacement, key)
            renamed[f"backbone.{key}"] = value
    own = encoder.state_dict()
    for name in NORMALISATION:
        if name not in renamed and name in own:
            renamed[name] = own[name]
    return renamed


def mismatch(state: Mapping[str, Tensor], module: nn.Module) -> list[str]:
    """What stops ``state`` from loading strictly into ``module``: one line per kind, or []."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} here"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    lines = []
    for what, keys in (("missing", missing), ("unexpected", unexpected),
                       ("different shapes", shapes)):
        if keys:
            more = f" and {len(keys) - 10} more" if len(keys) > 10 else ""
            lines.append(f"{len(keys)} {what}: {', '.join(keys[:10])}{more}")
    return lines


def load_exactly(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Load ``state`` into ``module``, every key and shape matching, or say what differs.

    Raises:
        CheckpointError: naming the missing keys, the unexpected ones and the shapes that differ.
    """
    problems = mismatch(state, module)
    if problems:
        raise CheckpointError(f"{source} does not fit this run's {type(module).__name__}: "
                              + "; ".join(problems))
    module.load_state_dict(state, strict=True)
