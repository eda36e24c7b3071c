"""``write_shards(rows=...)``: only the rows asked for, numbered as ``read_source`` numbers them.

What ``raysl curate`` relies on to write its selection of a source that is not made of files:
the ``index`` a row has in ``read_source`` (and so in ``raysl embed``'s output) names the same
image when the source is read again for shards, whatever its reader: arrays read whole or a
slice at a time, files, tar and parquet shards (a corrupt member keeping its place). Written
as tar, a parquet source's images get members named by their bytes (``.png``), which the tar
reader reads: named after their row (``x.parquet#3``) they were written and never read.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

from raysl.config import SourceConfig
from raysl.data.ledger import DecodePolicy
from raysl.data.shards import write_shards
from raysl.data.source import Reading, read_source

pytestmark = pytest.mark.usefixtures("ray_session")

N, SIDE, CLASSES = 90, 12, 3
READING = Reading(1, SIDE, DecodePolicy("skip", 1.0, 10**8, 1), "memory")


def _images() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.integers(0, 255, (N, SIDE, SIDE), dtype=np.uint8), np.arange(N) % CLASSES


def _folder(root: Path) -> SourceConfig:
    images, labels = _images()
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / f"c{label}" / f"{i:03d}.png")
    return SourceConfig(path=str(root))


def _source(tmp_path: Path, kind: str) -> tuple[SourceConfig, SourceConfig]:
    """(the source as written, the same source as ``read_source`` can read it whole)."""
    if kind == "npz":
        images, labels = _images()
        np.savez(tmp_path / "x.npz", x=images, y=labels)
        cfg = SourceConfig(path=str(tmp_path / "x.npz"))
        return cfg, cfg
    if kind == "npz-sliced":  # above max_array_bytes: read a slice at a time for shards
        images, labels = _images()
        np.savez(tmp_path / "x.npz", x=images, y=labels)
        return (SourceConfig(path=str(tmp_path / "x.npz"), max_array_bytes=1000),
                SourceConfig(path=str(tmp_path / "x.npz")))
    folder = _folder(tmp_path / "folder")
    if kind == "folder":
        return folder, folder
    fmt = kind.split("-")[0]
    write_shards(folder, str(tmp_path / fmt), shard_size=8, fmt=fmt, log=lambda _: None)
    cfg = SourceConfig(path=str(tmp_path / fmt))
    if kind == "tar-corrupt":  # a member that is no image: it keeps its index, unread
        first = sorted((tmp_path / "tar").glob("shard-*.tar"))[0]
        with tarfile.open(first) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
        with tarfile.open(first, "w") as tar:
            for m, data in members:
                data = b"not an image" if m.name == "000001.png" else data
                m.size = len(data)
                tar.addfile(m, io.BytesIO(data))
    return cfg, cfg


def _rows(dataset: ray.data.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, labels and indices of a (small) read, in index order."""
    batches = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    index = np.concatenate([b["index"] for b in batches])
    order = np.argsort(index)
    return (np.concatenate([b["image"] for b in batches])[order],
            np.concatenate([b["label"] for b in batches])[order], index[order])


def _hash(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def _hashes(images: np.ndarray) -> Counter[str]:
    return Counter(_hash(x) for x in images)


def _labelled(images: np.ndarray, labels: np.ndarray) -> dict[str, int]:
    return {_hash(x): int(y) for x, y in zip(images, labels, strict=True)}


@pytest.mark.parametrize("kind", ["npz", "npz-sliced", "folder", "tar", "tar-corrupt",
                                  "parquet"])
def test_only_the_rows_asked_for_are_written(tmp_path: Path, kind: str):
    cfg, whole = _source(tmp_path, kind)
    read = read_source(whole, READING, 0)
    images, labels, index = _rows(read.dataset)
    pick = np.sort(np.random.default_rng(3).choice(len(index), 31, replace=False))
    rows = index[pick]
    result = write_shards(cfg, str(tmp_path / "out"), shard_size=10, rows=rows,
                          log=lambda _: None)
    assert result.samples == 31
    sizes = list(result.shards.values())  # regrouped: at least 10 a shard but the last one
    assert all(n >= 10 for n in sizes[:-1])
    assert kind.startswith(("tar", "parquet")) or sizes[0] == 10  # shard units are not split
    back = read_source(SourceConfig(path=str(tmp_path / "out")), READING, 0)
    got_images, got_labels, _ = _rows(back.dataset)
    assert _hashes(got_images) == _hashes(images[pick]) and len(_hashes(got_images)) == 31
    assert back.class_names == read.class_names
    assert _labelled(got_images, got_labels) == _labelled(images[pick], labels[pick])
    if kind == "tar-corrupt":
        assert read.skipped == {"not_an_image": 1} and len(index) == N - 1


def test_no_rows_of_a_unit_skip_it_and_rows_past_the_source_write_nothing(tmp_path: Path):
    cfg, _ = _source(tmp_path, "tar")
    result = write_shards(cfg, str(tmp_path / "out"), shard_size=100,
                          rows=np.array([0, 1, 2], np.int64), log=lambda _: None)
    assert result.samples == 3 and len(result.shards) == 1
    with pytest.raises(Exception, match="no image could be read"):
        write_shards(cfg, str(tmp_path / "none"), rows=np.array([N + 5], np.int64),
                     log=lambda _: None)


def test_rows_in_any_order_and_repeated_are_each_written_once(tmp_path: Path):
    cfg, _ = _source(tmp_path, "npz")
    result = write_shards(cfg, str(tmp_path / "out"), rows=np.array([7, 3, 7, 0], np.int64),
                          log=lambda _: None)
    assert result.samples == 3


def test_a_job_reads_a_bounded_number_of_source_shards(tmp_path: Path, monkeypatch):
    from raysl.data import shards

    cfg, _ = _source(tmp_path, "tar")  # 12 shards: 11 of 8 images, one of 2
    monkeypatch.setattr(shards, "MAX_SHARDS_READ", 3)
    result = write_shards(cfg, str(tmp_path / "out"), shard_size=1000,
                          rows=np.arange(N, dtype=np.int64), log=lambda _: None)
    assert sorted(result.shards.values()) == [18, 24, 24, 24]  # 3 source shards a job
