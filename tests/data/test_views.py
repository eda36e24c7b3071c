import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

import raysl.data.augment as augment_mod
import raysl.data.pretext as pretext_mod
import raysl.data.views as views_mod
from raysl import config as C
from raysl.config import VIEW_PRESETS, DataConfig, ViewConfig
from raysl.data.augment import (
    _adjust_hue,
    augment,
    crop_resize_flip,
    crop_resize_flip_uint8,
    sample_crop_boxes,
    solarize,
)
from raysl.data.pretext import cut_tiles, jigsaw_permutations, rotate90
from raysl.data.views import MultiViewTransform, make_columns, make_views
from raysl.errors import ConfigError
from raysl.methods.simclr import SimCLR

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


def test_large_views_take_the_uint8_path_exactly():
    # From 64 px, views are cropped and resized image by image on uint8: identity and flip are
    # exact there too, and a box resized to its own size is the slice.
    x = _images(b=3, h=96, w=96)
    assert torch.equal(augment(x, NO_AUG, 96, torch.Generator()), x)
    assert torch.equal(augment(x, _with(NO_AUG, hflip_p=1.0), 96, torch.Generator()), x.flip(-1))
    boxes = torch.tensor([[4.0, 8.0, 70.0, 70.0]] * 3)
    y = crop_resize_flip_uint8(x, boxes, torch.tensor([False, True, False]), 70)
    assert torch.equal(y[0], x[0, :, 4:74, 8:78])
    assert torch.equal(y[1], x[1, :, 4:74, 8:78].flip(-1))


def test_uint8_downscale_is_antialiased():
    # A 1-pixel checkerboard halved: averaged to mid-gray, not subsampled to black or white.
    board = ((torch.arange(128)[:, None] + torch.arange(128)[None]) % 2 * 255).to(torch.uint8)
    x = board.expand(1, 3, 128, 128).contiguous()
    y = crop_resize_flip_uint8(x, torch.tensor([[0.0, 0.0, 128.0, 128.0]]), torch.tensor([False]),
                               64)
    assert (y.float() - 127.5).abs().max() <= 3  # subsampling would give 0 or 255


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
    real = augment_mod.sample_crop_boxes

    def spy(b, h, w, scale, ratio, gen):
        scales.append(scale)
        return real(b, h, w, scale, ratio, gen)

    monkeypatch.setattr(augment_mod, "sample_crop_boxes", spy)
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


# ---------------------------------------------------------------------------------------------
# MAE and the pretext presets (rotation, jigsaw, colorization)
# ---------------------------------------------------------------------------------------------

PRETEXT_PRESETS = ["mae", "rotation", "jigsaw", "colorization"]


def _preset(name, image_size=32, **changes):
    return DataConfig(image_size=image_size, preset=name,
                      views=_with(VIEW_PRESETS[name], **changes))


def _same_image(b=64, size=40):
    return _images(b=1, h=size, w=size).expand(b, -1, -1, -1).contiguous()


