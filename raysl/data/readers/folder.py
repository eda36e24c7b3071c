"""A directory tree of image files; class sub-folders become labels when every file sits in one."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from raysl.config import SourceConfig
from raysl.data.formats import DataError
from raysl.data.readers.base import (
    IMAGE_EXTENSIONS,
    Encoded,
    Item,
    Reader,
    Target,
    Unit,
    file_units,
    read_paths,
)
from raysl.data.storage import Store
from raysl.registry import register


@register("reader", "folder")
class Folder(Reader):
    """Image files (JPEG, PNG, WebP, BMP, TIFF, GIF) below a directory, like ImageFolder."""

    name = "folder"
    summary = "a directory tree of image files; class sub-folders become labels"
    reads = "dir"
    detect_order = 100  # the fallback: any other directory

    @classmethod
    def detect(cls, target: Target, store: Store) -> bool:
        """Any directory the other readers do not claim."""
        return target.kind == "dir"

    def open(self, cfg: SourceConfig, target: Target, store: Store, seed: int,
             field_name: str) -> Encoded:
        """Class indices follow the sorted folder names (torchvision's ``ImageFolder``)."""
        root = target.path.rstrip("/")
        files = [f for f in target.files if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not files:
            raise DataError(f"{field_name}.path={cfg.path!r}: no image files "
                            f"({', '.join(IMAGE_EXTENSIONS)}) below it")
        rel = [f[len(root) + 1:].split("/") for f in files]
        if all(len(parts) >= 2 for parts in rel):
            classes = sorted({parts[0] for parts in rel})
            index = {c: i for i, c in enumerate(classes)}
            labels = np.array([index[parts[0]] for parts in rel], np.int64)
            desc = f"{target.name} ({{n}} images, {len(classes)} classes)"
            return file_units(files, labels, classes, desc, self, seed, cfg.limit)
        return file_units(files, None, [], f"{target.name} ({{n}} images)", self, seed,
                          cfg.limit)

    def read_unit(self, unit: Unit, store: Store, class_names: Sequence[str]) -> Iterator[Item]:
        """Each file's bytes."""
        return read_paths(unit, store)
