"""A ``.npz`` archive: images under a usual key (``images``, ``x``...) and optional labels."""

from __future__ import annotations

from raysl.catalog import register
from raysl.config import SourceConfig
from raysl.data.formats import Arrays, ArraySlices, load_npz, npz_slices
from raysl.data.readers.arrays import ArrayReader
from raysl.data.readers.base import Target
from raysl.data.storage import Store


@register("reader", "npz")
class NPZ(ArrayReader):
    """uint8 images (N, H, W[, C]) and integer labels (N,) in one archive."""

    name = "npz"
    summary = "a .npz of uint8 images (images/x/data...) and optional labels (labels/y...)"
    reads = "file"
    detect_order = 10

    @classmethod
    def detect(cls, target: Target, store: Store) -> bool:
        """A ``.npz`` file."""
        return target.kind == "file" and target.suffix == ".npz"

    def slices(self, cfg: SourceConfig, target: Target, store: Store,
               field_name: str) -> ArraySlices:
        """The arrays, opened to be read a slice at a time."""
        return npz_slices(store, cfg.path)

    def read_whole(self, cfg: SourceConfig, target: Target, store: Store,
                   field_name: str) -> Arrays:
        """The arrays, read whole."""
        return load_npz(store, cfg.path)
