"""The generated shapes in colour, each class its own hue: colour data no file has to provide."""

from __future__ import annotations

from raysl.config import SourceConfig
from raysl.data import generated
from raysl.data.formats import Arrays
from raysl.data.readers.base import Reader, Target
from raysl.data.storage import Store
from raysl.registry import register


@register("reader", "colour_shapes")
class ColourShapes(Reader):
    """``data.source.limit`` RGB images (2000 if 0) of 8 shape classes, 32 px, seeded.

    For methods that need colour (colorization) where no colour dataset is installed: the
    colour of a shape follows its class, so it can be predicted from the gray image.
    """

    name = "colour_shapes"
    summary = "generated shapes in colour (each class its hue), 8 classes at 32 px (no files)"
    reads = "none"
    detect_order = 1000  # only when named

    @classmethod
    def detect(cls, target: Target, store: Store) -> bool:
        """Never: it reads no path."""
        return False

    def open(self, cfg: SourceConfig, target: Target, store: Store, seed: int,
             field_name: str) -> Arrays:
        """The images, drawn now."""
        images, labels = generated.colour_shapes(n=cfg.limit or 2000, size=32, seed=seed)
        return Arrays(images, labels, list(generated.CLASSES),
                      f"colour shapes ({len(images)} images, 32x32 RGB, 8 classes)")
