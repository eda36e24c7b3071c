"""A small labeled dataset of drawn shapes: the fallback when no real dataset is installed.

Eight classes of outlines and solids at random positions, sizes and gray levels, with noise. It is
easy enough for raw pixels to do poorly (positions vary) and for a learned encoder to do well.
"""

from __future__ import annotations

import numpy as np

CLASSES = ("disk", "square", "triangle", "plus", "ring", "horizontal bars", "vertical bars",
           "diagonal cross")


# The hue (in turns of the colour wheel) of each class's foreground in colour_shapes: the colour
# of a shape can be told from its form, as a colorization model must learn (grass is green).
CLASS_HUES = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)


def colour_shapes(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`shapes` in colour: (N, size, size, 3) uint8 and labels (N,) int64.

    Each foreground takes its class's hue (``CLASS_HUES``, jittered by up to 1/32 of a turn)
    at a random saturation; the background a random dim colour. The gray levels of
    :func:`shapes` become the value (brightness), so the luminance still shows the form.
    """
    gray, labels = shapes(n, size, seed)
    rng = np.random.default_rng(seed + 1)
    value = gray[..., 0].astype(np.float32) / 255.0  # (N, S, S)
    fg = value >= value.mean(axis=(1, 2), keepdims=True)
    hue_fg = np.asarray(CLASS_HUES)[labels] + rng.uniform(-1 / 32, 1 / 32, n)
    hue = np.where(fg, hue_fg[:, None, None], rng.uniform(0, 1, n)[:, None, None])
    sat = np.where(fg, rng.uniform(0.6, 1.0, n)[:, None, None],
                   rng.uniform(0.2, 0.6, n)[:, None, None])
    return (_hsv_to_rgb(hue % 1.0, sat, value) * 255).round().astype(np.uint8), labels


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV in [0, 1] (arrays of one shape) -> RGB (..., 3) in [0, 1] (the closed form)."""
    out = []
    for n in (5.0, 3.0, 1.0):
        k = (n + 6.0 * h) % 6.0
        out.append(v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
    return np.stack(out, axis=-1)


def shapes(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (N, size, size, 1) uint8 and labels (N,) int64, balanced over 8 classes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((n, size, size, 1), np.uint8)
    for i, label in enumerate(labels):
        r = rng.uniform(0.18, 0.32) * size
        cy, cx = rng.uniform(r, size - r, 2)
        dy, dx = (yy - cy) / r, (xx - cx) / r
        mask = _mask(int(label), dy, dx)
        fg, bg = rng.uniform(150, 255), rng.uniform(0, 90)
        img = np.where(mask, fg, bg) + rng.normal(0, 12, (size, size))
        images[i, ..., 0] = np.clip(img, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def _mask(label: int, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    rad = np.hypot(dy, dx)
    inside = (np.abs(dy) <= 1) & (np.abs(dx) <= 1)
    masks = (
        rad <= 1,  # disk
        inside & ((np.abs(dy) > 0.7) | (np.abs(dx) > 0.7)),  # square outline
        (dy <= 1) & (dy >= 2 * np.abs(dx) - 1),  # triangle
        inside & ((np.abs(dy) < 0.3) | (np.abs(dx) < 0.3)),  # plus
        (rad <= 1) & (rad >= 0.6),  # ring
        inside & (np.floor((dy + 1) * 2.5) % 2 == 0),  # horizontal bars
        inside & (np.floor((dx + 1) * 2.5) % 2 == 0),  # vertical bars
        inside & ((np.abs(dy - dx) < 0.3) | (np.abs(dy + dx) < 0.3)),  # diagonal cross
    )
    mask: np.ndarray = masks[label]
    return mask
