"""``raysl shards`` of an array source above ``max_array_bytes``: read a slice at a time.

Every row reaches exactly one shard (labels with their images), each shard mixes rows from its
whole window, and the driver's allocations stay around a slice, far below the array.
"""

import hashlib
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from raysl.config import SourceConfig
from raysl.data import shards
from raysl.data.shards import write_shards
from raysl.data.source import Reading, read_source, to_numpy
from tests.data.test_array_readers import write_idx

pytestmark = pytest.mark.usefixtures("ray_session")

N, SHARD = 3000, 100
WINDOW_SHARDS = 8  # MIX_SHARDS here: 800-row windows, the last one 600


def _key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def _source(tmp_path: Path, kind: str) -> tuple[SourceConfig, np.ndarray, np.ndarray | None]:
    """A random array source of N rows, in the file format ``kind``, with a 1-KB limit."""
    rng = np.random.default_rng(1)
    if kind == "npy":
        images = rng.integers(0, 255, (N, 32, 32, 3), dtype=np.uint8)
        np.save(tmp_path / "x.npy", images)
        return SourceConfig(path=str(tmp_path / "x.npy"), max_array_bytes=1000), images, None
    images = rng.integers(0, 255, (N, 48, 48), dtype=np.uint8)
    labels = np.arange(N) % 10
    (tmp_path / "idx").mkdir()
    write_idx(tmp_path / "idx" / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "idx" / "train-labels-idx1-ubyte.gz", labels)
    return SourceConfig(path=str(tmp_path / "idx"), max_array_bytes=1000), images, labels


@pytest.mark.parametrize("kind", ["npy", "idx"])
def test_an_array_above_the_limit_is_sharded_a_slice_at_a_time(tmp_path: Path, kind: str,
                                                               monkeypatch):
    cfg, images, labels = _source(tmp_path, kind)
    slice_rows = 25
    monkeypatch.setattr(shards, "SLICE_BYTES", slice_rows * images[0].nbytes)
    monkeypatch.setattr(shards, "MIX_SHARDS", WINDOW_SHARDS)
    # First, what a first call allocates once (imports, Ray's registration of the task).
    write_shards(SourceConfig(path=cfg.path, limit=10, max_array_bytes=1000),
                 str(tmp_path / "warm"), log=lambda _: None)
    tracemalloc.start()
    try:
        result = write_shards(cfg, str(tmp_path / "out"), shard_size=SHARD, log=lambda _: None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.samples == N and len(result.shards) == N // SHARD
    # The driver held a slice (25 rows, 58-77 KB) at a time and Ray's handles of the window's
    # pieces (~1 MB here), never the array (6.9-9.2 MB).
    assert peak < images.nbytes / 4, f"peak {peak} bytes for a {images.nbytes}-byte array"

    channels, side = (3 if kind == "npy" else 1), images.shape[1]  # PNGs read back unresized
    x, y = to_numpy(read_source(SourceConfig(path=str(tmp_path / "out")),
                                Reading(channels, side, cache="none")))
    index = {_key(img): i for i, img in enumerate(images)}
    assert Counter(_key(img.squeeze()) for img in x) == Counter(list(index))  # each row once
    if labels is not None:
        assert y is not None and result.class_names == [str(i) for i in range(10)]
        assert [labels[index[_key(img.squeeze())]] for img in x] == y.tolist()

    # Shard 0 holds rows from all over its window (the first 800 rows), in a shuffled order.
    first = read_source(SourceConfig(path=str(tmp_path / "out" / "shard-000000.tar")),
                        Reading(channels, side, cache="none"))
    rows = [index[_key(img.squeeze())] for img in to_numpy(first)[0]]
    assert len(rows) == SHARD and max(rows) < SHARD * WINDOW_SHARDS
    assert max(rows) - min(rows) > 4 * SHARD and rows != sorted(rows)


def test_limit_keeps_a_seeded_subset_of_a_sliced_array(tmp_path: Path, monkeypatch):
    cfg, images, _ = _source(tmp_path, "idx")
    monkeypatch.setattr(shards, "SLICE_BYTES", 64 * images[0].nbytes)
    written = []
    for seed in (0, 0, 1):
        out = tmp_path / f"out{len(written)}"
        result = write_shards(SourceConfig(path=cfg.path, limit=250, max_array_bytes=1000),
                              str(out), shard_size=SHARD, seed=seed, log=lambda _: None)
        assert result.samples == 250 and list(result.shards.values()) == [100, 100, 50]
        x, _ = to_numpy(read_source(SourceConfig(path=str(out)), Reading(1, images.shape[1])))
        written.append({_key(img.squeeze()) for img in x})
    assert len(written[0]) == 250 and written[0] <= {_key(img) for img in images}
    assert written[0] == written[1] and written[0] != written[2]  # seeded
