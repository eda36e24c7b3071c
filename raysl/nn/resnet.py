"""ResNet-18/34/50 (He et al. 2015, arXiv:1512.03385) with a width multiplier and a small stem.

Our own modules, laid out as torchvision's: the same parameter names, so that at ``width=64`` a
state dict loads strictly into ``torchvision.models.resnet18`` and torchvision weights load into
ours; and the same construction and initialisation order, so that a seed gives the weights
torchvision's would (both tested). Not importing torchvision keeps it out of every raysl
process: importing ``torchvision.models`` imports all of ``torchvision.ops`` and with it
``torch._dynamo``, 2-3 s of every train worker's and driver's start-up on 2 CPUs.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """A 3x3 convolution that keeps the size (at stride 1), without bias (BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """A 1x1 convolution without bias: channel mixing, or the shortcut's projection."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (ResNet-18/34): (B, C, H, W) -> (B, planes, H/s, W/s)."""

    expansion: ClassVar[int] = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample  # the shortcut's projection when the shape changes
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """The residual: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        out += shortcut
        result: Tensor = self.relu(out)
        return result


class Bottleneck(nn.Module):
    """1x1 down, 3x3 (strided: v1.5, as torchvision), 1x1 up x4, and a shortcut (ResNet-50).

    (B, C, H, W) -> (B, 4 * planes, H/s, W/s).
    """

    expansion: ClassVar[int] = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        """The residual of the three convolutions plus the shortcut, then ReLU."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        out += shortcut
        result: Tensor = self.relu(out)
        return result


_DEPTHS: dict[str, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


class ResNetBackbone(nn.Module):
    """A ResNet with a width multiplier, a small-image stem option and no classifier.

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
        super().__init__()
        block, layers = _DEPTHS[name]
        self.inplanes = width
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
        self.fc: nn.Module = nn.Identity()  # features, not logits (torchvision's name)
        self.num_features = width * 8 * block.expansion
        for m in self.modules():  # He init for convolutions, BatchNorm at identity
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int,
                    stride: int = 1) -> nn.Sequential:
        """One stage: ``blocks`` blocks, the first strided and projecting the shortcut."""
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            # Built before the blocks, as torchvision does: the same seed, the same weights.
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        stage: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        stage += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def feature_map(self, x: Tensor) -> Tensor:
        """The last stage's map before pooling: (B, C, H, W) -> (B, num_features, H/s, W/s)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out: Tensor = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return out

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, num_features): the pooled last stage."""
        out: Tensor = self.fc(torch.flatten(self.avgpool(self.feature_map(x)), 1))
        return out
