"""WebDataset-style tar shards, each read as a stream (as object stores serve them), one per unit.

Each sample is the members sharing a key (``000123.jpg``, ``000123.cls``), next to each other
in the shard: the image plus an optional label (``.cls``: an integer or a class name;
``.json``: its ``label`` or ``cls``). A ``shards.json`` index beside the shards (``raysl
shards`` writes it) gives the sample counts and class names; without it the shards are counted
when the source is opened.

A shard is read as an uncompressed tar only: a compressed one (gzip, bzip2, xz, zstd) is
skipped and counted (``compressed_shard``), as its members could inflate without a bound. An
image member larger than :data:`~raysl.data.readers.encoded.MAX_ENCODED_BYTES` is skipped
(``too_large``) without being read. In a labeled source, a sample whose label is missing
(``no_label``: also what a shard whose members are not grouped by key gives) or names no class
(``bad_label``) is skipped and counted, never read as class 0 and never failing the run.
"""

from __future__ import annotations

import json
import posixpath
import re
import tarfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from raysl.catalog import register
from raysl.config import SourceConfig
from raysl.data.readers.base import (
    IMAGE_EXTENSIONS,
    Encoded,
    Item,
    Reader,
    Target,
    Unit,
    labels_of,
    shard_units,
)
from raysl.data.readers.encoded import (
    BAD_LABEL_TEXT,
    MAX_ENCODED_BYTES,
    MAX_LABEL_BYTES,
    sample_label,
)
from raysl.data.storage import LISTING_THREADS, Store
from raysl.errors import DataError

INDEX_FILE = "shards.json"  # {"shards": {name: samples}, "class_names": [...]}
INDEX_FORMAT = "raysl-shards/1"
LABEL_EXTENSIONS = ("cls", "json")
# How compressed streams start: gzip, bzip2, xz, zstd. tarfile's "r|*" would inflate them.
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")
_NEGATIVE = re.compile(r"-[0-9]+")


class Sample(NamedTuple):
    """One sample of a shard: the members sharing a key."""

    key: str
    image: bytes | str | None  # the image's bytes, why it was not read, or None: no image
    label: str | None  # the label's text, BAD_LABEL_TEXT, or None: no label member


class CompressedShard(tarfile.ReadError):
    """A shard that is a compressed stream, not a tar: it is not inflated."""


@register("reader", "tar")
class Tar(Reader):
    """Tar shards (a directory of them, a brace pattern such as ``s-{000..099}.tar``, or one)."""

    name = "tar"
    summary = "WebDataset-style tar shards (a directory, a {000..099} pattern, or one .tar)"
    detect_order = 30
    max_encoded_bytes: int = MAX_ENCODED_BYTES  # image members above it: too_large, unread

    @classmethod
    def detect(cls, target: Target, store: Store) -> bool:
        """A .tar file or pattern, or a directory whose files are .tar shards (and an index)."""
        if target.kind in ("file", "pattern"):
            return target.suffix == ".tar"
        names = [n for n in target.top_names if n != INDEX_FILE]
        return bool(names) and all(n.lower().endswith(".tar") for n in names)

    def open(self, cfg: SourceConfig, target: Target, store: Store, seed: int,
             field_name: str) -> Encoded:
        """Shards with their sample counts, from the index or by counting them."""
        shards = sorted(target.files_ending((".tar",)).to_pylist())
        if not shards:
            raise DataError(f"{field_name}.path={cfg.path!r}: no .tar shards there")
        index = _read_index(store, posixpath.dirname(shards[0]))
        notes, packed = [], []
        names = {posixpath.basename(s) for s in shards}
        if index is not None and names <= set(index["shards"]):
            counts = [int(index["shards"][posixpath.basename(s)]) for s in shards]
            classes = [str(c) for c in index.get("class_names", [])]
        else:
            notes.append(f"no {INDEX_FILE} beside the shards: counted the samples of "
                         f"{len(shards)} shard(s) (`raysl shards` writes one)")
            with ThreadPoolExecutor(min(LISTING_THREADS, len(shards))) as pool:
                censuses = list(pool.map(lambda s: _census(store, s), shards))
            counts = [n for n, _, _ in censuses]
            labels = [v for _, part, _ in censuses for v in part]
            classes = labels_of(labels, f"{field_name}.path={cfg.path!r}")[1] if labels else []
            packed = [s for s, (_, _, compressed) in zip(shards, censuses, strict=True)
                      if compressed]
        compressed = (f"{len(packed)} shard(s) are compressed, e.g. {packed[0]}: raysl reads "
                      "uncompressed tar shards only (decompress them, e.g. `zcat s.tar.gz > "
                      "s.tar`)" if packed else "")
        if sum(counts) == 0:
            raise DataError(f"{field_name}.path={cfg.path!r}: the shards hold no samples"
                            + (f"; {compressed}" if compressed else ""))
        if compressed:
            notes.append(f"{compressed}; they are skipped (compressed_shard)")
        n_classes = f", {len(classes)} classes" if classes else ""
        desc = f"{target.name} ({{n}} images in {len(shards)} shards{n_classes})"
        return Encoded(shard_units(shards, counts, seed, cfg.limit), classes, desc, self, notes)

    def read_unit(self, unit: Unit, store: Store, class_names: Sequence[str]) -> Iterator[Item]:
        """The shard's samples in order, bad ones as the reason they are skipped.

        A shard cut short ends with one "truncated" item, a compressed one is one
        "compressed_shard" item. With ``class_names`` (a labeled source) a sample's label must
        name one of them, else the sample is "no_label" or "bad_label".
        """
        index = {c: i for i, c in enumerate(class_names)}
        n = 0
        try:
            with store.open_input(unit.shard) as stream:
                for sample in samples(stream, self.max_encoded_bytes):
                    if unit.take and n >= unit.take:
                        return
                    n += 1
                    name = f"{unit.shard}/{sample.key}"
                    if sample.image is None or isinstance(sample.image, str):
                        yield name, sample.image or "not_an_image", None
                        continue
                    label = sample_label(sample.label, index) if index else None
                    if isinstance(label, str):
                        yield name, label, None
                    else:
                        yield name, sample.image, label
        except CompressedShard:
            yield unit.shard, "compressed_shard", None
        except (tarfile.TarError, EOFError, OSError):
            yield unit.shard, "truncated", None


