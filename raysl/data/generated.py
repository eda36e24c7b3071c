"""A small labeled dataset of drawn shapes: the fallback when no real dataset is installed.

Eight classes of outlines and solids at random positions, sizes and gray levels, with noise. It is
easy enough for raw pixels to do poorly (positions vary) and for a learned encoder to do well.
"""

from __future__ import annotations

import numpy as np

CLASSES = ("disk", "square", "triangle", "plus", "ring", "horizontal bars", "vertical bars",
           "diagonal cross")


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
