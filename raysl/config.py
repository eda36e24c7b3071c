"""Typed, frozen configuration: the only place where defaults live.

A run is described by one :class:`Config`. YAML files hold *overrides only*; ``--set a.b=value``
overrides on the command line are applied on top. :func:`Config.from_dict` rejects unknown keys,
wrong types and out-of-range values with a :class:`ConfigError` naming the field, the value and
what was expected.

Method hyperparameters live in ``method``; its class depends on ``method.name`` and is looked up in
the method registry, so a new method brings its own config dataclass (``raysl/methods/<name>.py``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import yaml

from raysl.schedules import cosine

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist


class ConfigError(ValueError):
    """A config value a user wrote is not acceptable.

    Attributes:
        field: dotted path of the offending field, e.g. ``optim.base_lr``.
        value: the value that was given.
        expected: what would have been accepted.
    """

    def __init__(self, field: str, value: Any, expected: str, source: str | None = None) -> None:
        self.field, self.value, self.expected, self.source = field, value, expected, source
        where = f" (from {source})" if source else ""
        super().__init__(f"{field}={value!r}: {expected}{where}")

    def under(self, prefix: str) -> ConfigError:
        """The same error with ``prefix.`` prepended to the field path."""
        return ConfigError(f"{prefix}.{self.field}", self.value, self.expected, self.source)


def check(ok: bool, field: str, value: Any, expected: str) -> None:
    """Raise ``ConfigError(field, value, expected)`` unless ``ok``."""
    if not ok:
        raise ConfigError(field, value, expected)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------

SourceFormat = Literal["auto", "folder", "files", "parquet", "idx", "npz", "npy", "cifar",
                       "generated"]


@dataclass(frozen=True)
class SourceConfig:
    """Where images (and optional labels) come from: a local path or an object-store URI.

    ``path`` may be ``s3://``, ``gs://`` or ``abfs://`` (pyarrow filesystems). Formats:

    - ``folder``: a directory tree of image files (JPEG, PNG, WebP, BMP, TIFF, GIF); class
      sub-folders become labels when every file sits in one.
    - ``files``: a list of image paths or URIs, one per line (``.txt``), or a ``path`` column
      with an optional ``label`` column (``.csv``, ``.parquet``); relative paths are relative
      to the list.
    - ``parquet``: a ``.parquet`` file or a directory of them with an encoded-image column
      (bytes, or a struct with ``bytes`` as Hugging Face datasets write).
    - ``idx`` (MNIST, Fashion-MNIST), ``npz``, ``npy``, ``cifar`` (torchvision's
      ``cifar-10-batches-py`` / ``cifar-100-python`` folders, read from disk, never downloaded).
    - ``generated``: a small labeled shapes dataset (no files).

    ``auto`` picks the format from the path: its extension, IDX or CIFAR files in a directory,
    parquet files in a directory, otherwise a folder of images.
    """

    format: SourceFormat = "auto"
    path: str = FASHION_MNIST_DIR
    split: str = "train"  # IDX: "train" or "t10k"/"test"; CIFAR: "train" or "test"
    limit: int = 0  # use at most this many images (a seeded random subset); 0 = all
    endpoint: str = ""  # S3-compatible endpoint, e.g. http://minio:9000; empty = AWS_ENDPOINT_URL
    image_column: str = ""  # parquet: the encoded-image column; empty = image/img/bytes/...
    label_column: str = ""  # parquet and file lists: the label column; empty = "label" if any

    def __post_init__(self) -> None:
        check(self.limit >= 0, "limit", self.limit, "must be >= 0 (0 = all images)")
        check(not self.endpoint or "://" in self.endpoint, "endpoint", self.endpoint,
              "a URL with its scheme, e.g. http://127.0.0.1:9000")

    @property
    def is_set(self) -> bool:
        """Whether this names any data (eval.query may be left empty to hold out from the bank)."""
        return self.format == "generated" or bool(self.path)


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


@dataclass(frozen=True)
class DataConfig:
    """Unlabeled pretraining data and how it is turned into views."""

    source: SourceConfig = field(default_factory=SourceConfig)
    image_size: int = 224  # side of the square views fed to the encoder
    decode_size: int = 0  # image files: shorter side resized to this, centre kept; 0 = 8/7 size
    channels: Literal[1, 3] = 3  # images are converted to this many channels (1 = grayscale)
    batch_size_global: int = 256  # images per optimizer step across ALL workers
    preset: str = ""  # augmentation recipe (VIEW_PRESETS); empty = the method's own
    views: ViewConfig = field(default_factory=ViewConfig)  # the preset, with any overrides
    augment_batch_size: int = 64  # images per Ray Data map_batches call on the CPU workers
    augment_cpus: float = 0.5  # logical CPUs each augmentation task reserves
    shuffle_buffer: int = 1024  # local shuffle buffer (rows) on each train worker; 0 = off
    # Bad image files are skipped, counted and reported ("skip"), or stop the run ("fail"). Even
    # when skipping, more than max_bad_fraction of bad files stops it: a wrong bucket must not
    # silently train on what little decodes.
    on_error: Literal["skip", "fail"] = "skip"
    max_bad_fraction: float = 0.1
    max_image_pixels: int = 100_000_000  # larger images are skipped (too_large): 10000 x 10000
    min_image_side: int = 8  # images with a shorter side are skipped (too_small)

    def __post_init__(self) -> None:
        check(8 <= self.image_size <= 1024, "image_size", self.image_size, "must be in [8, 1024]")
        check(self.preset in ("", *VIEW_PRESETS), "preset", self.preset,
              f"must be empty (the method's own) or one of {sorted(VIEW_PRESETS)}")
        check(self.views.pretext != "colorization" or self.channels == 3, "channels",
              self.channels, "must be 3 with views.pretext='colorization' (the target is the "
              "colour image)")
        check(self.decode_size == 0 or self.decode_size >= self.image_size, "decode_size",
              self.decode_size, f"must be 0 (auto) or >= image_size ({self.image_size})")
        check(self.batch_size_global >= 2, "batch_size_global", self.batch_size_global,
              "must be >= 2 (contrastive losses need negatives)")
        check(self.augment_batch_size >= 1, "augment_batch_size", self.augment_batch_size, ">= 1")
        check(self.augment_cpus > 0, "augment_cpus", self.augment_cpus, "must be > 0")
        check(self.shuffle_buffer >= 0, "shuffle_buffer", self.shuffle_buffer, ">= 0 (0 = off)")
        check(0 <= self.max_bad_fraction <= 1, "max_bad_fraction", self.max_bad_fraction,
              "is a fraction in [0, 1] of the files that may be bad before the run stops")
        check(self.max_image_pixels >= 1, "max_image_pixels", self.max_image_pixels, ">= 1")
        check(self.min_image_side >= 1, "min_image_side", self.min_image_side, ">= 1")

    @property
    def effective_local_size(self) -> int:
        """Side of the multi-crop local views: 96/224 of the global size unless set."""
        return self.views.local_size or max(8, round(self.image_size * 96 / 224))

    @property
    def jigsaw_tile_size(self) -> int:
        """Side of a jigsaw tile: 64/75 of a grid cell (Noroozi & Favaro's 64 px in 75 px cells).

        At most the cell side minus one, so every tile can move inside its cell.
        """
        cell = self.image_size // self.views.jigsaw_grid
        return max(1, min(cell - 1, round(cell * 64 / 75)))

    @property
    def effective_decode_size(self) -> int:
        """Decode size actually used: 8/7 of the view size unless set (256 for 224, as ImageNet)."""
        return self.decode_size or round(self.image_size * 8 / 7)


Backbone = Literal["resnet18", "resnet34", "resnet50", "vit_tiny", "vit_small"]

# ViT sizes: (embedding dim, blocks) as in DeiT and DINO; heads = one per 64 channels.
VIT_SIZES: dict[str, tuple[int, int]] = {"vit_tiny": (192, 12), "vit_small": (384, 12)}
VIT_HEAD_DIM = 64


@dataclass(frozen=True)
class ModelConfig:
    """The encoder that is pretrained and exported: a ResNet (torchvision) or a ViT."""

    backbone: Backbone = "resnet18"
    # ResNet: channels of the first stage (64 = torchvision's; 16 runs on a laptop).
    # ViT: the embedding dimension. 0 = the standard size (64, or 192 / 384 for ViT-Tiny/Small).
    width: int = 0
    small_stem: bool = False  # ResNet only: 3x3 stride-1 stem, no max-pool, for inputs <= 64 px
    depth: int = 0  # ViT only: number of blocks; 0 = 12
    patch_size: int = 0  # ViT only: patch side; 0 = 16 (use 4 for 28-32 px images)
    drop_path_rate: float = 0.0  # ViT only: stochastic depth of the last block (DINO ViT-S: 0.1)

    def __post_init__(self) -> None:
        if self.is_vit:
            check(not self.small_stem, "small_stem", self.small_stem,
                  f"is a ResNet option; {self.backbone} takes model.patch_size for small images")
            check(self.depth >= 0, "depth", self.depth, ">= 0 (0 = 12 blocks)")
            check(self.patch_size >= 0, "patch_size", self.patch_size, ">= 0 (0 = 16)")
            check(0 <= self.drop_path_rate < 1, "drop_path_rate", self.drop_path_rate,
                  "a probability in [0, 1) (0 = off; DINO's ViT-S uses 0.1)")
            w = self.effective_width
            check(w % self.heads == 0, "width", self.width,
                  f"a ViT embedding dim divisible by its {self.heads} heads (one per 64)")
        else:
            check(self.width == 0 or (self.width >= 4 and self.width % 4 == 0), "width",
                  self.width, "must be 0 (standard: 64) or a multiple of 4 and >= 4")
            for name in ("depth", "patch_size", "drop_path_rate"):
                check(getattr(self, name) == 0, name, getattr(self, name),
                      f"is a ViT option; leave it 0 for {self.backbone}")

    @property
    def is_vit(self) -> bool:
        """Whether the backbone is a Vision Transformer."""
        return self.backbone.startswith("vit")

    @property
    def effective_width(self) -> int:
        """First-stage channels (ResNet) or embedding dim (ViT) actually built."""
        return self.width or (VIT_SIZES[self.backbone][0] if self.is_vit else 64)

    @property
    def effective_depth(self) -> int:
        """ViT blocks actually built."""
        return self.depth or VIT_SIZES.get(self.backbone, (0, 12))[1]

    @property
    def effective_patch_size(self) -> int:
        """ViT patch side actually used."""
        return self.patch_size or 16

    @property
    def heads(self) -> int:
        """ViT attention heads."""
        return max(1, self.effective_width // VIT_HEAD_DIM)


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's config; ``name`` selects the registered method."""

    name: str = "simclr"


OptimizerName = Literal["lars", "sgd", "adamw"]


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (linear warm-up, then cosine decay)."""

    name: OptimizerName = "lars"
    base_lr: float = 0.3  # per 256 images: lr = base_lr * batch_size_global / 256 (Goyal et al.)
    weight_decay: float = 1e-6  # SimCLR with LARS; ~5e-4 with SGD on CIFAR-sized data
    momentum: float = 0.9
    warmup_epochs: float = 10.0
    final_lr_ratio: float = 0.0  # lr at the end of the cosine, as a fraction of the peak
    lars_eta: float = 0.001  # LARS trust coefficient (You et al. 2017)
    # Cap LARS's step of a tensor at eta of its norm (solo-learn's clip_lars_lr; with eta 0.02
    # in its small-batch recipes); see raysl/train/optim.py:LARS.
    lars_clip: bool = False
    exclude_bias_and_norm: bool = True  # no weight decay / LARS adaptation on biases and norms
    # Learning rate of biases and norms relative to the weights' (with exclude_bias_and_norm).
    # Barlow Twins: 0.0048 / 0.2 = 0.024.
    bias_norm_lr_scale: float = 1.0
    # DINO raises weight decay from 0.04 to 0.4 along a cosine; "constant" keeps weight_decay.
    weight_decay_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay_end: float = 0.0  # cosine schedule only: the value at the end of training
    clip_grad: float = 0.0  # max L2 norm of the gradients; 0 = no clipping (DINO: 3.0)
    # "global": one norm over all gradients (torch's clip_grad_norm_); "per_param": each tensor
    # on its own, as DINO's reference (a much looser bound for a model of many tensors).
    clip_mode: Literal["global", "per_param"] = "global"

    def __post_init__(self) -> None:
        check(self.base_lr > 0, "base_lr", self.base_lr, "must be > 0")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        check(0 <= self.momentum < 1, "momentum", self.momentum, "must be in [0, 1)")
        check(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, "must be >= 0")
        check(0 <= self.final_lr_ratio <= 1, "final_lr_ratio", self.final_lr_ratio, "in [0, 1]")
        check(self.lars_eta > 0, "lars_eta", self.lars_eta, "must be > 0")
        check(self.bias_norm_lr_scale > 0, "bias_norm_lr_scale", self.bias_norm_lr_scale,
              "must be > 0 (1 = the weights' learning rate)")
        check(self.exclude_bias_and_norm or self.bias_norm_lr_scale == 1.0, "bias_norm_lr_scale",
              self.bias_norm_lr_scale, "needs exclude_bias_and_norm=true (biases and norms in "
              "their own group)")
        check(self.weight_decay_end >= 0, "weight_decay_end", self.weight_decay_end, ">= 0")
        check(self.clip_grad >= 0, "clip_grad", self.clip_grad, ">= 0 (0 = off)")

    def weight_decay_at(self, progress: float) -> float:
        """Weight decay at a fraction of training (cosine from weight_decay to weight_decay_end)."""
        if self.weight_decay_schedule == "constant":
            return self.weight_decay
        return cosine(progress, self.weight_decay, self.weight_decay_end)

    def peak_lr(self, batch_size_global: int) -> float:
        """Learning rate after warm-up under the linear scaling rule."""
        return self.base_lr * batch_size_global / 256


Precision = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class TrainConfig:
    """Distributed training with Ray Train."""

    epochs: int = 100
    num_workers: int = 2  # Ray Train workers (one per GPU on a GPU cluster)
    use_gpu: bool = False
    cpus_per_worker: float = 0.0  # 0 = auto: share the CPUs left after reserving some for Ray Data
    data_cpus: float = 1.0  # logical CPUs kept free for Ray Data beside the train workers
    # Pin train workers to nodes with the `train_node` resource and, when such nodes are up,
    # augmentation to `data_node` nodes (cluster.yaml's node types). No effect without them.
    node_markers: bool = True
    precision: Precision = "auto"  # auto = bf16 (fp16 on pre-Ampere) autocast on GPU, fp32 on CPU
    # NHWC activations and weights, which tensor-core convolutions want; auto = ResNets on GPU.
    channels_last: Literal["auto", "on", "off"] = "auto"
    # Micro-batches per optimizer step: data.batch_size_global stays the images per step. For
    # contrastive losses this does NOT add negatives (each micro-batch only sees its own).
    grad_accumulation: int = 1
    sync_bn: bool = False  # BatchNorm statistics over all workers (SyncBatchNorm; GPU only)
    seed: int = 0
    run_name: str = ""  # same name again = resume that run; empty = a new unique name
    storage_path: str = ""  # checkpoints; empty = ./ray_results; shared storage on multi-node
    max_failures: int = 0  # worker-group restarts from the last checkpoint before giving up
    keep_checkpoints: int = 2
    address: str = ""  # Ray cluster to use; empty = RAY_ADDRESS if set, else start a local one

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        check(self.num_workers >= 1, "num_workers", self.num_workers, "must be >= 1")
        check(self.cpus_per_worker >= 0, "cpus_per_worker", self.cpus_per_worker, ">= 0 (0 = auto)")
        check(self.data_cpus > 0, "data_cpus", self.data_cpus,
              "must be > 0: Ray Data needs CPU beside the train workers or the job hangs")
        check(self.max_failures >= -1, "max_failures", self.max_failures, ">= -1 (-1 = forever)")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", self.keep_checkpoints, ">= 1")
        check(self.grad_accumulation >= 1, "grad_accumulation", self.grad_accumulation, ">= 1")
        # PyTorch's SyncBatchNorm refuses CPU modules ("only work with GPU modules").
        check(not self.sync_bn or self.use_gpu, "sync_bn", self.sync_bn,
              "needs GPUs (train.use_gpu=true): PyTorch's SyncBatchNorm does not run on CPU")
        check(all(c.isalnum() or c in "-_." for c in self.run_name), "run_name", self.run_name,
              "may only contain letters, digits, '-', '_' and '.'")


Protocol = Literal["knn", "linear", "finetune"]
PROTOCOLS: tuple[Protocol, ...] = ("knn", "linear", "finetune")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation of frozen and fine-tuned features on a labeled split.

    Runs after pretraining (``protocols``), from ``raysl evaluate``, and optionally during
    pretraining (``online_*``). Every protocol also reports the random-init encoder and raw pixels
    (``baselines``) on the same split.
    """

    enabled: bool = True
    bank: SourceConfig = field(default_factory=lambda: SourceConfig(split="train", limit=10000))
    query: SourceConfig = field(default_factory=lambda: SourceConfig(split="t10k"))
    holdout: float = 0.2  # used when query.path is empty: this fraction of the bank, stratified
    protocols: tuple[Protocol, ...] = ("knn", "linear")  # run after pretraining; "finetune" too
    baselines: bool = True  # also report random-init encoder and raw pixels on the same split
    batch_size: int = 512  # images per feature-extraction batch
    feature_actors: int = 0  # Ray Data inference actors; 0 = one per GPU, else per 2 CPUs (<= 4)
    # kNN (Wu et al. 2018). 0 = auto: 200 as in the common CIFAR protocol for banks of up to
    # 100,000 images, 20 above (DINO's ImageNet protocol).
    knn_k: int = 0
    knn_temperature: float = 0.1
    # Linear probe on frozen, standardised features: SGD + cosine, no augmentation. The lr and
    # epochs are picked on a stratified validation split of the bank, then the probe is retrained
    # on the whole bank with them and scored on the queries.
    linear_lrs: tuple[float, ...] = (1.0, 0.3, 0.1, 0.03)
    linear_epochs: tuple[int, ...] = (20, 60)
    linear_batch_size: int = 256
    linear_val_fraction: float = 0.1
    # Few-label fine-tuning (SimCLR's semi-supervised protocol, appendix B.5): the whole encoder +
    # a linear head on stratified, seeded label subsets of the bank, vs the same architecture from
    # scratch. SimCLR: 60 epochs on 1%, 30 on 10%, Nesterov SGD at 0.05 per 256, no weight decay.
    finetune_fractions: tuple[float, ...] = (0.01, 0.1)
    # One per fraction, or one for all; empty = SimCLR's: 60 for <= 1% of the labels, else 30.
    finetune_epochs: tuple[int, ...] = ()
    finetune_min_steps: int = 100  # tiny subsets get at least this many optimizer steps
    finetune_lr: float = 0.05  # SGD with Nesterov momentum, per 256 images (linear scaling)
    finetune_batch_size: int = 64
    finetune_weight_decay: float = 0.0
    # Online evaluation during pretraining (logged as eval/online_* per epoch).
    online_knn_every: int = 0  # kNN on the held-out split every N epochs (and the last); 0 = off
    online_probe: bool = False  # a stop-gradient linear head on the training features
    online_probe_lr: float = 0.1
    plots: bool = True  # embedding (t-SNE), confusion matrix and per-class accuracy
    plot_points: int = 2000  # points in the embedding plot (a stratified sample of the queries)

    def __post_init__(self) -> None:
        check(self.knn_k >= 0, "knn_k", self.knn_k, "must be >= 1, or 0 (auto)")
        check(self.knn_temperature > 0, "knn_temperature", self.knn_temperature, "must be > 0")
        check(0 < self.holdout < 1, "holdout", self.holdout, "is a fraction in (0, 1)")
        check(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        check(self.feature_actors >= 0, "feature_actors", self.feature_actors, ">= 0 (0 = auto)")
        check(len(self.protocols) == len(set(self.protocols)), "protocols", self.protocols,
              f"a list of distinct protocols out of {list(PROTOCOLS)}")
        check(bool(self.linear_lrs) and all(lr > 0 for lr in self.linear_lrs), "linear_lrs",
              self.linear_lrs, "a non-empty list of learning rates > 0")
        check(bool(self.linear_epochs) and all(e >= 1 for e in self.linear_epochs),
              "linear_epochs", self.linear_epochs, "a non-empty list of epoch counts >= 1")
        check(self.linear_batch_size >= 1, "linear_batch_size", self.linear_batch_size, ">= 1")
        check(0 < self.linear_val_fraction < 1, "linear_val_fraction", self.linear_val_fraction,
              "is a fraction in (0, 1)")
        check(bool(self.finetune_fractions) and all(0 < f <= 1 for f in self.finetune_fractions),
              "finetune_fractions", self.finetune_fractions,
              "a non-empty list of label fractions in (0, 1], e.g. [0.01, 0.1]")
        check(all(e >= 1 for e in self.finetune_epochs)
              and len(self.finetune_epochs) in (0, 1, len(self.finetune_fractions)),
              "finetune_epochs", self.finetune_epochs,
              f"epochs >= 1, one for every eval.finetune_fractions {self.finetune_fractions} "
              "or one for all")
        check(self.finetune_min_steps >= 0, "finetune_min_steps", self.finetune_min_steps, ">= 0")
        check(self.finetune_lr > 0, "finetune_lr", self.finetune_lr, "must be > 0")
        check(self.finetune_batch_size >= 2, "finetune_batch_size", self.finetune_batch_size,
              ">= 2 (BatchNorm needs more than one image)")
        check(self.finetune_weight_decay >= 0, "finetune_weight_decay",
              self.finetune_weight_decay, ">= 0")
        check(self.online_knn_every >= 0, "online_knn_every", self.online_knn_every,
              ">= 0 (0 = off)")
        check(self.online_probe_lr > 0, "online_probe_lr", self.online_probe_lr, "must be > 0")
        check(self.plot_points >= 10, "plot_points", self.plot_points, ">= 10")

    def finetune_epochs_for(self, i: int) -> int:
        """Fine-tuning epochs of the ``i``-th label fraction."""
        if not self.finetune_epochs:
            return 60 if self.finetune_fractions[i] <= 0.01 else 30
        return self.finetune_epochs[i if len(self.finetune_epochs) > 1 else 0]

    def knn_k_for(self, bank_size: int) -> int:
        """Neighbours used for a bank of ``bank_size`` images (``knn_k``, or the auto rule)."""
        return self.knn_k or (200 if bank_size <= 100_000 else 20)

    @property
    def online(self) -> bool:
        """Whether anything is evaluated during pretraining."""
        return self.online_knn_every > 0 or self.online_probe


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking and model registry."""

    tracking_uri: str = ""  # empty = $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment: str = "raysl"
    registered_model: str = ""  # empty = raysl-<method>-<backbone>
    register: bool = True


@dataclass(frozen=True)
class Config:
    """Everything a pretraining run needs. Build it with :meth:`from_dict` or :func:`load`."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        method_cls = method_class(self.method.name)
        # `Config()` gets the bare base MethodConfig; swap in the registered method's own defaults.
        if type(self.method) is MethodConfig:
            object.__setattr__(self, "method", method_cls.Config())
        if not self.data.preset:  # built in code: the method's preset unless views were set
            preset = method_cls.default_preset
            views = VIEW_PRESETS[preset] if self.data.views == ViewConfig() else self.data.views
            object.__setattr__(self, "data", dataclasses.replace(self.data, preset=preset,
                                                                 views=views))
        for name, src in (("data.source", self.data.source), ("eval.bank", self.eval.bank)):
            if not src.is_set:
                raise ConfigError(f"{name}.path", src.path,
                                  "must name a file or directory unless format is 'generated'")
        b, w, a = self.data.batch_size_global, self.train.num_workers, self.train.grad_accumulation
        if b % (w * a):
            raise ConfigError("data.batch_size_global", b,
                              f"must be divisible by train.num_workers x train.grad_accumulation"
                              f" = {w} x {a} (equal micro-batches on every worker)")
        local = self.data.views.local_crops
        if local and not method_cls.multicrop:
            users = [n for n in registry_names() if method_class(n).multicrop]
            raise ConfigError("data.views.local_crops", local,
                              f"must be 0: {self.method.name} does not use multi-crop (methods "
                              f"that do: {users})")
        self._check_view_layout(method_cls)
        if self.model.is_vit and local and not self.data.views.local_size:
            # Auto local size (96/224 of the global one) rounded to whole ViT patches.
            p = self.model.effective_patch_size
            size = max(p, round(self.data.effective_local_size / p) * p)
            views = dataclasses.replace(self.data.views, local_size=size)
            object.__setattr__(self, "data", dataclasses.replace(self.data, views=views))
        if self.model.is_vit:
            p = self.model.effective_patch_size
            for name, size in (("data.image_size", self.data.image_size),
                               ("data.views.local_size", self.data.effective_local_size)):
                if size % p and (local or name == "data.image_size"):
                    raise ConfigError(name, size, f"must be a multiple of the ViT patch size "
                                                  f"model.patch_size={p}")
        method_cls.check_config(self)

    def _check_view_layout(self, method_cls: Any) -> None:
        """Raise unless the views have the method's layout: global views and pretext target.

        Methods declare theirs as ``SSLMethod.global_views`` and ``SSLMethod.pretext``.
        """
        views = self.data.views
        got, need = (views.global_views, views.pretext), (method_cls.global_views,
                                                          method_cls.pretext)
        if got == need:
            return
        preset = VIEW_PRESETS[self.data.preset]
        value: Any
        if got == (preset.global_views, preset.pretext):  # the preset's layout, not an override
            field, value = "data.preset", self.data.preset
        elif views.pretext != method_cls.pretext:
            field, value = "data.views.pretext", views.pretext
        else:
            field, value = "data.views.global_views", views.global_views
        fits = [p for p, v in VIEW_PRESETS.items() if (v.global_views, v.pretext) == need
                and (method_cls.multicrop or not v.local_crops)]
        users = [n for n in registry_names()
                 if (method_class(n).global_views, method_class(n).pretext) == got]
        who = f"methods {users} train on" if users else "no registered method trains on yet"
        raise ConfigError(field, value, f"{self.method.name} trains on {_layout(*need)} (presets "
                                        f"{fits}); this gives {_layout(*got)}, which {who}")

    @property
    def batch_size_per_worker(self) -> int:
        """Images per optimizer step on each worker."""
        return self.data.batch_size_global // self.train.num_workers

    @property
    def micro_batch_size(self) -> int:
        """Images per forward pass on each worker (per_worker / grad_accumulation)."""
        return self.batch_size_per_worker // self.train.grad_accumulation

    @property
    def view_sizes(self) -> list[int]:
        """Side of each view the method receives: the global views, then the local crops.

        A jigsaw view is the tiles of an ``image_size`` crop (``data.jigsaw_tile_size`` each).
        """
        local = [self.data.effective_local_size] * self.data.views.local_crops
        return [self.data.image_size] * self.data.views.global_views + local

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str | None = None) -> Config:
        """Build and validate a Config from nested plain data (YAML, JSON, ``to_dict`` output)."""
        try:
            return _build(cls, _with_view_preset(raw), "")
        except ConfigError as e:
            raise ConfigError(e.field, e.value, e.expected, source) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict; ``Config.from_dict(c.to_dict()) == c``."""
        out: dict[str, Any] = _plain(dataclasses.asdict(self))
        return out

    def to_yaml(self) -> str:
        """The effective config as YAML (logged to MLflow, saved in checkpoints)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """``{"optim.base_lr": 0.3, ...}`` for MLflow params."""
        return dict(_flatten(self.to_dict()))


# ---------------------------------------------------------------------------------------------
# Building from plain data
# ---------------------------------------------------------------------------------------------

D = TypeVar("D")


def _method_registry() -> types.ModuleType:
    """``raysl.registry`` with every method registered."""
    # Imported here, not at the top: methods import this module to define their configs.
    from raysl import methods, registry

    del methods  # imported for its side effect: registering every method
    return registry


def method_class(name: str) -> Any:
    """The registered method class ``name`` (an ``SSLMethod`` subclass)."""
    registry = _method_registry()
    try:
        return registry.get("method", name)
    except KeyError:
        raise ConfigError("method.name", name,
                          f"must be one of {registry.names('method')}") from None


def registry_names() -> list[str]:
    """Names of every registered method."""
    names: list[str] = _method_registry().names("method")
    return names


def _layout(global_views: int, pretext: str) -> str:
    """``"1 global view with a rotation target"``, for error messages."""
    views = f"{global_views} global view{'s' if global_views > 1 else ''}"
    return views if pretext == "none" else f"{views} with a {pretext} target"


def method_config_class(name: str) -> type[MethodConfig]:
    """The config dataclass of the registered method ``name``."""
    config_cls: type[MethodConfig] = method_class(name).Config
    return config_cls


def _with_view_preset(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """``raw`` with ``data.views`` = the preset's fields, then the user's ``data.views`` on top.

    The preset is ``data.preset`` or, if unset, the method's own; so a BYOL config gets BYOL's
    asymmetric blur and solarization without writing them out, and any field can still be set.
    """
    data = raw.get("data", {}) if isinstance(raw, Mapping) else None
    method = raw.get("method", {}) if isinstance(raw, Mapping) else None
    if not isinstance(data, Mapping) or not isinstance(method, Mapping):
        return raw  # _build reports the malformed section
    views = data.get("views", {})
    if not isinstance(views, Mapping):
        return raw
    preset = data.get("preset") or method_class(method.get("name", MethodConfig.name)
                                                ).default_preset
    if preset not in VIEW_PRESETS:
        raise ConfigError("data.preset", preset, f"must be one of {sorted(VIEW_PRESETS)}")
    merged = {**_plain(dataclasses.asdict(VIEW_PRESETS[preset])), **views}
    return {**raw, "data": {**data, "preset": preset, "views": merged}}


def from_mapping(cls: type[D], raw: Any, path: str = "") -> D:
    """Build and validate any config dataclass ``cls`` from plain data, as :meth:`Config.from_dict`.

    Raises:
        ConfigError: unknown keys, wrong types or out-of-range values, naming the field.
    """
    return _build(cls, raw, path)


def _build(cls: type[D], raw: Any, path: str) -> D:
    if not isinstance(raw, Mapping):
        raise ConfigError(path or "<root>", raw, "must be a mapping of fields")
    if cls is MethodConfig:
        name = raw.get("name", MethodConfig.name)
        cls = method_config_class(name)  # type: ignore[assignment]
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in known:
            raise ConfigError(where, value, f"unknown field; known fields here: {sorted(known)}")
        kwargs[key] = _coerce(hints[key], value, where)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise (e.under(path) if path and not e.field.startswith(path + ".") else e) from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)  # type: ignore[arg-type]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices or type(value) is not type(choices[0]):
            raise ConfigError(where, value, f"must be one of {list(choices)}")
        return value
    if origin is tuple and typing.get_args(tp)[-1] is Ellipsis:  # tuple[X, ...]: any length
        item = typing.get_args(tp)[0]
        if isinstance(value, str):  # `--set eval.protocols=knn,linear`
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]  # `--set eval.linear_epochs=50` means a list of one
        if not isinstance(value, list | tuple):
            raise ConfigError(where, value, "must be a list")
        return tuple(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(where, value, f"must be a list of {len(args)} values")
        pairs = enumerate(zip(args, value, strict=True))
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in pairs)
    if origin in (types.UnionType, typing.Union):
        raise TypeError(f"unsupported annotation {tp} for {where}")  # keep configs simple
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # PyYAML reads `1e-6` (no dot) as a string, following YAML 1.1; accept it as a number.
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(where, value, f"must be of type {tp.__name__}, not a boolean")
    if not isinstance(value, tp):
        got = type(value).__name__
        raise ConfigError(where, value, f"must be of type {tp.__name__}, got {got}")
    return value


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [_plain(v) for v in obj]
    return obj


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            yield from _flatten(v, key + ".")
        else:
            yield key, v


