"""CIFAR-10/100 as torchvision stores them (``cifar-10-batches-py``, ``cifar-100-python``).

The python batches are read from disk (never downloaded), whole, with the arrays-only unpickler
of :mod:`raysl.data.readers.cifar_pickle`. CIFAR has no sliced form: its format bounds a split
at 150 MB.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raysl.catalog import register
from raysl.config import SourceConfig
from raysl.data.readers.base import Arrays, Reader, Target
from raysl.data.readers.cifar_pickle import unpickle_batch
from raysl.data.storage import Store
from raysl.errors import DataError

CIFAR_LAYOUTS = {
    # folder name: (train files, test files, meta file, label key, class-names key)
    "cifar-10-batches-py": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                            "batches.meta", b"labels", b"label_names"),
    "cifar-100-python": (["train"], ["test"], "meta", b"fine_labels", b"fine_label_names"),
}


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


def cifar_folder(files: list[str], root: str) -> tuple[str, str] | None:
    """(folder, layout name) of the CIFAR python folder at or right below ``root``, if any."""
    for name, (train, _, meta, _, _) in CIFAR_LAYOUTS.items():
        for folder in (root.rstrip("/"), f"{root.rstrip('/')}/{name}"):
            present = {f[len(folder) + 1:] for f in files if f.startswith(folder + "/")}
            if meta in present and train[0] in present:
                return folder, name
    return None


def load_cifar(store: Store, folder: str, layout: str, split: str, field_name: str) -> Arrays:
    """CIFAR-10/100 batches of ``split`` ("train" or "test") as (N, 32, 32, 3) + labels.

    The batches are Python pickles; they are read with an unpickler that only builds the
    NumPy arrays, lists and dicts they contain, so a tampered file cannot run code, and no
    more than a few times its size (:func:`unpickle_batch`). A label that is negative or names no
    class of the meta file is a DataError: array sources are read whole, not skipped by row.
    """
    train, test, meta, label_key, names_key = CIFAR_LAYOUTS[layout]
    if split not in ("train", "test"):
        raise DataError(f"{field_name}.split={split!r}: CIFAR splits are 'train' and 'test'")
    images, labels = [], []
    for name in train if split == "train" else test:
        batch = unpickle_batch(store, f"{folder}/{name}")
        try:
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[label_key], dtype=np.int64).reshape(-1))
        except (KeyError, ValueError, TypeError, OverflowError) as e:
            raise DataError(f"{folder}/{name}: not a {layout} batch ({type(e).__name__}: "
                            f"{e})") from None
        if len(labels[-1]) != len(images[-1]):
            raise DataError(f"{folder}/{name}: {len(labels[-1])} labels for "
                            f"{len(images[-1])} images")
    try:
        classes = [n.decode() for n in
                   unpickle_batch(store, f"{folder}/{meta}").get(names_key, [])]
    except (AttributeError, TypeError, UnicodeDecodeError) as e:
        raise DataError(f"{folder}/{meta}: class names are not a list of byte strings "
                        f"({e})") from None
    x, y = np.concatenate(images), np.concatenate(labels)
    top = int(y.max()) if len(y) else -1
    if len(y) and y.min() < 0:
        raise DataError(f"{folder}: label {y.min()} is negative")
    if classes and top >= len(classes):
        raise DataError(f"{folder}: label {top} is not one of the {len(classes)} classes of "
                        f"{folder}/{meta}")
    return Arrays(x, y, classes or [str(i) for i in range(top + 1)],
                  f"{layout.split('-')[0].upper()}-{layout.split('-')[1]} {split} "
                  f"({len(x)} images, {folder})")
