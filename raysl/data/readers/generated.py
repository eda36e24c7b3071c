"""A small labeled dataset of drawn shapes, made in memory: the fallback without real data."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np

from raysl.catalog import register
from raysl.config import SourceConfig
from raysl.data import generated
from raysl.data.readers.base import Arrays, Reader, Target
from raysl.data.storage import Store

Maker = Callable[..., tuple[np.ndarray, np.ndarray]]


@register("reader", "generated")
class Generated(Reader):
    """``data.source.limit`` images (2000 if 0) of 8 shape classes, 32 px, seeded."""

    name = "generated"
    summary = "generated shapes, 8 classes at 32 px (no files; data.source.limit of them)"
    reads = "none"
    detect_order = 1000  # only when named
    make: ClassVar[Maker] = staticmethod(generated.shapes)
    what: ClassVar[str] = "generated shapes"

    @classmethod
    def detect(cls, target: Target, store: Store) -> bool:
        """Never: it reads no path."""
        return False

    def open(self, cfg: SourceConfig, target: Target, store: Store, seed: int,
             field_name: str) -> Arrays:
        """The images, drawn now."""
        images, labels = self.make(n=cfg.limit or 2000, size=32, seed=seed)
        colour = ", RGB" if images.shape[-1] == 3 else ""
        return Arrays(images, labels, list(generated.CLASSES),
                      f"{self.what} ({len(images)} images, 32x32{colour}, 8 classes)")
