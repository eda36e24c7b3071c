"""A directory tree of image files; class sub-folders become labels when every file sits in one."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raysl.catalog import register
from raysl.config import SourceConfig
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
from raysl.data.readers.encoded import MAX_ENCODED_BYTES
from raysl.data.storage import Store
from raysl.errors import DataError


@register("reader", "folder")
class Folder(Reader):
    """Image files (JPEG, PNG, WebP, BMP, TIFF, GIF) below a directory, like ImageFolder."""

    name = "folder"
    summary = "a directory tree of image files; class sub-folders become labels"
    reads = "dir"
    detect_order = 100  # the fallback: any other directory
    max_encoded_bytes: int = MAX_ENCODED_BYTES  # a file above it: too_large, unread

    @classmethod
    def detect(cls, target: Target, store: Store) -> bool:
        """Any directory the other readers do not claim."""
        return target.kind == "dir"

    def open(self, cfg: SourceConfig, target: Target, store: Store, seed: int,
             field_name: str) -> Encoded:
        """Class indices follow the sorted folder names (torchvision's ``ImageFolder``)."""
        root = target.path.rstrip("/")
        files = target.files_ending(IMAGE_EXTENSIONS)
        if not len(files):
            raise DataError(f"{field_name}.path={cfg.path!r}: no image files "
                            f"({', '.join(IMAGE_EXTENSIONS)}) below it")
        # Class = first folder below the root, for every file in one; Arrow kernels, not a
        # Python loop, so a million files take a fraction of a second.
        parts = pc.split_pattern(pc.utf8_slice_codeunits(files, len(root) + 1), "/",
                                 max_splits=1)
        if pc.min(pc.list_value_length(parts)).as_py() >= 2:
            folders = pc.list_element(parts, 0)
            classes = sorted(pc.unique(folders).to_pylist())
            labels = pc.index_in(folders, value_set=pa.array(classes, folders.type))
            desc = f"{target.name} ({{n}} images, {len(classes)} classes)"
            return file_units(files, labels.to_numpy().astype(np.int64), classes, desc, self,
                              seed, cfg.limit)
        return file_units(files, None, [], f"{target.name} ({{n}} images)", self, seed,
                          cfg.limit)

    def read_unit(self, unit: Unit, store: Store, class_names: Sequence[str]) -> Iterator[Item]:
        """Each file's bytes."""
        return read_paths(unit, store, self.max_encoded_bytes)
