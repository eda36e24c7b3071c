import subprocess
import sys

import pytest
import torch
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck

from raysl.config import ModelConfig
from raysl.nn.backbones import build_encoder
from raysl.nn.heads import MLP
from raysl.nn.resnet import ResNetBackbone


def test_width_64_state_dict_loads_into_torchvision_resnet18():
    ours = ResNetBackbone("resnet18", width=64)
    tv = torchvision.models.resnet18()
    state = {k: v for k, v in ours.state_dict().items()}
    missing, unexpected = tv.load_state_dict(state, strict=False)
    assert missing == ["fc.weight", "fc.bias"] and unexpected == []
    x = torch.rand(2, 3, 64, 64)
    tv.fc = torch.nn.Identity()
    torch.testing.assert_close(ours.eval()(x), tv.eval()(x))


class _TorchvisionBuilt(torchvision.models.ResNet):
    """How raysl built its ResNets before it had its own: torchvision's blocks and _make_layer."""

    def __init__(self, name: str, width: int, small_stem: bool, in_channels: int) -> None:
        block, layers = {"resnet18": (BasicBlock, [2, 2, 2, 2]),
                         "resnet34": (BasicBlock, [3, 4, 6, 3]),
                         "resnet50": (Bottleneck, [3, 4, 6, 3])}[name]
        torch.nn.Module.__init__(self)
        self._norm_layer = torch.nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        stem = (3, 1, 1) if small_stem else (7, 2, 3)
        self.conv1 = torch.nn.Conv2d(in_channels, width, stem[0], stride=stem[1],
                                     padding=stem[2], bias=False)
        self.maxpool = (torch.nn.Identity() if small_stem
                        else torch.nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.relu = torch.nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = torch.nn.AdaptiveAvgPool2d((1, 1))
        self.fc = torch.nn.Identity()
        for m in self.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.constant_(m.weight, 1)
                torch.nn.init.constant_(m.bias, 0)


@pytest.mark.parametrize(("name", "width", "small_stem", "channels"), [
    ("resnet18", 16, True, 1), ("resnet18", 64, False, 3), ("resnet34", 8, True, 3),
    ("resnet50", 8, False, 3)])
def test_a_seed_gives_the_weights_and_outputs_of_torchvisions_blocks(name, width, small_stem,
                                                                      channels):
    # Our own modules, built and initialised in the order raysl built torchvision's blocks: a
    # recipe's run (and its figures in BENCHMARKS.md) starts from the weights it did before.
    torch.manual_seed(0)
    ours = ResNetBackbone(name, width, small_stem, channels)
    torch.manual_seed(0)
    theirs = _TorchvisionBuilt(name, width, small_stem, channels)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items())
    x = torch.rand(2, channels, 32, 32)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=0, atol=0)


def test_no_raysl_process_imports_torchvision():
    # Importing torchvision.models imports torchvision.ops and torch._dynamo: seconds of every
    # train worker's start-up. A fresh interpreter, so that this test's own imports do not count.
    code = ("import sys, raysl.train.loop, raysl.data.views, raysl.eval.suite; "
            "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("name", "width", "feat"), [("resnet18", 16, 128), ("resnet50", 8, 256)])
def test_width_and_small_stem(name, width, feat):
    enc = build_encoder(ModelConfig(backbone=name, width=width, small_stem=True), 1, 28)
    out = enc(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, feat) and enc.num_features == feat


def test_encoder_accepts_uint8_and_float_alike():
    enc = build_encoder(ModelConfig(width=8, small_stem=True), 3, 32).eval()
    x8 = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(enc(x8), enc(x8.float() / 255))


def test_mlp_layout():
    head = MLP([8, 16, 4])
    assert head(torch.rand(5, 8)).shape == (5, 4)
    with pytest.raises(ValueError, match="dims"):
        MLP([8])
