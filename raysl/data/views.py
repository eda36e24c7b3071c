"""Per-image random view augmentation on uint8 batches, vectorised over the batch.

Every random parameter (crop box, flip, jitter factors and their order, grayscale, blur sigma,
solarization, rotation, jigsaw permutation and tile placement) is drawn independently for each
image. Batched torchvision v2 calls draw one set of parameters per *batch*, which silently weakens
SSL augmentation; looping PIL calls per image is slow. Here one ``grid_sample`` crops, resizes
and flips the whole batch with per-sample boxes.

The vocabulary: :func:`sample_crop_boxes` and :func:`crop_resize_flip`, :func:`color_jitter`,
:func:`grayscale`, :func:`gaussian_blur`, :func:`solarize` (composed by :func:`augment` into one
view), and for the pretext tasks :func:`rotate90`, :func:`cut_tiles` and
:func:`jigsaw_permutations`. A preset (``VIEW_PRESETS`` in raysl/config/presets.py) picks a method
family's recipe:

- SimCLR, MoCo v2, BYOL: two global views, which may be augmented asymmetrically (BYOL and DINO
  blur the first view more and solarize only the second).
- Multi-crop (SwAV, DINO): the two global views, then smaller local views.
- MAE: one lightly augmented view (crop and flip); the masking happens in the model.
- Pretext tasks, one view and a target column: ``rotation`` (RotNet: the view rotated by a
  random quarter turn, the label its index), ``jigsaw`` (the view cut into shuffled tiles, the
  label the permutation's index) and ``colorization`` (the view's luminance, the target its
  colours).

:func:`make_views` builds the views, :func:`make_columns` the views and any target, and
:class:`MultiViewTransform` runs it in Ray Data.

Letters in shape comments: B images, C channels, H/W input size, S output size (L for the
multi-crop local views), T jigsaw tiles of side t.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.config import DataConfig, ViewConfig

_ATTEMPTS = 10  # RandomResizedCrop tries this many boxes before falling back (as torchvision)
_PER_IMAGE_RESIZE_FROM = 64  # views this large are cropped and resized image by image on uint8


def _uniform(gen: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen)


def sample_crop_boxes(b: int, h: int, w: int, scale: tuple[float, float],
                      ratio: tuple[float, float], gen: torch.Generator) -> Tensor:
    """RandomResizedCrop boxes (Szegedy et al. 2015), drawn per image like torchvision's.

    Returns:
        (B, 4) float boxes ``(top, left, height, width)`` in pixels.
    """
    area = h * w * _uniform(gen, (b, _ATTEMPTS), *scale)
    log_r = _uniform(gen, (b, _ATTEMPTS), math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(log_r)
    cw = torch.sqrt(area * aspect).round()  # (B, A)
    ch = torch.sqrt(area / aspect).round()
    fits = (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h)
    first = torch.argmax(fits.int(), dim=1)  # first attempt that fits (0 if none)
    ok = fits.any(dim=1)
    rows = torch.arange(b)
    cw, ch = cw[rows, first], ch[rows, first]
    # Fallback as torchvision: the whole image, cut to the nearest allowed aspect ratio, centred.
    in_ratio = w / h
    if in_ratio < ratio[0]:
        fb_w, fb_h = float(w), float(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        fb_w, fb_h = float(round(h * ratio[1])), float(h)
    else:
        fb_w, fb_h = float(w), float(h)
    cw = torch.where(ok, cw, torch.full_like(cw, fb_w))
    ch = torch.where(ok, ch, torch.full_like(ch, fb_h))
    top = torch.where(ok, torch.floor(torch.rand(b, generator=gen) * (h - ch + 1)),
                      torch.full_like(ch, 0.0) + (h - ch) // 2)
    left = torch.where(ok, torch.floor(torch.rand(b, generator=gen) * (w - cw + 1)),
                       torch.full_like(cw, 0.0) + (w - cw) // 2)
    return torch.stack([top, left, ch, cw], dim=1)


def crop_resize_flip(x: Tensor, boxes: Tensor, flip: Tensor, size: int) -> Tensor:
    """Crop each image to its box, resize to ``size`` (bilinear) and mirror where ``flip``.

    Args:
        x: (B, C, H, W) float images.
        boxes: (B, 4) ``(top, left, height, width)`` in pixels.
        flip: (B,) bool.
        size: output side S.

    Returns:
        (B, C, S, S).
    """
    b, _, h, w = x.shape
    top, left, ch, cw = boxes.unbind(1)
    # Affine map from output coords in [-1, 1] to input coords (align_corners=False convention:
    # -1 and 1 are the outer edges of the first and last pixel).
    theta = torch.zeros(b, 2, 3)
    sign = 1.0 - 2.0 * flip.float()
    theta[:, 0, 0] = cw / w * sign
    theta[:, 0, 2] = (2 * left + cw) / w - 1
    theta[:, 1, 1] = ch / h
    theta[:, 1, 2] = (2 * top + ch) / h - 1
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)  # (B, S, S, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def crop_resize_flip_uint8(x: Tensor, boxes: Tensor, flip: Tensor, size: int) -> Tensor:
    """:func:`crop_resize_flip` on uint8, image by image, as torchvision v2 does.

    Each crop is resized with antialiasing (ATen's vectorised uint8 path), so a large crop
    shrunk to a small view is averaged, not subsampled, and no pixel outside the box leaks in.
    Faster than the batched ``grid_sample`` from about 64 px; below that the per-image loop costs
    more than it saves.

    Args:
        x: (B, C, H, W) uint8 images.
        boxes: (B, 4) ``(top, left, height, width)`` in pixels.
        flip: (B,) bool.
        size: output side S.

    Returns:
        (B, C, S, S) uint8.
    """
    out = torch.empty(x.shape[0], x.shape[1], size, size, dtype=torch.uint8)
    for i, (top, left, h, w) in enumerate(boxes.long().tolist()):
        out[i] = F.interpolate(x[i:i + 1, :, top:top + h, left:left + w], size=(size, size),
                               mode="bilinear", align_corners=False, antialias=True)[0]
    out[flip] = out[flip].flip(-1)
    return out


def grayscale(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 1, H, W) luminance (ITU-R 601-2, as PIL and torchvision)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of each image by ``shift`` (B,) turns, as torchvision's ``adjust_hue``.

    RGB -> HSV, shift, and back by the closed form ``c = v - v*s*clamp(min(k, 4 - k), 0, 1)``
    with ``k = (n + 6h) mod 6`` (n = 5, 3, 1 for R, G, B): five times faster than selecting one
    of six sextant cases per pixel, and equal to it to float rounding.
    """
    if x.shape[1] == 1:
        return x  # no hue in grayscale
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    delta = maxc - torch.minimum(torch.minimum(r, g), b)  # = v * s
    d = delta.clamp(min=1e-8)
    hue = torch.where(maxc == r, (g - b) / d,
                      torch.where(maxc == g, (b - r) / d + 2.0, (r - g) / d + 4.0))
    hue = torch.where(delta > 0, torch.remainder(hue / 6.0, 1.0), torch.zeros_like(hue))
    sextant = torch.remainder(hue + shift.view(-1, 1, 1), 1.0).mul_(6.0)
    out = torch.empty_like(x)
    for c, n in enumerate((5.0, 3.0, 1.0)):
        k = torch.remainder(sextant + n, 6.0)
        torch.sub(maxc, delta * torch.minimum(k, 4.0 - k).clamp_(0, 1), out=out[:, c])
    return out


def color_jitter(x: Tensor, cfg: ViewConfig, gen: torch.Generator) -> Tensor:
    """Brightness, contrast, saturation and hue jitter, applied with ``cfg.jitter_p`` per image.

    Like torchvision's ``ColorJitter`` applied image by image, each image gets its own four
    factors and its own random order of the four operations. Images are grouped by that order,
    so each group is jittered in place as one contiguous batch (no gather/scatter per op).
    """
    b = x.shape[0]
    apply = torch.rand(b, generator=gen) < cfg.jitter_p
    factors = torch.stack([
        _uniform(gen, (b,), 1 - cfg.brightness, 1 + cfg.brightness),
        _uniform(gen, (b,), 1 - cfg.contrast, 1 + cfg.contrast),
        _uniform(gen, (b,), 1 - cfg.saturation, 1 + cfg.saturation),
        _uniform(gen, (b,), -cfg.hue, cfg.hue),
    ], dim=1)  # (B, 4)
    order = torch.argsort(torch.rand(b, 4, generator=gen), dim=1)  # (B, 4): op index per position
    idx = torch.nonzero(apply).flatten()
    if idx.numel() == 0:
        return x
    key = order[idx] @ torch.tensor([64, 16, 4, 1])  # one number per op order
    by_key = torch.argsort(key, stable=True)
    idx = idx[by_key]
    y = x[idx]  # (n, C, H, W), grouped by op order
    _, counts = torch.unique_consecutive(key[by_key], return_counts=True)
    start = 0
    for count in counts.tolist():
        group, f = y[start:start + count], factors[idx[start:start + count]]
        for op in order[idx[start]].tolist():
            _jitter_op_(op, group, f[:, op])
        start += count
    out = x.clone()
    out[idx] = y
    return out


def _jitter_op_(op: int, x: Tensor, f: Tensor) -> None:
    """One jitter operation in place on (n, C, H, W) images with factors (n,)."""
    fv = f.view(-1, 1, 1, 1)
    if op == 0:  # brightness: blend with black
        x.mul_(fv).clamp_(0, 1)
    elif op == 1:  # contrast: blend with the image's mean gray level
        mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        x.mul_(fv).add_((1 - fv) * mean).clamp_(0, 1)
    elif op == 2:  # saturation: blend with the grayscale image
        x.mul_(fv).add_((1 - fv) * grayscale(x)).clamp_(0, 1)
    else:
        x.copy_(_adjust_hue(x, f))


def gaussian_blur(x: Tensor, p: float, sigma: tuple[float, float], gen: torch.Generator) -> Tensor:
    """Gaussian blur with probability ``p`` and sigma ~ U(sigma) per image.

    The kernel covers 10% of the image side, as in SimCLR (appendix A).
    """
    b, c, h, w = x.shape
    apply = torch.rand(b, generator=gen) < p
    sig = _uniform(gen, (b,), *sigma)
    idx = torch.nonzero(apply).flatten()
    if idx.numel() == 0:
        return x
    k = max(3, int(0.1 * min(h, w)) // 2 * 2 + 1)  # odd kernel size
    r = torch.arange(k, dtype=x.dtype) - k // 2
    kern = torch.exp(-(r[None] ** 2) / (2 * sig[idx, None] ** 2))
    kern = kern / kern.sum(dim=1, keepdim=True)  # (n, k)
    n = idx.numel()
    weight = kern.repeat_interleave(c, dim=0)  # (n*C, k): one kernel per image and channel
    y = x[idx].reshape(1, n * c, h, w)
    y = F.pad(y, (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    y = F.conv2d(y, weight.view(n * c, 1, k, 1), groups=n * c)  # vertical pass
    y = F.conv2d(y, weight.view(n * c, 1, 1, k), groups=n * c)  # horizontal pass
    out = x.clone()
    out[idx] = y.view(n, c, h, w)
    return out


def solarize(x: Tensor, p: float, gen: torch.Generator) -> Tensor:
    """Invert the bright pixels of each image with probability ``p`` (BYOL's solarization).

    Per image, as torchvision's ``RandomSolarize(threshold=128)`` on uint8 images (PIL's
    ``ImageOps.solarize``): a pixel of uint8 value v >= 128 becomes 255 - v. The test is made on
    the uint8 value the pixel will be stored as, so the result is exact on the uint8 grid; a
    float threshold would flip pixels a rounding error away from 128 the wrong way.

    Args:
        x: (B, C, H, W) float images in [0, 1].
        p: probability that an image is solarized.
        gen: source of randomness.

    Returns:
        (B, C, H, W) float images in [0, 1]; solarized images lie on the uint8 grid (k / 255).
    """
    apply = torch.rand(x.shape[0], generator=gen) < p
    if not apply.any():
        return x
    v = x[apply].mul(255).round_().clamp_(0, 255)  # the uint8 values these images will hold
    out = x.clone()
    out[apply] = torch.where(v >= 128, 255 - v, v).div_(255)
    return out


def augment(x: Tensor, cfg: ViewConfig, size: int, gen: torch.Generator, *,
            scale: tuple[float, float] | None = None, blur_p: float = 0.0,
            solarize_p: float = 0.0) -> Tensor:
    """One random view of each image (SimCLR's augmentation, appendix A of arXiv:2002.05709).

    Crop, flip, colour jitter and grayscale come from ``cfg``; what differs between the views of
    one image (crop scale, blur and solarize probabilities) is passed explicitly, since ``cfg``
    holds them per view (see :func:`make_views`).

    Args:
        x: (B, C, H, W) uint8 images.
        cfg: augmentation strengths and probabilities shared by all views.
        size: output side S.
        gen: source of randomness (seed it for reproducible views).
        scale: RandomResizedCrop area range; ``None`` = ``cfg.crop_scale`` (a global view).
        blur_p: probability of a Gaussian blur (sigma from ``cfg.blur_sigma``); 0 = never.
        solarize_p: probability of solarization, applied after the blur; 0 = never.

    Returns:
        (B, C, S, S) uint8 views.
    """
    b, _, h, w = x.shape
    boxes = sample_crop_boxes(b, h, w, cfg.crop_scale if scale is None else scale,
                              cfg.crop_ratio, gen)
    flip = torch.rand(b, generator=gen) < cfg.hflip_p
    if size >= _PER_IMAGE_RESIZE_FROM:
        y = crop_resize_flip_uint8(x, boxes, flip, size).float().div_(255)
    else:
        y = crop_resize_flip(x.float().div_(255), boxes, flip, size)
    if cfg.jitter_p > 0:
        y = color_jitter(y, cfg, gen)
    gray = torch.rand(b, generator=gen) < cfg.grayscale_p
    if gray.any():
        y[gray] = grayscale(y[gray]).expand(-1, y.shape[1], -1, -1)
    if blur_p > 0:
        y = gaussian_blur(y, blur_p, cfg.blur_sigma, gen)
    if solarize_p > 0:
        y = solarize(y, solarize_p, gen)
    return y.mul_(255).round_().clamp_(0, 255).to(torch.uint8)


def _global_view(x: Tensor, cfg: DataConfig, gen: torch.Generator, i: int) -> Tensor:
    """The ``i``-th global view: blurred and solarized with that view's probabilities."""
    v = cfg.views
    return augment(x, v, cfg.image_size, gen, blur_p=v.blur_p[i], solarize_p=v.solarize_p[i])


def make_views(x: Tensor, cfg: DataConfig, gen: torch.Generator) -> list[Tensor]:
    """Every view of each image a method trains on, in the order of ``Config.view_sizes``.

    ``global_views`` (2, or 1 for MAE) global views at ``cfg.image_size``, the first with
    ``blur_p[0]`` and ``solarize_p[0]``, the second with ``blur_p[1]`` and ``solarize_p[1]``;
    then ``local_crops`` local views at ``cfg.effective_local_size``, cropped with
    ``local_crop_scale`` and blurred with ``local_blur_p``, never solarized (DINO's
    ``DataAugmentationDINO``). Pretext presets also have a target: see :func:`make_columns`.

    Args:
        x: (B, C, H, W) uint8 images.
        cfg: view size and augmentation settings.
        gen: source of randomness.

    Returns:
        ``global_views + local_crops`` uint8 tensors: (B, C, S, S) global, then (B, C, L, L)
        local views.

    Raises:
        ValueError: if ``cfg.views.pretext`` is set (the views alone would lose their target).
    """
    v = cfg.views
    if v.pretext != "none":
        raise ValueError(f"make_views: data.views.pretext={v.pretext!r} has a target; "
                         f"use make_columns")
    views = [_global_view(x, cfg, gen, i) for i in range(v.global_views)]
    views += [augment(x, v, cfg.effective_local_size, gen, scale=v.local_crop_scale,
                      blur_p=v.local_blur_p) for _ in range(v.local_crops)]
    return views


MONITOR_CHUNK = 128  # images whose monitor views come from one seeded generator


def monitor_views(images: np.ndarray, cfg: DataConfig, views: int, seed: int, start: int,
                  stop: int) -> Tensor:
    """Fixed augmented views of ``images[start:stop]``, the same whichever rows are asked for.

    The label-free monitors embed every image of a fixed sample through ``views`` global views
    (view i with the blur and solarize probabilities of global view i mod ``global_views``), the
    same views every epoch, so their values move only with the model. The views of image j
    depend only on ``seed`` and j (a generator per chunk of ``MONITOR_CHUNK`` images), so
    workers that each make their own rows get the views one process would make for all.

    Args:
        images: (N, H, W, C) uint8, the whole sample.
        cfg: the run's view settings.
        views: q, views per image.
        seed: seeds every chunk's generator.
        start: the first row wanted.
        stop: one past the last row wanted.

    Returns:
        (stop - start, q, C, S, S) uint8.
    """
    v, out = cfg.views, []
    if start >= stop:
        return torch.empty(0, views, images.shape[-1], cfg.image_size, cfg.image_size,
                           dtype=torch.uint8)
    for chunk in range(start // MONITOR_CHUNK, (stop - 1) // MONITOR_CHUNK + 1):
        lo = chunk * MONITOR_CHUNK
        x = torch.from_numpy(np.array(images[lo:lo + MONITOR_CHUNK])).permute(0, 3, 1, 2)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + chunk)
        made = torch.stack([augment(x, v, cfg.image_size, gen,
                                    blur_p=v.blur_p[i % v.global_views],
                                    solarize_p=v.solarize_p[i % v.global_views])
                            for i in range(views)], dim=1)  # (chunk, q, C, S, S)
        out.append(made[max(start - lo, 0):stop - lo])
    return torch.cat(out)


def rotate90(x: Tensor, k: Tensor) -> Tensor:
    """Rotate each image by its own number of quarter turns, counter-clockwise.

    Args:
        x: (B, C, S, S) square images.
        k: (B,) int quarter turns in 0..3 (as ``torch.rot90(img, k, dims=(-2, -1))``).

    Returns:
        (B, C, S, S), same dtype.
    """
    out = x.clone()
    for turns in range(1, 4):
        idx = torch.nonzero(k == turns).flatten()
        if idx.numel():
            out[idx] = torch.rot90(x[idx], turns, dims=(-2, -1))
    return out


def rotation_pretext(x: Tensor, cfg: DataConfig, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """RotNet's input and label (Gidaris et al. 2018, arXiv:1803.07728).

    One view per image, rotated by 0, 90, 180 or 270 degrees drawn per image. RotNet instead
    feeds all four rotations of every image in the same mini-batch; a method that wants that
    can add the other three with :func:`rotate90` (labels ``(k + j) % 4``, no further
    randomness), at four times the cost per image.

    Returns:
        (B, C, S, S) uint8 rotated views and (B,) int64 labels: quarter turns counter-clockwise.
    """
    view = _global_view(x, cfg, gen, 0)
    k = torch.randint(0, 4, (x.shape[0],), generator=gen)
    return rotate90(view, k), k


_PERMUTATION_POOL = 100_000  # candidates sampled when a grid has too many permutations to list


@functools.lru_cache(maxsize=8)
def _permutations(n: int, grid: int, seed: int) -> Tensor:
    t = grid * grid
    gen = torch.Generator().manual_seed(seed)
    if t <= 9:  # 9! = 362880 permutations: list them all
        cand = torch.tensor(list(itertools.permutations(range(t))), dtype=torch.int8)
        cand = cand[torch.randperm(len(cand), generator=gen)]  # the seed breaks the ties
    else:
        cand = torch.argsort(torch.rand(_PERMUTATION_POOL, t, generator=gen), dim=1)
        cand = cand.to(torch.int8)
    chosen = [0]
    d = (cand != cand[0]).sum(dim=1)  # (N,): Hamming distance to the first choice
    closest, total = d, d.clone()
    for _ in range(n - 1):
        # Chosen candidates have closest == 0, so are never picked again.
        j = int(torch.argmax(closest * (n * t + 1) + total))  # max closest, then max total
        chosen.append(j)
        d = (cand != cand[j]).sum(dim=1)
        closest, total = torch.minimum(closest, d), total + d
    return cand[chosen].long()


def jigsaw_permutations(n: int, grid: int = 3, seed: int = 0) -> Tensor:
    """The jigsaw task's classes: ``n`` tile orders far apart in Hamming distance.

    Chosen greedily as in Noroozi & Favaro's Algorithm 1 (arXiv:1603.09246), but each next
    permutation maximises its *minimum* distance to those already chosen (ties: the larger total
    distance), where the paper maximises the total, which can leave two classes 2 tiles apart.
    For 100 permutations of 9 tiles any two differ in at least 6 tiles. The seed orders the
    candidates, so the set is the same on every worker and in every run; it is cached.

    Args:
        n: number of permutations (classes), at most ``(grid * grid)!``.
        grid: tiles per side; grids above 3 choose among 100,000 random permutations.
        seed: fixes the set.

    Returns:
        (n, T) int64, T = grid * grid: row i lists, for each output position, the cell whose
        tile goes there.
    """
    return _permutations(n, grid, seed).clone()


def cut_tiles(x: Tensor, grid: int, tile: int, gen: torch.Generator) -> Tensor:
    """Cut each image into ``grid x grid`` cells and one ``tile``-sided tile from each cell.

    Each tile sits at a random place in its cell, drawn per image and tile, so neighbouring
    tiles are separated by a random gap: Noroozi & Favaro take a 64 px tile in a 75 px cell, so
    the network cannot solve the puzzle by continuing edges and textures across tiles. The
    cells cover the centre ``grid * (S // grid)`` pixels.

    Args:
        x: (B, C, S, S) images.
        grid: cells per side.
        tile: tile side t, at most ``S // grid``.
        gen: source of randomness.

    Returns:
        (B, T, C, t, t), T = grid * grid, cells in row-major order.
    """
    b, _, h, w = x.shape
    t = grid * grid
    cell_h, cell_w = h // grid, w // grid
    dy = torch.randint(0, cell_h - tile + 1, (b, t), generator=gen)
    dx = torch.randint(0, cell_w - tile + 1, (b, t), generator=gen)
    cells = torch.arange(t)
    top = (h - grid * cell_h) // 2 + cells // grid * cell_h + dy  # (B, T)
    left = (w - grid * cell_w) // 2 + cells % grid * cell_w + dx
    r = torch.arange(tile)
    rows = (top[..., None] + r)[..., :, None]  # (B, T, t, 1)
    cols = (left[..., None] + r)[..., None, :]  # (B, T, 1, t)
    img = torch.arange(b).view(b, 1, 1, 1)
    tiles = x.permute(0, 2, 3, 1)[img, rows, cols]  # (B, T, t, t, C)
    return tiles.permute(0, 1, 4, 2, 3).contiguous()  # (B, T, C, t, t)


def jigsaw_pretext(x: Tensor, cfg: DataConfig, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """The jigsaw puzzle's input and label (Noroozi & Favaro 2016, arXiv:1603.09246).

    One view per image, cut into ``jigsaw_grid ** 2`` tiles (:func:`cut_tiles`) and shuffled
    by one permutation of :func:`jigsaw_permutations`, drawn per image. Output position p shows
    the tile of cell ``perms[label, p]``, so ``tiles[perms[label].argsort()]`` puts them back.
    The paper also normalises each tile on its own: a float step left to the model.

    Returns:
        (B, T, C, t, t) uint8 tiles, t = ``cfg.jigsaw_tile_size``, and (B,) int64 labels.
    """
    v = cfg.views
    view = _global_view(x, cfg, gen, 0)
    perms = jigsaw_permutations(v.jigsaw_permutations, v.jigsaw_grid)  # (N, T)
    label = torch.randint(0, len(perms), (x.shape[0],), generator=gen)
    tiles = cut_tiles(view, v.jigsaw_grid, cfg.jigsaw_tile_size, gen)  # (B, T, C, t, t)
    return tiles[torch.arange(x.shape[0])[:, None], perms[label]], label


def colorization_pretext(x: Tensor, cfg: DataConfig,
                         gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Colorization's input and target (Zhang et al. 2016, arXiv:1603.08511).

    The target is a colour view; the input is its luminance (ITU-R 601-2, as :func:`grayscale`),
    computed from the uint8 target so the two agree exactly. The paper predicts the ab channels
    of Lab from L: converting the RGB target is float work for the model.

    Returns:
        (B, 1, S, S) uint8 luminance and (B, 3, S, S) uint8 RGB target.
    """
    if x.shape[1] != 3:
        raise ValueError(f"colorization needs RGB images (data.channels=3), got {x.shape[1]} "
                         f"channel(s)")
    target = _global_view(x, cfg, gen, 0)
    gray = grayscale(target.float()).round_().clamp_(0, 255).to(torch.uint8)
    return gray, target


PretextFn = Callable[[Tensor, DataConfig, torch.Generator], tuple[Tensor, Tensor]]
# Each pretext task, and the column its target goes to beside "view0".
PRETEXTS: dict[str, tuple[PretextFn, str]] = {
    "rotation": (rotation_pretext, "rotation"),
    "jigsaw": (jigsaw_pretext, "jigsaw"),
    "colorization": (colorization_pretext, "target"),
}


def make_columns(x: Tensor, cfg: DataConfig, gen: torch.Generator) -> dict[str, Tensor]:
    """The columns a method trains on: ``view0`` .. ``view{n-1}`` and any pretext target.

    Without a pretext, the views of :func:`make_views`. With ``cfg.views.pretext``, one
    ``view0`` and the target: ``rotation`` (B,) int64, ``jigsaw`` (B,) int64 (``view0`` holds
    the tiles, (B, T, C, t, t)) or ``target`` (B, 3, S, S) uint8 (``view0`` is (B, 1, S, S)).

    Args:
        x: (B, C, H, W) uint8 images.
        cfg: view size and augmentation settings.
        gen: source of randomness.
    """
    if cfg.views.pretext == "none":
        return {f"view{i}": v for i, v in enumerate(make_views(x, cfg, gen))}
    pretext, column = PRETEXTS[cfg.views.pretext]
    view, target = pretext(x, cfg, gen)
    return {"view0": view, column: target}


def views_of_batch(batch: dict[str, np.ndarray], cfg: DataConfig, gen: torch.Generator
                   ) -> dict[str, np.ndarray]:
    """``{"image": (B, H, W, C) uint8}`` -> the columns of :func:`make_columns` as arrays.

    ``view0`` .. ``view{n-1}``, n = ``global_views + local_crops``: (B, C, S, S) uint8 global
    views, then (B, C, L, L) local crops, ready for the model (the encoder normalises); or, for a
    pretext preset, ``view0`` and its target column. ``label`` is passed through when present.
    """
    # A copy: Ray hands out read-only views of the object store, and torch warns on those.
    x = torch.from_numpy(np.array(batch["image"], copy=True)).permute(0, 3, 1, 2)  # (B,C,H,W)
    out = {k: v.numpy() for k, v in make_columns(x, cfg, gen).items()}
    return {**out, **_passed_through(batch)}


def _passed_through(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The row's ``label`` (the online probe) and ``index`` (DeepCluster's pseudo-label key)."""
    return {k: batch[k] for k in ("label", "index") if k in batch}


def whole_images(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Ray Data task function: un-augmented images at the view size, for reading the whole set.

    DeepCluster clusters these (as the paper's feature pass, no random crop or flip): the
    decoded image resized to ``size`` (bilinear, antialiased), as evaluation sees it.

    Returns:
        ``{"image": (B, C, S, S) uint8}`` with the batch's ``index`` (and ``label``).
    """
    torch.set_num_threads(1)
    x = torch.from_numpy(np.array(batch["image"], copy=True)).permute(0, 3, 1, 2)  # (B,C,H,W)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True).round_().clamp_(0, 255).to(torch.uint8)
    return {"image": x.contiguous().numpy(), **_passed_through(batch)}


def augment_batch(batch: dict[str, np.ndarray], cfg: DataConfig) -> dict[str, np.ndarray]:
    """Ray Data task function: :func:`views_of_batch` with fresh OS randomness per call.

    A task, not an actor: Ray Data builds a new actor pool on every execution, i.e. every
    epoch, which cost 3-6 s per epoch here (a process, torch imports); tasks reuse warm
    worker processes (``BENCHMARKS.md``, data throughput).
    """
    torch.set_num_threads(1)  # one core per task; Ray schedules the tasks
    gen = torch.Generator()
    gen.manual_seed(int(np.random.SeedSequence().generate_state(1)[0]))
    return views_of_batch(batch, cfg, gen)


class MultiViewTransform:
    """:func:`views_of_batch` with one seeded generator across calls (reproducible views).

    Args:
        cfg: view size and augmentation settings.
        seed: seeds the generator; ``None`` draws one from the OS.
    """

    def __init__(self, cfg: DataConfig, seed: int | None = None) -> None:
        torch.set_num_threads(1)
        self.cfg = cfg
        self.gen = torch.Generator()
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self.gen.manual_seed(seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Views of a batch of images."""
        return views_of_batch(batch, self.cfg, self.gen)
