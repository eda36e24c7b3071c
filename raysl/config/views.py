"""How one image becomes views: per-image random augmentation (``data.views``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from raysl.errors import check

Pretext = Literal["none", "rotation", "jigsaw", "colorization"]


@dataclass(frozen=True)
class ViewConfig:
    """SimCLR-style view augmentation, drawn independently per image.

    Defaults follow SimCLR's ImageNet recipe (Chen et al. 2020, appendix A): colour-jitter
    strength 1.0 means (0.8, 0.8, 0.8, 0.2); the CIFAR recipe uses strength 0.5 and no blur.
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)  # CIFAR-sized inputs: 0.2 keeps objects visible
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2  # at most 0.5 (a half turn of the colour wheel)
    grayscale_p: float = 0.2
    # Blur and solarize probabilities of the first and second view (BYOL and DINO make the two
    # views asymmetric: (1.0, 0.1) and (0.0, 0.2)). Blur 0 for 32 px inputs, where it destroys
    # the little detail there is.
    blur_p: tuple[float, float] = (0.5, 0.5)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: tuple[float, float] = (0.0, 0.0)
    # Multi-crop (SwAV, DINO): extra small views of the same image, at a lower resolution.
    local_crops: int = 0
    local_size: int = 0  # side of the local views; 0 = 96/224 of data.image_size, as the papers
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    local_blur_p: float = 0.5
    # Views per image at data.image_size: 2 for the joint-embedding methods, 1 for MAE (it masks
    # inside the model) and for the pretext tasks (one view and its target).
    global_views: int = 2
    # A pretext target emitted beside the one view (raysl/data/views.py): "rotation" (RotNet),
    # "jigsaw" (the view is cut into shuffled tiles) or "colorization" (gray view, colour target).
    pretext: Pretext = "none"
    jigsaw_grid: int = 3  # tiles per side, 2-4 (3 x 3 as Noroozi & Favaro)
    # Classes of the jigsaw task: a fixed seeded set far apart in Hamming distance. Each
    # augmentation worker process builds it once: ~1 s for 100, ~5 s for 1000 on an idle core.
    jigsaw_permutations: int = 100

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        check(0 < lo <= hi <= 1, "crop_scale", self.crop_scale, "needs 0 < min <= max <= 1")
        lo, hi = self.crop_ratio
        check(0 < lo <= hi, "crop_ratio", self.crop_ratio, "needs 0 < min <= max")
        for name in ("hflip_p", "jitter_p", "grayscale_p", "local_blur_p"):
            p = getattr(self, name)
            check(0 <= p <= 1, name, p, "is a probability in [0, 1]")
        for name in ("blur_p", "solarize_p"):
            pair = getattr(self, name)
            check(all(0 <= p <= 1 for p in pair), name, pair,
                  "is a pair of probabilities in [0, 1] (first view, second view)")
        check(self.local_crops >= 0, "local_crops", self.local_crops, ">= 0 (0 = no multi-crop)")
        check(self.local_size >= 0, "local_size", self.local_size, ">= 0 (0 = auto)")
        lo, hi = self.local_crop_scale
        check(0 < lo <= hi <= 1, "local_crop_scale", self.local_crop_scale,
              "needs 0 < min <= max <= 1")
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            check(0 <= v < 1, name, v, "is a jitter strength in [0, 1)")
        check(0 <= self.hue <= 0.5, "hue", self.hue, "is a hue shift in [0, 0.5]")
        lo, hi = self.blur_sigma
        check(0 < lo <= hi, "blur_sigma", self.blur_sigma, "needs 0 < min <= max")
        check(self.global_views in (1, 2), "global_views", self.global_views,
              "must be 1 or 2 (blur_p and solarize_p hold one value per global view)")
        if self.pretext != "none":
            check(self.global_views == 1, "global_views", self.global_views,
                  f"must be 1 with pretext={self.pretext!r} (one view and its target)")
            check(self.local_crops == 0, "local_crops", self.local_crops,
                  f"must be 0 with pretext={self.pretext!r}")
        check(2 <= self.jigsaw_grid <= 4, "jigsaw_grid", self.jigsaw_grid,
              "must be in [2, 4] tiles per side")
        most = min(1000, math.factorial(self.jigsaw_grid ** 2))
        check(2 <= self.jigsaw_permutations <= most, "jigsaw_permutations",
              self.jigsaw_permutations,
              f"must be in [2, {most}] for a {self.jigsaw_grid}x{self.jigsaw_grid} grid")