# ---------------------------------------------------------------------------------------------
# Files and overrides
# ---------------------------------------------------------------------------------------------


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"optim.base_lr=0.5"`` -> ``(["optim", "base_lr"], 0.5)``; the value is read as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", item, "must look like section.field=value")
    return key.strip().split("."), yaml.safe_load(text) if text.strip() else ""


def merge_override(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set ``raw[k0][k1]...[kn] = value``, creating intermediate mappings."""
    node = raw
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if isinstance(child, str) and k == "method":  # `method: simclr` shorthand in YAML
            child = node[k] = {"name": child}
        if not isinstance(child, dict):
            raise ConfigError(".".join(keys), value, f"'{k}' is not a section")
        node = child
    node[keys[-1]] = value


def load(path: str | os.PathLike[str] | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML file of overrides (optional), apply ``key=value`` overrides, validate.

    Raises:
        ConfigError: on unknown keys, wrong types or out-of-range values, naming the field.
        FileNotFoundError: if ``path`` does not exist.
    """
    raw: dict[str, Any] = {}
    source = None
    if path is not None:
        source = str(path)
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ConfigError("<root>", loaded, "a YAML mapping of sections", source)
        raw = loaded
    if isinstance(raw.get("method"), str):
        raw["method"] = {"name": raw["method"]}
    for item in overrides:
        keys, value = parse_override(item)
        merge_override(raw, keys, value)
    return Config.from_dict(raw, source)
