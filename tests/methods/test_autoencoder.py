"""The autoencoder baseline (raysl/methods/autoencoder.py): corruption, decoder and loss."""

import pytest
import torch

from raysl.methods.autoencoder import ConvDecoder, corrupt
from raysl.methods.base import Progress, build_method
from tests.test_methods import tiny_batch, tiny_config


def test_masking_noise_zeroes_whole_pixels_at_the_asked_rate():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32) * 0.9 + 0.1  # no pixel is 0 before
    out = corrupt(x, "masking", 0.25)
    zeroed = out == 0
    assert torch.equal(zeroed.all(dim=1), zeroed.any(dim=1))  # all channels of a pixel, or none
    assert zeroed[:, 0].float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert torch.equal(out[~zeroed], x[~zeroed])


def test_gaussian_noise_has_the_asked_std_and_stays_in_range():
    torch.manual_seed(0)
    x = torch.full((8, 1, 64, 64), 0.5)
    out = corrupt(x, "gaussian", 0.1)
    assert (out - x).std().item() == pytest.approx(0.1, rel=0.02)
    assert out.min() >= 0 and out.max() <= 1
    assert corrupt(x, "none", 0.3) is x


@pytest.mark.parametrize("size", [28, 32])
def test_the_decoder_draws_images_of_the_training_size(size):
    assert ConvDecoder(40, 1, size, 8)(torch.randn(3, 40)).shape == (3, 1, size, size)


def test_the_loss_is_the_mse_to_the_clean_view_with_a_perfect_reconstruction_at_zero():
    cfg = tiny_config("autoencoder", extra=("method.corruption_level=0.5",))
    torch.manual_seed(0)
    method = build_method(cfg)
    views, _ = tiny_batch(cfg)
    decoded = []
    method.decoder.register_forward_hook(lambda _m, _a, out: decoded.append(out.detach()))
    torch.manual_seed(1)
    loss = method(views, Progress(0, 1, 1)).loss.item()
    target = method.encoder.normalise(views[0])
    naive = sum(((r - t) ** 2).sum().item() for r, t in zip(decoded[0], target, strict=True))
    assert loss == pytest.approx(naive / target.numel(), rel=1e-5)
    # Redrawing the clean view exactly gives 0, whatever the corruption hid.
    method.decoder.forward = lambda h: target  # type: ignore[method-assign]
    assert method(views, Progress(0, 1, 1)).loss.item() == 0.0
