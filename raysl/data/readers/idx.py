"""IDX files (MNIST, Fashion-MNIST): ``<split>-images-idx3-ubyte[.gz]`` and the labels beside."""

from __future__ import annotations

import posixpath

from raysl.config import SourceConfig
from raysl.data.formats import Arrays, load_idx
from raysl.data.readers.base import Reader, Target
from raysl.data.storage import Store
from raysl.registry import register


@register("reader", "idx")
class IDX(Reader):
    """A directory of IDX files; ``data.source.split`` picks ``train`` or ``t10k``."""

    name = "idx"
    summary = "IDX files (MNIST, Fashion-MNIST) in a directory; split train or t10k"
    reads = "dir"
    detect_order = 10

    @classmethod
    def detect(cls, target: Target, store: Store) -> bool:
        """A directory holding ``*-images-idx3-ubyte*``."""
        return target.kind == "dir" and any("-images-idx3-ubyte" in n for n in target.top_names)

    def open(self, cfg: SourceConfig, target: Target, store: Store, seed: int,
             field_name: str) -> Arrays:
        """Images and labels of the split, read whole."""
        top = [posixpath.join(target.path.rstrip("/"), n) for n in target.top_names]
        return load_idx(store, cfg.path, top, cfg.split, field_name)
