"""What the array readers (IDX, npz, npy) share: read whole up to a size, refused above it.

An array source is read whole by the driver (:class:`~raysl.data.formats.Arrays`), so its size
is checked first, from its headers: above ``data.source.max_array_bytes`` the read is refused
with the ``raysl shards`` command that converts it into shards, which stream. That command opens
the same :meth:`ArrayReader.slices` and reads them a slice of rows at a time
(:mod:`raysl.data.shards`).
"""

from __future__ import annotations

import posixpath
import shlex
from abc import abstractmethod

from raysl.config import SourceConfig
from raysl.data.formats import Arrays, ArraySlices
from raysl.data.readers.base import Reader, Target
from raysl.data.storage import Store
from raysl.errors import DataError


class ArrayReader(Reader):
    """A reader of arrays: :meth:`slices` opens them, :meth:`read_whole` reads them."""

    @abstractmethod
    def slices(self, cfg: SourceConfig, target: Target, store: Store,
               field_name: str) -> ArraySlices:
        """The source's arrays with their headers read and checked, no row read yet."""

    @abstractmethod
    def read_whole(self, cfg: SourceConfig, target: Target, store: Store,
                   field_name: str) -> Arrays:
        """The source's arrays, read whole."""

    def open(self, cfg: SourceConfig, target: Target, store: Store, seed: int,
             field_name: str) -> Arrays:
        """The arrays, read whole if they fit ``max_array_bytes``.

        Raises:
            DataError: they are larger (naming the command that converts them), or unreadable.
        """
        with self.slices(cfg, target, store, field_name) as sliced:
            check_size(sliced, cfg, target, field_name)
        return self.read_whole(cfg, target, store, field_name)


def check_size(sliced: ArraySlices, cfg: SourceConfig, target: Target, field_name: str) -> None:
    """Refuse ``sliced`` if it is larger than ``cfg.max_array_bytes``, naming ``raysl shards``.

    Raises:
        DataError: naming the path, the arrays' shape and size, the limit's field and value,
            and the commands that convert the source and then train on the shards.
    """
    if sliced.nbytes <= cfg.max_array_bytes:
        return
    stem = cfg.path.rstrip("/")
    if target.kind == "dir":
        stem += f"-{cfg.split}"
    else:
        stem = posixpath.splitext(stem)[0]
    out = f"{stem}-shards"
    flags = "" if target.kind != "dir" or cfg.split == "train" else f" --split {cfg.split}"
    flags += f" --source-format {cfg.format}" if cfg.format != "auto" else ""
    use = (f"{field_name} {shlex.quote(out)}" if field_name.startswith("-")
           else f"--set {field_name}.path={shlex.quote(out)}")
    raise DataError(
        f"{field_name}.path={cfg.path!r}: {sliced.describe()} take {_gb(sliced.nbytes)}, more "
        f"than {field_name}.max_array_bytes={cfg.max_array_bytes} ({_gb(cfg.max_array_bytes)}), "
        "the most an array source is read whole on the driver. Convert it once into shards, "
        f"which stream: `raysl shards {shlex.quote(cfg.path)} {shlex.quote(out)}{flags}`, then "
        f"`{use}` (or raise {field_name}.max_array_bytes if the driver has the memory)")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 10**7 else f"{n} bytes"
