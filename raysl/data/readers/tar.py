"""WebDataset-style tar shards, each read as a stream (as object stores serve them), one per unit.

Each sample is the members sharing a key (``000123.jpg``, ``000123.cls``): the image plus an
optional label (``.cls``: an integer or a class name; ``.json``: its ``label`` or ``cls``). A
``shards.json`` index beside the shards (``raysl shards`` writes it) gives the sample counts and
class names; without it the shards are counted when the source is opened.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from raysl.config import SourceConfig
from raysl.data.formats import DataError
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
from raysl.data.storage import LISTING_THREADS, Store
from raysl.registry import register

INDEX_FILE = "shards.json"  # {"shards": {name: samples}, "class_names": [...]}
INDEX_FORMAT = "raysl-shards/1"
LABEL_EXTENSIONS = ("cls", "json")

# One sample: its key, image bytes (or None), label text (or None).
Sample = tuple[str, bytes | None, str | None]


@register("reader", "tar")
class Tar(Reader):
    """Tar shards (a directory of them, a brace pattern such as ``s-{000..099}.tar``, or one)."""

    name = "tar"
    summary = "WebDataset-style tar shards (a directory, a {000..099} pattern, or one .tar)"
    detect_order = 30

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
        notes = []
        names = {posixpath.basename(s) for s in shards}
        if index is not None and names <= set(index["shards"]):
            counts = [int(index["shards"][posixpath.basename(s)]) for s in shards]
            classes = [str(c) for c in index.get("class_names", [])]
        else:
            notes.append(f"no {INDEX_FILE} beside the shards: counted the samples of "
                         f"{len(shards)} shard(s) (`raysl shards` writes one)")
            with ThreadPoolExecutor(min(LISTING_THREADS, len(shards))) as pool:
                censuses = list(pool.map(lambda s: _census(store, s), shards))
            counts = [n for n, _ in censuses]
            labels = [v for _, part in censuses for v in part]
            classes = labels_of(labels, f"{field_name}.path={cfg.path!r}")[1] if labels else []
        if sum(counts) == 0:
            raise DataError(f"{field_name}.path={cfg.path!r}: the shards hold no samples")
        n_classes = f", {len(classes)} classes" if classes else ""
        desc = f"{target.name} ({{n}} images in {len(shards)} shards{n_classes})"
        return Encoded(shard_units(shards, counts, seed, cfg.limit), classes, desc, self, notes)

    def read_unit(self, unit: Unit, store: Store, class_names: Sequence[str]) -> Iterator[Item]:
        """The shard's samples in order; a shard cut short ends with one "truncated" item."""
        index = {c: i for i, c in enumerate(class_names)}
        n = 0
        try:
            with store.open_input(unit.shard) as stream:
                for key, image, label in samples(stream):
                    if unit.take and n >= unit.take:
                        return
                    name = f"{unit.shard}/{key}"
                    yield (name, image if image is not None else "not_an_image",
                           None if label is None else _label(label, index))
                    n += 1
        except (tarfile.TarError, EOFError, OSError):
            yield unit.shard, "truncated", None


def samples(stream: object) -> Iterator[Sample]:
    """Samples of a tar stream: members grouped by key, read in one pass.

    Raises:
        tarfile.TarError: the stream is not a tar, or ends inside a member.
    """
    key, image, label = None, None, None
    with tarfile.open(fileobj=stream, mode="r|*") as tar:  # type: ignore[call-overload]
        for member in tar:
            if not member.isfile():
                continue
            base = posixpath.basename(member.name)
            stem, _, ext = base.partition(".")
            this = posixpath.join(posixpath.dirname(member.name), stem)
            if this != key:
                if key is not None:
                    yield key, image, label
                key, image, label = this, None, None
            ext = ext.lower()
            wanted = image is None and f".{ext}" in IMAGE_EXTENSIONS
            if wanted or ext in LABEL_EXTENSIONS:
                data = tar.extractfile(member)
                payload = data.read() if data is not None else b""
                if wanted:
                    image = payload
                elif label is None:
                    label = _label_text(ext, payload)
    if key is not None:
        yield key, image, label


def _label_text(ext: str, payload: bytes) -> str | None:
    text = payload.decode("utf-8", errors="replace").strip()
    if ext == "cls":
        return text or None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    value = obj.get("label", obj.get("cls")) if isinstance(obj, dict) else None
    return None if value is None else str(value)


def _label(text: str, index: dict[str, int]) -> int:
    return int(text) if text.lstrip("-").isdigit() else index[text]


def _census(store: Store, shard: str) -> tuple[int, list[str]]:
    """Samples with an image in one shard, and their labels (one pass over the stream)."""
    count, labels = 0, []
    try:
        with store.open_input(shard) as stream:
            for _, image, label in samples(stream):
                if image is not None:
                    count += 1
                    if label is not None:
                        labels.append(label)
    except (tarfile.TarError, EOFError, OSError):
        pass  # counted as far as it reads; reading it again reports it as truncated
    return count, labels


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
