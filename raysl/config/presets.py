"""The augmentation recipe of each method family, as published (``data.preset``)."""

from __future__ import annotations

from typing import Any

from raysl.config.views import ViewConfig

_BYOL_JITTER: dict[str, Any] = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2,
                                "hue": 0.1}
_NO_COLOUR: dict[str, Any] = {"jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": (0.0, 0.0)}


def _crop_of_256(side: int) -> tuple[float, float]:
    """The RandomResizedCrop scale of ``Resize(256)`` then ``RandomCrop(side)``."""
    # data.decode_size is 8/7 of the view size by default: 256 for 224, as these recipes.
    area = (side / 256) ** 2
    return (area, area)

# The augmentation recipe of each method family, as published. A method names its default in
# ``SSLMethod.default_preset``; ``data.preset`` picks another; ``data.views.*`` overrides any field.
VIEW_PRESETS: dict[str, ViewConfig] = {
    # SimCLR, appendix A of arXiv:2002.05709: jitter strength 1.0, blur on both views.
    "simclr": ViewConfig(),
    # MoCo v2 (arXiv:2003.04297) and SimSiam: milder crops and jitter, blur on both views.
    "moco_v2": ViewConfig(crop_scale=(0.2, 1.0), brightness=0.4, contrast=0.4, saturation=0.4,
                          hue=0.1),
    # BYOL table 6 (arXiv:2006.07733), also used by MoCo v3, Barlow Twins and VICReg.
    "byol": ViewConfig(**_BYOL_JITTER, blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2)),
    # SwAV (arXiv:2006.09882): 2 global crops of scale (0.14, 1) + 6 local crops of (0.05, 0.14).
    "swav": ViewConfig(crop_scale=(0.14, 1.0), local_crops=6, local_crop_scale=(0.05, 0.14)),
    # DINO (arXiv:2104.14294): BYOL's colour recipe, 2 global (0.4, 1) + 8 local crops (0.05, 0.4),
    # the reference main_dino.py's defaults.
    "dino": ViewConfig(**_BYOL_JITTER, crop_scale=(0.4, 1.0), blur_p=(1.0, 0.1),
                       solarize_p=(0.0, 0.2), local_crops=8, local_crop_scale=(0.05, 0.4),
                       local_blur_p=0.5),
    # MAE (arXiv:2111.06377, appendix A.1): one view, RandomResizedCrop (0.2, 1) and a flip, no
    # colour jitter or blur; masking happens in the model. (Bilinear where the paper is bicubic.)
    "mae": ViewConfig(crop_scale=(0.2, 1.0), **_NO_COLOUR, global_views=1),
    # DeepCluster (arXiv:1807.05520, its main.py): one view, RandomResizedCrop (0.08, 1) and a
    # flip; the paper's Sobel filter is not applied (see methods/deepcluster.py).
    "deepcluster": ViewConfig(**_NO_COLOUR, global_views=1),
    # RotNet (Gidaris et al. 2018, arXiv:1803.07728): a 224 crop of the 256 px image, a flip, and
    # 0/90/180/270 degrees drawn per image (the rotation index is the label).
    "rotation": ViewConfig(crop_scale=_crop_of_256(224), crop_ratio=(1.0, 1.0), **_NO_COLOUR,
                           global_views=1, pretext="rotation"),
    # Jigsaw (Noroozi & Favaro 2016, arXiv:1603.09246): a 225 crop of the 256 px image, a 3 x 3
    # grid, one tile at a random place in each cell (64 of 75 px), shuffled by one of a fixed set
    # of permutations far apart in Hamming distance (the permutation index is the label).
    "jigsaw": ViewConfig(crop_scale=_crop_of_256(225), crop_ratio=(1.0, 1.0), hflip_p=0.0,
                         **_NO_COLOUR, global_views=1, pretext="jigsaw"),
    # Colorization (Zhang et al. 2016, arXiv:1603.08511; their training prototxt: a 176 crop of
    # the 256 px image, mirrored): the luminance is the input, the colour crop the target.
    "colorization": ViewConfig(crop_scale=_crop_of_256(176), crop_ratio=(1.0, 1.0),
                               **_NO_COLOUR, global_views=1, pretext="colorization"),
}

