"""Encoder weights from torchvision's and timm's layouts: renamed exactly, or refused by name."""

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from raysl.config import ModelConfig
from raysl.errors import CheckpointError
from raysl.nn.backbones import build_encoder
from raysl.nn.layouts import detect_layout, load_exactly, to_raysl_layout, unwrap


def test_a_torchvision_resnet_gives_the_same_features_in_raysl():
    torch.manual_seed(0)
    reference = torchvision.models.resnet18().eval()
    encoder = build_encoder(ModelConfig(backbone="resnet18"), 3, 64).eval()
    state = to_raysl_layout(unwrap(reference.state_dict()), encoder)
    load_exactly(encoder, state, "resnet18.pth")
    images = torch.rand(2, 3, 64, 64)
    reference.fc = nn.Identity()  # the classifier is not the encoder's: dropped on load
    normalised = (images - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)  # the Encoder keeps ImageNet's statistics
    with torch.no_grad():
        torch.testing.assert_close(encoder(images), reference(normalised))


def _timm_names(raysl_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """raysl's ViT keys written by hand as timm's VisionTransformer names them."""
    out = {}
    for key, value in raysl_state.items():
        if key in ("mean", "std"):
            continue
        key = key.removeprefix("backbone.")
        parts = key.split(".")
        if key.startswith("patch_embed."):
            key = "patch_embed.proj." + parts[-1]
        elif len(parts) > 2 and parts[2] == "attn":
            tail = {"in_proj_weight": "qkv.weight", "in_proj_bias": "qkv.bias",
                    "out_proj": "proj." + parts[-1]}[parts[3]]
            key = f"blocks.{parts[1]}.attn.{tail}"
        elif len(parts) > 2 and parts[2] == "mlp":
            key = f"blocks.{parts[1]}.mlp.{ {'0': 'fc1', '2': 'fc2'}[parts[3]] }.{parts[-1]}"
        out[key] = value.clone()
    out["head.weight"], out["head.bias"] = torch.randn(10, 32), torch.randn(10)  # a classifier
    return out


def test_a_timm_vit_file_loads_into_the_same_vit(tmp_path: Path):
    cfg = ModelConfig(backbone="vit_tiny", width=32, depth=2, patch_size=4)
    torch.manual_seed(1)
    source = build_encoder(cfg, 3, 16).eval()
    # timm's scripts save {"model": state}; DDP prefixes every key with "module."
    file = tmp_path / "vit.pth"
    torch.save({"model": {f"module.{k}": v for k, v in _timm_names(source.state_dict()).items()},
                "epoch": 3}, file)
    tensors = unwrap(torch.load(file, weights_only=True))
    assert detect_layout(tensors) == "timm"
    torch.manual_seed(2)
    encoder = build_encoder(cfg, 3, 16).eval()
    load_exactly(encoder, to_raysl_layout(tensors, encoder), str(file))
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(encoder(images), source(images))


def test_a_file_that_does_not_fit_names_missing_unexpected_and_shapes():
    state = unwrap(torchvision.models.resnet18().state_dict())
    state["extra.weight"] = torch.zeros(1)
    del state["layer4.1.bn2.bias"]
    encoder = build_encoder(ModelConfig(backbone="resnet18", width=16), 3, 32)
    with pytest.raises(CheckpointError) as error:
        load_exactly(encoder, to_raysl_layout(state, encoder), "r18.pth")
    text = str(error.value)
    assert "1 missing: backbone.layer4.1.bn2.bias" in text
    assert "1 unexpected: backbone.extra.weight" in text
    assert "backbone.conv1.weight: (64, 3, 7, 7) in the file, (16, 3, 7, 7) here" in text
    assert "different shapes" in text and text.startswith("r18.pth does not fit")


def test_a_single_channel_encoder_refuses_rgb_weights_by_name():
    gray = build_encoder(ModelConfig(backbone="resnet18"), 1, 32)
    state = to_raysl_layout(unwrap(torchvision.models.resnet18().state_dict()), gray)
    with pytest.raises(CheckpointError, match=r"conv1.weight: \(64, 3, 7, 7\) in the file, "
                                              r"\(64, 1, 7, 7\) here"):
        load_exactly(gray, state, "r18.pth")


def test_unwrap_refuses_what_is_not_a_state_dict():
    with pytest.raises(CheckpointError, match="holds no tensors"):
        unwrap({"epoch": 3, "note": "no weights"})
