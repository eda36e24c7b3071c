"""A ``.npy`` array of unlabeled images."""

from __future__ import annotations

from raysl.catalog import register
from raysl.config import SourceConfig
from raysl.data.formats import Arrays, ArraySlices, load_npy, npy_slices
from raysl.data.readers.arrays import ArrayReader
from raysl.data.readers.base import Target
from raysl.data.storage import Store


@register("reader", "npy")
class NPY(ArrayReader):
    """uint8 images (N, H, W[, C]), no labels."""

    name = "npy"
    summary = "a .npy of uint8 images (N, H, W[, C]), unlabeled"
    reads = "file"
    detect_order = 10

    @classmethod
    def detect(cls, target: Target, store: Store) -> bool:
        """A ``.npy`` file."""
        return target.kind == "file" and target.suffix == ".npy"

    def slices(self, cfg: SourceConfig, target: Target, store: Store,
               field_name: str) -> ArraySlices:
        """The array, opened to be read a slice at a time."""
        return npy_slices(store, cfg.path)

    def read_whole(self, cfg: SourceConfig, target: Target, store: Store,
                   field_name: str) -> Arrays:
        """The array, read whole."""
        return load_npy(store, cfg.path)
