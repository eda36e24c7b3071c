import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from raysl.config import ViewConfig
from raysl.data.views import (
    MultiViewTransform,
    _adjust_hue,
    augment,
    crop_resize_flip,
    sample_crop_boxes,
)

NO_AUG = ViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0,
                    grayscale_p=0.0, blur_p=0.0)


def _images(b=16, c=3, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)


def test_shapes_and_dtype():
    x = _images(b=8, c=3, h=40, w=48)
    y = augment(x, ViewConfig(), 24, torch.Generator().manual_seed(0))
    assert y.shape == (8, 3, 24, 24) and y.dtype == torch.uint8
    y1 = augment(_images(c=1), ViewConfig(), 28, torch.Generator().manual_seed(0))
    assert y1.shape == (16, 1, 28, 28)


def test_identity_and_flip_are_exact():
    x = _images()
    assert torch.equal(augment(x, NO_AUG, 32, torch.Generator()), x)
    flip = ViewConfig(**{**NO_AUG.__dict__, "hflip_p": 1.0})
    assert torch.equal(augment(x, flip, 32, torch.Generator()), x.flip(-1))


def test_crop_matches_slicing():
    # A box on the pixel grid, resized to its own size, is exactly the slice.
    x = _images(b=2).float()
    boxes = torch.tensor([[4.0, 8.0, 16.0, 16.0], [0.0, 0.0, 16.0, 16.0]])
    y = crop_resize_flip(x, boxes, torch.tensor([False, False]), 16)
    torch.testing.assert_close(y[0], x[0, :, 4:20, 8:24])
    torch.testing.assert_close(y[1], x[1, :, 0:16, 0:16])


def test_views_differ_per_image_not_per_batch():
    # The same image repeated: per-image randomness gives different views of each copy.
    x = _images(b=1).expand(32, -1, -1, -1).contiguous()
    y = augment(x, ViewConfig(blur_p=0.5), 32, torch.Generator().manual_seed(0)).float()
    distinct = {tuple(v.flatten()[:64].tolist()) for v in y}
    assert len(distinct) == 32
    boxes = sample_crop_boxes(64, 32, 32, (0.08, 1.0), (0.75, 4 / 3), torch.Generator())
    assert len(set(map(tuple, boxes.tolist()))) > 50


def test_boxes_respect_scale_ratio_and_bounds():
    b, h, w = 2000, 50, 80
    boxes = sample_crop_boxes(b, h, w, (0.2, 0.6), (0.5, 2.0), torch.Generator().manual_seed(1))
    top, left, ch, cw = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + ch <= h).all() and (left + cw <= w).all()
    area = ch * cw / (h * w)
    assert area.min() > 0.18 and area.max() < 0.62  # rounding to whole pixels


def test_deterministic_under_seed():
    x = _images()
    a = augment(x, ViewConfig(blur_p=0.5), 32, torch.Generator().manual_seed(7))
    b = augment(x, ViewConfig(blur_p=0.5), 32, torch.Generator().manual_seed(7))
    c = augment(x, ViewConfig(blur_p=0.5), 32, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("shift", [-0.4, -0.1, 0.05, 0.3])
def test_hue_matches_torchvision(shift):
    x = _images(b=4).float() / 255
    ours = _adjust_hue(x, torch.full((4,), shift))
    ref = torch.stack([TF.adjust_hue(img, shift) for img in x])
    torch.testing.assert_close(ours, ref, atol=2e-3, rtol=0)


def test_jitter_changes_pixels_grayscale_equalises_channels():
    x = _images()
    gray = ViewConfig(**{**NO_AUG.__dict__, "grayscale_p": 1.0})
    y = augment(x, gray, 32, torch.Generator())
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    jitter = ViewConfig(**{**NO_AUG.__dict__, "jitter_p": 1.0})
    assert not torch.equal(augment(x, jitter, 32, torch.Generator()), x)


def test_ray_data_callable_emits_uint8_views():
    t = MultiViewTransform(ViewConfig(), 16, num_views=2, seed=0)
    batch = {"image": np.random.default_rng(0).integers(0, 255, (5, 20, 20, 3), dtype=np.uint8)}
    out = t(batch)
    assert set(out) == {"view0", "view1"}
    assert out["view0"].shape == (5, 3, 16, 16) and out["view0"].dtype == np.uint8
    assert not np.array_equal(out["view0"], out["view1"])


def test_fallback_box_is_the_centred_allowed_aspect_ratio():
    # No 10-attempt box fits a 64x32 (tall) image at full area and ratio 1: torchvision's
    # fallback is the centred 32x32 square; for a wide 32x64 image likewise.
    tall = sample_crop_boxes(3, 64, 32, (1.0, 1.0), (1.0, 1.0), torch.Generator())
    assert tall.tolist() == [[16.0, 0.0, 32.0, 32.0]] * 3
    wide = sample_crop_boxes(3, 32, 64, (1.0, 1.0), (1.0, 1.0), torch.Generator())
    assert wide.tolist() == [[0.0, 16.0, 32.0, 32.0]] * 3
