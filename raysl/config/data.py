"""Pretraining data and how it is turned into views (``data``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from raysl.config.presets import VIEW_PRESETS
from raysl.config.source import SourceConfig
from raysl.config.views import ViewConfig
from raysl.errors import check


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
    # Decoded images kept in the object store ("memory": decoded once, the whole set held) or
    # decoded again every epoch as a bounded stream ("none": for sets larger than the store);
    # "auto" keeps them when they fit 40% of the cluster's object store. Array formats (IDX,
    # npz, npy, CIFAR) are read whole either way, up to source.max_array_bytes.
    cache: Literal["auto", "memory", "none"] = "auto"
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

