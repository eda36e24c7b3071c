"""The generated shapes in colour, each class its own hue: colour data no file has to provide."""

from __future__ import annotations

from typing import ClassVar

from raysl.catalog import register
from raysl.data import generated
from raysl.data.readers.generated import Generated, Maker


@register("reader", "colour_shapes")
class ColourShapes(Generated):
    """``data.source.limit`` RGB images (2000 if 0) of 8 shape classes, 32 px, seeded.

    For methods that need colour (colorization) where no colour dataset is installed: the
    colour of a shape follows its class, so it can be predicted from the gray image.
    """

    name = "colour_shapes"
    summary = "generated shapes in colour (each class its hue), 8 classes at 32 px (no files)"
    make: ClassVar[Maker] = staticmethod(generated.colour_shapes)
    what: ClassVar[str] = "colour shapes"