def _columns(name, x, seed=0, **changes):
    return make_columns(x, _preset(name, **changes), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", PRETEXT_PRESETS)
def test_pretext_presets_emit_their_columns(name):
    cfg = _preset(name)
    batch = {"image": np.random.default_rng(0).integers(0, 256, (6, 40, 40, 3), dtype=np.uint8),
             "label": np.arange(6)}
    out = MultiViewTransform(cfg, seed=0)(batch)
    t = cfg.jigsaw_tile_size
    expected = {
        "mae": {"view0": (6, 3, 32, 32)},
        "rotation": {"view0": (6, 3, 32, 32), "rotation": (6,)},
        "jigsaw": {"view0": (6, 9, 3, t, t), "jigsaw": (6,)},
        "colorization": {"view0": (6, 1, 32, 32), "target": (6, 3, 32, 32)},
    }[name]
    assert {k: v.shape for k, v in out.items()} == {**expected, "label": (6,)}
    assert out["view0"].dtype == np.uint8 and np.array_equal(out["label"], np.arange(6))
    if name in ("rotation", "jigsaw"):
        assert out[name].dtype == np.int64
        assert out[name].min() >= 0 and out[name].max() < (4 if name == "rotation" else 100)
    if name == "colorization":
        assert out["target"].dtype == np.uint8


@pytest.mark.parametrize("name", PRETEXT_PRESETS)
def test_pretext_views_are_drawn_per_image(name):
    # 64 copies of one image get different views (one draw per batch would give one view); a
    # few repeat by chance: a 224/256 crop of a 64 px image has only 8 x 8 places to be.
    out = _columns(name, _same_image(size=64))
    assert len({v.numpy().tobytes() for v in out["view0"]}) > 48
    if name == "rotation":
        assert torch.bincount(out["rotation"], minlength=4).min() >= 5  # all four, ~16 each
    if name == "jigsaw":
        assert len(set(out["jigsaw"].tolist())) > 30  # ~47 distinct of 100 expected
    if name == "colorization":
        assert len({v.numpy().tobytes() for v in out["target"]}) > 48


@pytest.mark.parametrize("name", PRETEXT_PRESETS)
def test_pretext_columns_are_deterministic_under_seed(name):
    x = _images(b=8, h=40, w=40)
    a, b, c = (_columns(name, x, seed=s) for s in (3, 3, 4))
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert all(not torch.equal(a[k], c[k]) for k in a)


def test_mae_is_one_view_the_first_of_the_two():
    x = _images()
    one = make_views(x, _preset("mae"), torch.Generator().manual_seed(0))
    two = make_views(x, _preset("mae", global_views=2), torch.Generator().manual_seed(0))
    assert len(one) == 1 and len(two) == 2 and torch.equal(one[0], two[0])
    # No colour: every pixel of a full-image, unflipped view is the image's own.
    ident = make_views(x, _preset("mae", crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                                  hflip_p=0.0), torch.Generator())
    assert torch.equal(ident[0], x)


def test_rotation_label_undoes_the_rotation():
    x = _images(b=32)
    out = _columns("rotation", x, crop_scale=(1.0, 1.0), hflip_p=0.0)  # the view is the image
    view, k = out["view0"], out["rotation"]
    assert torch.equal(rotate90(view, (4 - k) % 4), x)
    for i in range(32):
        assert torch.equal(view[i], torch.rot90(x[i], int(k[i]), dims=(-2, -1)))
    assert (k != 0).any() and not torch.equal(view[k != 0], x[k != 0])


def test_cut_tiles_without_gap_is_the_grid_of_cells():
    x = _images(b=4, h=30, w=30)
    tiles = cut_tiles(x, 3, 10, torch.Generator())
    cells = x.view(4, 3, 3, 10, 3, 10).permute(0, 2, 4, 1, 3, 5).reshape(4, 9, 3, 10, 10)
    assert torch.equal(tiles, cells)


def test_jigsaw_tiles_unshuffle_into_their_cells():
    cfg = _preset("jigsaw", image_size=30, crop_scale=(1.0, 1.0))  # the view is the image
    t = cfg.jigsaw_tile_size
    assert t == 9  # 64/75 of a 10 px cell
    x = _images(b=16, h=30, w=30)
    out = make_columns(x, cfg, torch.Generator().manual_seed(0))
    perms = jigsaw_permutations(100)
    placements = torch.zeros(16, 9, dtype=torch.long)  # where each tile sits in its cell
    for i in range(16):
        back = out["view0"][i][perms[out["jigsaw"][i]].argsort()]  # (T, C, t, t) in cell order
        for j in range(9):
            cy, cx = divmod(j, 3)
            at = [(dy, dx) for dy in range(10 - t + 1) for dx in range(10 - t + 1)
                  if torch.equal(back[j], x[i, :, 10 * cy + dy:10 * cy + dy + t,
                                            10 * cx + dx:10 * cx + dx + t])]
            assert len(at) == 1, (i, j)
            placements[i, j] = at[0][0] * 2 + at[0][1]
        if not torch.equal(perms[out["jigsaw"][i]], torch.arange(9)):
            assert not torch.equal(out["view0"][i], back)
    # Drawn per image and per tile: each cell's tile moves across images, each image's tiles
    # move across cells.
    assert all(len(set(placements[:, j].tolist())) > 1 for j in range(9))
    assert all(len(set(placements[i].tolist())) > 1 for i in range(16))


def test_jigsaw_permutations_are_a_fixed_set_far_apart():
    perms = jigsaw_permutations(100)
    assert perms.shape == (100, 9) and perms.dtype == torch.int64
    assert (perms.sort(dim=1).values == torch.arange(9)).all()  # each row a permutation
    assert len({tuple(p) for p in perms.tolist()}) == 100
    hamming = (perms[:, None] != perms[None]).sum(-1) + 9 * torch.eye(100, dtype=torch.long)
    assert hamming.min() >= 6  # the paper's mean-greedy set has pairs only 2 apart
    # Rebuilt from scratch (not the cache): the same set; another seed: another set.
    small = jigsaw_permutations(20)
    pretext_mod._permutations.cache_clear()
    assert torch.equal(jigsaw_permutations(20), small)
    assert not torch.equal(jigsaw_permutations(20, seed=1), small)
    assert len({tuple(p) for p in jigsaw_permutations(24, grid=2).tolist()}) == 24  # all of 4!
    big = jigsaw_permutations(10, grid=4)
    assert ((big[:, None] != big[None]).sum(-1) + 16 * torch.eye(10, dtype=torch.long)).min() >= 12


def test_colorization_input_is_the_luminance_of_its_target():
    out = _columns("colorization", _images(b=32, h=40, w=40))
    gray, target = out["view0"], out["target"]
    r, g, b = target.double().unbind(1)
    luma = (0.299 * r + 0.587 * g + 0.114 * b).round()  # ITU-R 601-2, from the uint8 target
    diff = (gray[:, 0].double() - luma).abs()
    assert diff.max() <= 1 and (diff == 0).double().mean() > 0.999  # float32 ties at .5
    assert not torch.equal(target[:, 0], target[:, 1])  # the target keeps its colours


def test_make_views_refuses_a_pretext():
    with pytest.raises(ValueError, match=r"pretext='rotation'.*make_columns"):
        make_views(_images(), _preset("rotation"), torch.Generator())


@pytest.mark.parametrize(("changes", "field"), [
    ({"pretext": "jigsaw"}, "global_views"),  # two views cannot share one target column
    ({"global_views": 3}, "global_views"),
    ({"global_views": 1, "pretext": "rotation", "local_crops": 2}, "local_crops"),
    ({"jigsaw_grid": 5}, "jigsaw_grid"),
    ({"jigsaw_grid": 2, "jigsaw_permutations": 25}, "jigsaw_permutations"),  # 4! = 24
])
def test_view_config_rejects_bad_pretext_settings(changes, field):
    with pytest.raises(ConfigError) as info:
        _with(ViewConfig(), **changes)
    assert info.value.field == field and repr(info.value.value) in str(info.value)


@pytest.mark.parametrize(("overrides", "field", "value"), [
    (["method.name=simclr", "data.preset=mae"], "data.preset", "mae"),
    (["method.name=byol", "data.preset=rotation"], "data.preset", "rotation"),
    (["method.name=dino", "data.preset=jigsaw"], "data.preset", "jigsaw"),
    (["method.name=simclr", "data.views.global_views=1"], "data.views.global_views", 1),
    (["method.name=simclr", "data.preset=mae", "data.views.pretext=colorization"],
     "data.views.pretext", "colorization"),
    (["data.preset=colorization", "data.channels=1"], "data.channels", 1),
])
def test_methods_refuse_a_view_layout_they_cannot_train_on(overrides, field, value):
    with pytest.raises(ConfigError) as info:
        C.load(None, overrides)
    assert (info.value.field, info.value.value) == (field, value), str(info.value)
    if field != "data.channels":
        name = overrides[0].partition("=")[2]
        assert f"{name} trains on 2 global views" in str(info.value)
        assert "this gives 1 global view" in str(info.value)


def test_a_method_declaring_the_layout_takes_the_preset(monkeypatch):
    # What a future RotNet method declares; the config then builds, with one view.
    monkeypatch.setattr(SimCLR, "global_views", 1)
    monkeypatch.setattr(SimCLR, "pretext", "rotation")
    cfg = C.load(None, ["data.preset=rotation", "data.image_size=64"])
    assert cfg.view_sizes == [64] and cfg.data.views.pretext == "rotation"
    with pytest.raises(ConfigError, match="simclr trains on 1 global view with a rotation"):
        C.load(None, ["data.preset=simclr"])


def test_views_carry_each_rows_index_and_label():
    images = np.random.default_rng(0).integers(0, 256, (4, 30, 30, 1), dtype=np.uint8)
    batch = {"image": images, "index": np.array([7, 3, 9, 1]), "label": np.array([0, 1, 2, 3])}
    cfg = C.load(None, ["data.image_size=28", "data.channels=1"]).data
    out = views_mod.views_of_batch(batch, cfg, torch.Generator().manual_seed(0))
    assert out["index"].tolist() == [7, 3, 9, 1] and out["label"].tolist() == [0, 1, 2, 3]


def test_whole_images_are_resized_not_augmented():
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    out = views_mod.whole_images({"image": images, "index": np.arange(3)}, 16)
    assert out["image"].shape == (3, 3, 16, 16) and out["image"].dtype == np.uint8
    assert out["index"].tolist() == [0, 1, 2] and "label" not in out
    # The whole image resized as evaluation resizes it (eval/features.py), to the nearest level.
    from raysl.eval.features import resized
    want = resized(images, 16) * 255
    assert (torch.from_numpy(out["image"]).float() - want).abs().max() <= 0.5 + 1e-3
    same = views_mod.whole_images({"image": images, "index": np.arange(3)}, 32)["image"]
    assert np.array_equal(same, images.transpose(0, 3, 1, 2))  # at the view size: untouched
