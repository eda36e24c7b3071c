"""Backbones and the exported :class:`Encoder` (what the MLflow model registry holds)."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from raysl.config import ModelConfig
from raysl.nn.vit import VisionTransformer

# ImageNet statistics; for one channel, the same statistics of the luminance.
RGB_MEAN, RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = (0.449,), (0.226,)

_DEPTHS: dict[str, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class ResNetBackbone(ResNet):  # type: ignore[misc]  # torchvision ships no type stubs
    """torchvision's ResNet with a width multiplier, a small-image stem option and no classifier.

    We subclass torchvision's ResNet (and reuse its ``_make_layer``) instead of writing our own so
    that parameter names stay torchvision's: at ``width=64`` a state dict loads strictly into
    ``torchvision.models.resnet18`` (tested), and users can bring torchvision weights in.

    Args:
        name: ``resnet18``, ``resnet34`` or ``resnet50``.
        width: channels of the first stage (64 in the paper); later stages double it.
        small_stem: 3x3 stride-1 first conv and no max-pool, for 28-64 px inputs (SimCLR's CIFAR
            variant); the standard stem would shrink a 32 px image to 8 px before the first stage.
        in_channels: 3 for RGB, 1 for grayscale.

    Output: (B, num_features) pooled features, ``num_features = 8 * width * block.expansion``.
    """

    def __init__(self, name: str, width: int = 64, small_stem: bool = False,
                 in_channels: int = 3) -> None:
        block, layers = _DEPTHS[name]
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        if small_stem:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc: nn.Module = nn.Identity()  # features, not logits
        self.num_features = width * 8 * block.expansion
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def unit_float(x: Tensor) -> Tensor:
    """Images as float in [0, 1]: uint8 [0, 255] is scaled, float is passed through."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x


def resnet_feature_map(net: ResNetBackbone, x: Tensor) -> Tensor:
    """The last stage's map before pooling: (B, C, H, W) -> (B, num_features, H/s, W/s)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    out: Tensor = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return out


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
        return resnet_feature_map(cast(ResNetBackbone, self.backbone), x)


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
