"""Backbones and the exported :class:`Encoder` (what the MLflow model registry holds)."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from raysl.config import ModelConfig
from raysl.nn.resnet import ResNetBackbone
from raysl.nn.vit import VisionTransformer

# ImageNet statistics; for one channel, the same statistics of the luminance.
RGB_MEAN, RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = (0.449,), (0.226,)


def unit_float(x: Tensor) -> Tensor:
    """Images as float in [0, 1]: uint8 [0, 255] is scaled, float is passed through."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x


class Encoder(nn.Module):
    """Images -> features. This module is what pretraining produces and the registry serves.

    It normalises its input itself, so consumers feed plain images: a float tensor in [0, 1] or a
    uint8 tensor, shape (B, C, H, W) with ``C == in_channels``.

    Returns:
        (B, num_features) float features (before any projection head).
    """

    mean: Tensor
    std: Tensor

    def __init__(self, backbone: nn.Module, num_features: int, in_channels: int,
                 image_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.in_channels = in_channels
        self.image_size = image_size  # the resolution it was pretrained at
        mean, std = (RGB_MEAN, RGB_STD) if in_channels == 3 else (GRAY_MEAN, GRAY_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    @property
    def is_vit(self) -> bool:
        """Whether the backbone is a Vision Transformer (heads differ: e.g. MoCo v3's depth)."""
        return isinstance(self.backbone, VisionTransformer)

    def normalise(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images in [0, 1] (float) or [0, 255] (uint8) -> the backbone's input."""
        return (unit_float(x) - self.mean) / self.std

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images in [0, 1] (float) or [0, 255] (uint8) -> (B, num_features)."""
        out: Tensor = self.backbone(self.normalise(x))
        return out

    def feature_map(self, x: Tensor) -> Tensor:
        """Spatial features for dense prediction (colorization), before any pooling.

        Returns:
            (B, num_features, h, w): a ResNet's last stage (stride 8 with the small stem, 32
            without), or a ViT's patch tokens on their grid.
        """
        x = self.normalise(x)
        if isinstance(self.backbone, VisionTransformer):
            tokens = self.backbone.transform(self.backbone.patch_tokens(x))[:, 1:]  # (B, N, D)
            h, w = (side // self.backbone.patch_size for side in x.shape[-2:])
            return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return cast(ResNetBackbone, self.backbone).feature_map(x)


def build_encoder(cfg: ModelConfig, in_channels: int, image_size: int) -> Encoder:
    """The encoder described by ``cfg`` for images with ``in_channels`` channels."""
    backbone: ResNetBackbone | VisionTransformer
    if cfg.is_vit:
        backbone = VisionTransformer(image_size, cfg.effective_patch_size, in_channels,
                                     cfg.effective_width, cfg.effective_depth, cfg.heads,
                                     cfg.drop_path_rate, cfg.pos_embed)
    else:
        backbone = ResNetBackbone(cfg.backbone, cfg.effective_width, cfg.small_stem, in_channels)
    return Encoder(backbone, backbone.num_features, in_channels, image_size)


def encoder_info(encoder: Encoder) -> dict[str, Any]:
    """Plain facts about an encoder, for model descriptions and tags."""
    return {"in_channels": encoder.in_channels, "image_size": encoder.image_size,
            "num_features": encoder.num_features,
            "parameters": sum(p.numel() for p in encoder.parameters())}
