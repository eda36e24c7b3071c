"""What the encoded-image readers share: how many bytes an image may take, what a label means.

The files, folder, tar and parquet readers skip an image file, member or cell larger than
:func:`encoded_bound` of ``data.max_image_pixels`` (``too_large``) before reading or inflating
it. The shard readers (tar, parquet) read a sample's label as text of at most
:data:`MAX_LABEL_BYTES`, and :func:`sample_label` turns it into a class index or the reason the
sample is bad.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from raysl.config import DataConfig

BYTES_PER_PIXEL = 8  # the most an image file Pillow decodes stores a pixel: 16-bit RGBA, raw
ENCODED_SLACK = 2**20  # headers and metadata beside the pixels (EXIF, ICC profile, text)
MAX_LABEL_BYTES = 2**16  # a label member or cell: a class name or an integer, never this long
BAD_LABEL_TEXT = "\x00"  # stands for a label that cannot be text (too long, not UTF-8, not JSON)


def encoded_bound(max_pixels: int) -> int:
    """The most bytes an encoded image of at most ``max_pixels`` pixels takes: 8 per pixel + 1 MiB.

    A shard member or cell above it cannot be an image that ``data.max_image_pixels`` lets
    through, so the readers skip it (``too_large``) before reading or inflating it.
    """
    return BYTES_PER_PIXEL * max_pixels + ENCODED_SLACK


# At the default data.max_image_pixels (100 M): 801 MB.
MAX_ENCODED_BYTES = encoded_bound(DataConfig.max_image_pixels)
_DIGITS = re.compile(r"[0-9]+")


def sample_label(text: str | None, index: Mapping[str, int]) -> int | str:
    """A sample's label text -> its class index, or why it has none ("no_label", "bad_label").

    ``index`` maps the source's class names to their indices (``labels_of`` names integer
    labels by their decimal text). A label is good if it names a class or, failing that, is a
    class index (``raysl shards`` and WebDataset write ``.cls`` so): malformed text, an unknown
    class, a negative or out-of-range integer is "bad_label", a missing label (None)
    "no_label". Text is stripped first.
    """
    if text is None:
        return "no_label"
    text = text.strip()
    if text in index:
        return index[text]
    if _DIGITS.fullmatch(text) and len(text) <= 18 and int(text) < len(index):
        return int(text)
    return "bad_label"

