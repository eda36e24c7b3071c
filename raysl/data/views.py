"""Per-image random view augmentation on uint8 batches, vectorised over the batch.

Every random parameter (crop box, flip, jitter factors and their order, grayscale, blur sigma,
solarization) is drawn independently for each image. Batched torchvision v2 calls draw one set of
parameters per *batch*, which silently weakens SSL augmentation; looping PIL calls per image is
slow. Here one ``grid_sample`` crops, resizes and flips the whole batch with per-sample boxes.

A method trains on two global views, which may be augmented asymmetrically (BYOL and DINO blur
the first view more and solarize only the second), then optionally on smaller multi-crop local
views (SwAV, DINO); :func:`make_views` builds them all.

Letters in shape comments: B images, C channels, H/W input size, S output size (L for the
multi-crop local views).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from raysl.config import DataConfig, ViewConfig

_ATTEMPTS = 10  # RandomResizedCrop tries this many boxes before falling back (as torchvision)


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


def grayscale(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 1, H, W) luminance (ITU-R 601-2, as PIL and torchvision)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """Per-image blend ``factor * x + (1 - factor) * other``, clamped to [0, 1]; factor: (B,)."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def _rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-8), torch.zeros_like(maxc))
    d = delta.clamp(min=1e-8)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(delta > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    return torch.stack([hue, s, maxc], dim=1)


def _hsv_to_rgb(x: Tensor) -> Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(x)
    for k, (r, g, b) in enumerate(choices):
        m = (i == k).unsqueeze(1)
        out = torch.where(m, torch.stack([r, g, b], dim=1), out)
    return out


def _adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x  # no hue in grayscale
    hsv = _rgb_to_hsv(x)
    hsv[:, 0] = (hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0
    return _hsv_to_rgb(hsv)


def color_jitter(x: Tensor, cfg: ViewConfig, gen: torch.Generator) -> Tensor:
    """Brightness, contrast, saturation and hue jitter, applied with ``cfg.jitter_p`` per image.

    Like torchvision's ``ColorJitter`` applied image by image, each image gets its own four
    factors and its own random order of the four operations.
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
    x = x.clone()
    for pos in range(4):
        for op in range(4):
            idx = torch.nonzero(apply & (order[:, pos] == op)).flatten()
            if idx.numel():
                x[idx] = _jitter_op(op, x[idx], factors[idx, op])
    return x


def _jitter_op(op: int, x: Tensor, f: Tensor) -> Tensor:
    if op == 0:  # brightness: blend with black
        return _blend(x, torch.zeros_like(x), f)
    if op == 1:  # contrast: blend with the image's mean gray level
        return _blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), f)
    if op == 2:  # saturation: blend with the grayscale image
        return _blend(x, grayscale(x).expand_as(x), f)
    return _adjust_hue(x, f)


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


def make_views(x: Tensor, cfg: DataConfig, gen: torch.Generator) -> list[Tensor]:
    """Every view of each image a method trains on, in the order of ``Config.view_sizes``.

    Two global views at ``cfg.image_size``, the first with ``blur_p[0]`` and ``solarize_p[0]``,
    the second with ``blur_p[1]`` and ``solarize_p[1]``; then ``local_crops`` local views at
    ``cfg.effective_local_size``, cropped with ``local_crop_scale`` and blurred with
    ``local_blur_p``, never solarized (DINO's ``DataAugmentationDINO``).

    Args:
        x: (B, C, H, W) uint8 images.
        cfg: view size and augmentation settings.
        gen: source of randomness.

    Returns:
        ``2 + local_crops`` uint8 tensors: (B, C, S, S) global, then (B, C, L, L) local views.
    """
    v = cfg.views
    views = [augment(x, v, cfg.image_size, gen, blur_p=v.blur_p[i], solarize_p=v.solarize_p[i])
             for i in range(2)]
    views += [augment(x, v, cfg.effective_local_size, gen, scale=v.local_crop_scale,
                      blur_p=v.local_blur_p) for _ in range(v.local_crops)]
    return views


class MultiViewTransform:
    """Ray Data ``map_batches`` callable: ``{"image": (B, H, W, C)}`` -> ``{"view0": ..., ...}``.

    Emits ``view0`` .. ``view{n-1}``, n = 2 + ``cfg.views.local_crops``, as :func:`make_views`
    (and ``label`` when the images have one):
    (B, C, S, S) uint8 global views, then (B, C, L, L) local crops, ready for the model; the
    train worker only moves them to the device (the encoder normalises). Built once per
    augmentation actor; the generator advances across batches so every epoch re-draws the views.

    Args:
        cfg: view size and augmentation settings.
        seed: seeds this actor's generator; ``None`` draws one from the OS.
    """

    def __init__(self, cfg: DataConfig, seed: int | None = None) -> None:
        torch.set_num_threads(1)  # one core per augmentation actor; Ray schedules the actors
        self.cfg = cfg
        self.gen = torch.Generator()
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self.gen.manual_seed(seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Views of a batch of images."""
        # A copy: Ray hands out read-only views of the object store, and torch warns on those.
        x = torch.from_numpy(np.array(batch["image"], copy=True)).permute(0, 3, 1, 2)  # (B,C,H,W)
        out = {f"view{i}": v.numpy() for i, v in enumerate(make_views(x, self.cfg, self.gen))}
        if "label" in batch:  # kept for the online probe (eval.online_probe)
            out["label"] = batch["label"]
        return out
