"""IDX files (MNIST, Fashion-MNIST): ``<split>-images-idx3-ubyte[.gz]`` and the labels beside."""

from __future__ import annotations

import posixpath

from raysl.catalog import register
from raysl.config import SourceConfig
from raysl.data.formats import Arrays, ArraySlices, idx_slices, load_idx
from raysl.data.readers.arrays import ArrayReader
from raysl.data.readers.base import Target
from raysl.data.storage import Store


@register("reader", "idx")
class IDX(ArrayReader):
    """A directory of IDX files; ``data.source.split`` picks ``train`` or ``t10k``."""

    name = "idx"
    summary = "IDX files (MNIST, Fashion-MNIST) in a directory; split train or t10k"
    reads = "dir"
    detect_order = 10

    @classmethod
    def detect(cls, target: Target, store: Store) -> bool:
        """A directory holding ``*-images-idx3-ubyte*``."""
        return target.kind == "dir" and any("-images-idx3-ubyte" in n for n in target.top_names)

    def slices(self, cfg: SourceConfig, target: Target, store: Store,
               field_name: str) -> ArraySlices:
        """Images and labels of the split, opened to be read a slice at a time."""
        return idx_slices(store, cfg.path, _top(target), cfg.split, field_name)

    def read_whole(self, cfg: SourceConfig, target: Target, store: Store,
                   field_name: str) -> Arrays:
        """Images and labels of the split, read whole."""
        return load_idx(store, cfg.path, _top(target), cfg.split, field_name)


def _top(target: Target) -> list[str]:
    """The files and folders directly in the directory."""
    return [posixpath.join(target.path.rstrip("/"), n) for n in target.top_names]
