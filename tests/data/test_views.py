import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

import raysl.data.views as views_mod
from raysl.config import DataConfig, ViewConfig
from raysl.data.views import (
    MultiViewTransform,
    _adjust_hue,
    augment,
    crop_resize_flip,
    make_views,
    sample_crop_boxes,
    solarize,
)

# Every view the identity: full-image square crops of square images, nothing else.
NO_AUG = ViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, jitter_p=0.0,
                    grayscale_p=0.0, blur_p=(0.0, 0.0), local_crop_scale=(1.0, 1.0),
                    local_blur_p=0.0)


def _images(b=16, c=3, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)


def _data(views=NO_AUG, image_size=32):
    return DataConfig(image_size=image_size, views=views)


def _with(cfg, **changes):
    return ViewConfig(**{**cfg.__dict__, **changes})


def test_shapes_and_dtype():
    x = _images(b=8, c=3, h=40, w=48)
    y = augment(x, ViewConfig(), 24, torch.Generator().manual_seed(0))
    assert y.shape == (8, 3, 24, 24) and y.dtype == torch.uint8
    y1 = augment(_images(c=1), ViewConfig(), 28, torch.Generator().manual_seed(0))
    assert y1.shape == (16, 1, 28, 28)


def test_identity_and_flip_are_exact():
    x = _images()
    assert torch.equal(augment(x, NO_AUG, 32, torch.Generator()), x)
    flip = _with(NO_AUG, hflip_p=1.0)
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
    y = augment(x, ViewConfig(), 32, torch.Generator().manual_seed(0), blur_p=0.5).float()
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
    a, b, c = (augment(x, ViewConfig(), 32, torch.Generator().manual_seed(seed), blur_p=0.5,
                       solarize_p=0.5) for seed in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("shift", [-0.4, -0.1, 0.05, 0.3])
def test_hue_matches_torchvision(shift):
    x = _images(b=4).float() / 255
    ours = _adjust_hue(x, torch.full((4,), shift))
    ref = torch.stack([TF.adjust_hue(img, shift) for img in x])
    torch.testing.assert_close(ours, ref, atol=2e-3, rtol=0)


def test_jitter_changes_pixels_grayscale_equalises_channels():
    x = _images()
    gray = _with(NO_AUG, grayscale_p=1.0)
    y = augment(x, gray, 32, torch.Generator())
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    jitter = _with(NO_AUG, jitter_p=1.0)
    assert not torch.equal(augment(x, jitter, 32, torch.Generator()), x)


def test_ray_data_callable_emits_uint8_views():
    t = MultiViewTransform(DataConfig(image_size=16), seed=0)
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


def _solarized(x):
    return TF.solarize(x, threshold=128)  # torchvision on uint8: v >= 128 -> 255 - v


def test_solarize_is_exact_on_uint8():
    # Every uint8 value, around the threshold in particular, as torchvision's uint8 solarize.
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).repeat(4, 3, 1, 1)
    y = solarize(x.float() / 255, 1.0, torch.Generator())
    assert torch.equal(y.mul(255).round().to(torch.uint8), _solarized(x))
    assert torch.equal(solarize(x.float() / 255, 0.0, torch.Generator()), x.float() / 255)


def test_solarize_is_drawn_per_image():
    x = _images(b=64)
    y = solarize(x.float() / 255, 0.5, torch.Generator().manual_seed(0))
    y = y.mul(255).round().to(torch.uint8)
    hit = torch.tensor([torch.equal(a, b) for a, b in zip(y, _solarized(x), strict=True)])
    kept = torch.tensor([torch.equal(a, b) for a, b in zip(y, x, strict=True)])
    assert (hit ^ kept).all()  # each image is either solarized whole or left alone
    assert 16 < hit.sum() < 48


def test_global_views_are_asymmetric():
    x = _images()
    gen = torch.Generator().manual_seed(0)
    v0, v1 = make_views(x, _data(_with(NO_AUG, blur_p=(1.0, 0.0))), gen)
    assert torch.equal(v1, x) and not torch.equal(v0, x)
    v0, v1 = make_views(x, _data(_with(NO_AUG, solarize_p=(0.0, 1.0))), gen)
    assert torch.equal(v0, x) and torch.equal(v1, _solarized(x))


def test_multicrop_views_shapes_and_order():
    cfg = DataConfig(image_size=32, views=ViewConfig(local_crops=3))
    local = cfg.effective_local_size
    assert local == round(32 * 96 / 224)
    batch = {"image": np.random.default_rng(0).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)}
    out = MultiViewTransform(cfg, seed=0)(batch)
    assert list(out) == [f"view{i}" for i in range(5)]
    sizes = [out[f"view{i}"].shape[-1] for i in range(5)]
    assert sizes == [32, 32, local, local, local]
    for v in out.values():
        assert v.dtype == np.uint8 and v.shape[:2] == (5, 3) and v.shape[2] == v.shape[3]
    assert len({v.tobytes() for v in out.values()}) == 5  # the local crops differ from each other


def test_local_crops_use_local_scale_and_no_solarize(monkeypatch):
    scales = []
    real = views_mod.sample_crop_boxes

    def spy(b, h, w, scale, ratio, gen):
        scales.append(scale)
        return real(b, h, w, scale, ratio, gen)

    monkeypatch.setattr(views_mod, "sample_crop_boxes", spy)
    views = _with(NO_AUG, crop_scale=(0.5, 1.0), local_crops=2, local_crop_scale=(0.1, 0.2),
                  solarize_p=(1.0, 1.0))
    out = make_views(_images(), _data(views), torch.Generator())
    assert scales == [(0.5, 1.0)] * 2 + [(0.1, 0.2)] * 2
    # Both global views are solarized, so every pixel is < 128; the local ones are not.
    assert all(v.max() < 128 for v in out[:2]) and all(v.max() >= 128 for v in out[2:])


def test_full_scale_local_crop_is_a_resize():
    x = _images()
    cfg = _data(_with(NO_AUG, local_crops=1))
    local = make_views(x, cfg, torch.Generator())[2]
    size = cfg.effective_local_size
    ref = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False)
    # Same sampling points as grid_sample; float rounding may move a value by one level.
    assert (local.int() - ref.round().int()).abs().max() <= 1


def test_multicrop_views_are_per_image():
    x = _images(b=1).expand(16, -1, -1, -1).contiguous()
    cfg = _data(ViewConfig(local_crops=2))
    for v in make_views(x, cfg, torch.Generator().manual_seed(0)):
        assert len({tuple(img.flatten().tolist()) for img in v}) == 16


def test_multicrop_transform_is_deterministic_under_seed():
    cfg = DataConfig(image_size=32, views=ViewConfig(blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2),
                                                     local_crops=2))
    batch = {"image": np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)}
    a, b, c = (MultiViewTransform(cfg, seed=s) for s in (3, 3, 4))
    first_a, first_b, first_c = a(batch), b(batch), c(batch)
    for k in first_a:
        assert np.array_equal(first_a[k], first_b[k]) and not np.array_equal(first_a[k], first_c[k])
    second_a = a(batch)  # the generator advances: the next epoch gets new views
    assert not any(np.array_equal(first_a[k], second_a[k]) for k in first_a)
