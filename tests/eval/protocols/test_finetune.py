import numpy as np
import pytest
import torch

from raysl.config import ModelConfig
from raysl.eval.protocols.finetune import FinetuneSettings, finetune, random_crop_flip
from raysl.eval.splits import LabeledSplit
from raysl.nn.backbones import build_encoder


def test_random_crop_flip_draws_per_image_and_keeps_shape():
    x = torch.rand(16, 3, 32, 32)
    out = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    same = [torch.equal(out[i], out[0]) for i in range(16)]
    assert not all(same)
    again = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def _two_classes(n, seed):
    """Dark images with a bright left half (class 0) or a bright right half (class 1)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.integers(0, 40, (n, 16, 16, 1)).astype(np.uint8)
    for i, c in enumerate(y):
        x[i, :, 8 * c:8 * c + 8] += 200
    return x, y


def test_finetuning_learns_an_easy_task():
    x, y = _two_classes(64, 0)
    xt, yt = _two_classes(64, 1)
    torch.manual_seed(0)
    encoder = build_encoder(ModelConfig(width=8, small_stem=True), 1, 16)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    s = FinetuneSettings(epochs=1, min_steps=40, lr=0.4, batch_size=16, weight_decay=0.0, seed=0)
    result = finetune(encoder, LabeledSplit(x, y, xt, yt, 2, "two halves"), s)
    assert result.steps == 40 and result.train_images == 64
    assert result.top1 > 0.9 and result.top5 == 1.0
    # The whole encoder was trained, not just the head.
    assert any(not torch.equal(before[k], v) for k, v in encoder.state_dict().items())


@pytest.mark.parametrize("backbone", ["vit", "resnet"])
def test_layer_wise_lr_decay_scales_each_depth(backbone):
    from raysl.eval.protocols.finetune import Classifier, decayed_param_groups, layer_depth

    model_cfg = (ModelConfig(backbone="vit_tiny", width=32, depth=3, patch_size=4)
                 if backbone == "vit" else ModelConfig(width=8, small_stem=True))
    encoder = build_encoder(model_cfg, 1, 28)
    model = Classifier(encoder, encoder.num_features, 10)
    groups = decayed_param_groups(model, encoder, 0.5)
    top = 3 + 1 + 1 if backbone == "vit" else 4 + 1  # blocks + norm, or stages; then the head
    assert [g["lr_scale"] for g in groups] == [0.5 ** (top - d) for d in range(top)] + [1.0]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    if backbone == "vit":
        assert layer_depth("backbone.patch_embed.weight", encoder) == 0
        assert layer_depth("backbone.blocks.2.mlp.0.weight", encoder) == 3
        assert layer_depth("backbone.norm.weight", encoder) == 4
    else:
        assert layer_depth("backbone.conv1.weight", encoder) == 0
        assert layer_depth("backbone.layer3.0.conv1.weight", encoder) == 3
    assert {g["lr_scale"] for g in decayed_param_groups(model, encoder, 1.0)} == {1.0}


def test_the_network_trained_from_scratch_gets_one_learning_rate():
    """Layer-wise decay is for the pretrained encoder only: the from-scratch baseline trains as
    with layer_decay=1 (the same seed gives the same scores), the pretrained one does not."""
    from raysl.eval.protocols.base import ImageJob
    from raysl.eval.protocols.finetune import Finetune

    x, y = _two_classes(48, 0)
    split = LabeledSplit(x, y, *_two_classes(48, 1), 2, "two halves")
    decayed = FinetuneSettings(epochs=1, min_steps=6, lr=0.4, batch_size=16, weight_decay=0.0,
                               seed=0, layer_decay=0.25)
    job = ImageJob("test", np.arange(48), decayed, "")

    def encoder():
        torch.manual_seed(0)
        return build_encoder(ModelConfig(width=8, small_stem=True), 1, 16)

    def stem(e):
        return e.state_dict()["backbone.conv1.weight"]

    scratch, flat, pretrained = encoder(), encoder(), encoder()
    Finetune().run(scratch, split, job, "cpu", from_scratch=True)
    finetune(flat, split, FinetuneSettings(**{**decayed.__dict__, "layer_decay": 1.0}))
    Finetune().run(pretrained, split, job, "cpu", from_scratch=False)
    assert torch.equal(stem(scratch), stem(flat))
    assert not torch.equal(stem(pretrained), stem(flat))
