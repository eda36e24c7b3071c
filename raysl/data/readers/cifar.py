"""CIFAR-10/100 as torchvision stores them (``cifar-10-batches-py``, ``cifar-100-python``)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from raysl.catalog import register
from raysl.config import SourceConfig
from raysl.data.formats import CIFAR_LAYOUTS, Arrays, cifar_folder, load_cifar
from raysl.data.readers.base import Reader, Target
from raysl.data.storage import Store
from raysl.errors import DataError


@register("reader", "cifar")
class CIFAR(Reader):
    """The python batches, read from disk (never downloaded), with an arrays-only unpickler."""

    name = "cifar"
    summary = "CIFAR-10/100 python batches (torchvision's folders); split train or test"
    reads = "dir"
    detect_order = 10

    @classmethod
    def detect(cls, target: Target, store: Store) -> bool:
        """The folder, or a directory right above it."""
        return target.kind == "dir" and cifar_folder(_near_top(target), target.path) is not None

    def open(self, cfg: SourceConfig, target: Target, store: Store, seed: int,
             field_name: str) -> Arrays:
        """The split's batches, read whole."""
        found = cifar_folder(_near_top(target), target.path)
        if found is None:
            raise DataError(f"{field_name}.path={cfg.path!r}: no cifar-10-batches-py or "
                            "cifar-100-python folder (torchvision's layout) there")
        return load_cifar(store, *found, cfg.split, field_name)


def _near_top(target: Target) -> list[str]:
    """The target's files that a CIFAR folder at or right below it would have.

    An Arrow look-up: a folder of a million images is not turned into Python strings to be
    told it is not CIFAR.
    """
    root = target.path.rstrip("/")
    wanted = [f"{folder}/{name}" for layout, (train, _, meta, _, _) in CIFAR_LAYOUTS.items()
              for folder in (root, f"{root}/{layout}") for name in (meta, train[0])]
    found: list[str] = target.files.filter(
        pc.is_in(target.files, value_set=pa.array(wanted, target.files.type))).to_pylist()
    return found
