import pytest
import torch
import torchvision

from raysl.config import ModelConfig
from raysl.nn.backbones import ResNetBackbone, build_encoder
from raysl.nn.heads import MLP


def test_width_64_state_dict_loads_into_torchvision_resnet18():
    ours = ResNetBackbone("resnet18", width=64)
    tv = torchvision.models.resnet18()
    state = {k: v for k, v in ours.state_dict().items()}
    missing, unexpected = tv.load_state_dict(state, strict=False)
    assert missing == ["fc.weight", "fc.bias"] and unexpected == []
    x = torch.rand(2, 3, 64, 64)
    tv.fc = torch.nn.Identity()
    torch.testing.assert_close(ours.eval()(x), tv.eval()(x))


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
