"""Per-image random augmentation ops on uint8 batches, vectorised over the batch.

Every random parameter (crop box, flip, jitter factors and their order, grayscale, blur sigma,
solarization) is drawn independently for each image. Batched torchvision v2 calls draw one set
of parameters per *batch*, which silently weakens SSL augmentation; looping PIL calls per image
is slow. Here one ``grid_sample`` crops, resizes and flips the whole batch with per-sample boxes.

The ops: :func:`sample_crop_boxes` and :func:`crop_resize_flip` (or
:func:`crop_resize_flip_uint8` for larger views), :func:`color_jitter`, :func:`grayscale`,
:func:`gaussian_blur` and :func:`solarize`. :func:`augment` composes them into one view of each
image (SimCLR's recipe) and :func:`global_view` makes a run's i-th global view. Which views a
method trains on is :mod:`raysl.data.views`; the pretext tasks built on a view are
:mod:`raysl.data.pretext`.

Letters in shape comments: B images, C channels, H/W input size, S output size.
"""

from __future__ import annotations

import math

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
    holds them per view (see :func:`raysl.data.views.make_views`).

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


def global_view(x: Tensor, cfg: DataConfig, gen: torch.Generator, i: int) -> Tensor:
    """The ``i``-th global view: blurred and solarized with that view's probabilities."""
    v = cfg.views
    return augment(x, v, cfg.image_size, gen, blur_p=v.blur_p[i], solarize_p=v.solarize_p[i])

