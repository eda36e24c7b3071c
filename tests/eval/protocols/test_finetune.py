import numpy as np
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