def samples(stream: Any, max_image_bytes: int = MAX_ENCODED_BYTES) -> Iterator[Sample]:
    """Samples of an uncompressed tar stream: members grouped by key, read in one pass.

    An image member above ``max_image_bytes`` is not read (its image is "too_large"), nor a
    label member above :data:`~raysl.data.readers.encoded.MAX_LABEL_BYTES` (its label is
    :data:`BAD_LABEL_TEXT`). Members with a label and no image are not samples; the census does
    not count them either.

    Raises:
        CompressedShard: the stream is compressed.
        tarfile.TarError: the stream is not a tar, or ends inside a member.
    """
    peeked = _Peeked(stream)
    if peeked.head.startswith(COMPRESSED_MAGIC):
        raise CompressedShard("a compressed stream, not an uncompressed tar")
    key: str | None = None
    image: bytes | str | None = None
    label: str | None = None
    with tarfile.open(fileobj=peeked, mode="r|") as tar:  # type: ignore[call-overload]
        for member in tar:
            if not member.isfile():
                continue
            base = posixpath.basename(member.name)
            stem, _, ext = base.partition(".")
            this = posixpath.join(posixpath.dirname(member.name), stem)
            if this != key:
                if key is not None and (image is not None or label is None):
                    yield Sample(key, image, label)
                key, image, label = this, None, None
            ext = ext.lower()
            if image is None and f".{ext}" in IMAGE_EXTENSIONS:
                image = "too_large" if member.size > max_image_bytes else _read(tar, member)
            elif ext in LABEL_EXTENSIONS and label is None:
                label = BAD_LABEL_TEXT if member.size > MAX_LABEL_BYTES else \
                    _label_text(ext, _read(tar, member))
    if key is not None and (image is not None or label is None):
        yield Sample(key, image, label)


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    data = tar.extractfile(member)
    return data.read() if data is not None else b""


class _Peeked:
    """A stream whose first bytes were read ahead (to tell a compressed one), then the rest.

    ``read`` may return fewer bytes than asked, as a stream may (tarfile reads on).
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.head = self.left = bytes(stream.read(8))

    def read(self, n: int = -1) -> bytes:
        if self.left:
            out = self.left if n < 0 else self.left[:n]
            self.left = self.left[len(out):]
            return out
        return bytes(self.stream.read(n))


def _label_text(ext: str, payload: bytes) -> str | None:
    """A label member's text: None when empty, :data:`BAD_LABEL_TEXT` when it cannot be one."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return BAD_LABEL_TEXT
    if ext == "cls":
        return text or None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return BAD_LABEL_TEXT
    value = obj.get("label", obj.get("cls")) if isinstance(obj, dict) else None
    if isinstance(value, bool | dict | list):
        return BAD_LABEL_TEXT
    return None if value is None else str(value)


def _census(store: Store, shard: str) -> tuple[int, list[str], bool]:
    """Samples with an image in one shard, their labels, whether it is compressed (one pass)."""
    count, labels = 0, []
    try:
        with store.open_input(shard) as stream:
            for _, image, label in samples(stream):
                if image is not None:
                    count += 1
                    if label is not None and label != BAD_LABEL_TEXT and not _NEGATIVE.fullmatch(
                            label.strip()):  # never a class: the sample is a bad_label
                        labels.append(label)
    except CompressedShard:
        return 0, [], True
    except (tarfile.TarError, EOFError, OSError):
        pass  # counted as far as it reads; reading it again reports it as truncated
    return count, labels, False


def _read_index(store: Store, folder: str) -> dict[str, Any] | None:
    path = f"{folder.rstrip('/')}/{INDEX_FILE}"
    try:
        obj = json.loads(store.read(path))
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict) or obj.get("format") != INDEX_FORMAT \
            or not isinstance(obj.get("shards"), dict):
        return None
    out: dict[str, Any] = obj
    return out
