"""Streaming sources: the same images as the cached path, each once per epoch, shards anywhere."""

import hashlib
import io
import tarfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import ray
from PIL import Image

from raysl.config import SourceConfig
from raysl.data import source as source_mod
from raysl.data.ledger import DecodePolicy
from raysl.data.readers.base import Unit, list_target
from raysl.data.shards import write_shards
from raysl.data.source import DataError, Reading, read_source, to_numpy
from raysl.data.storage import Store

pytestmark = pytest.mark.usefixtures("ray_session")

LENIENT = DecodePolicy(max_bad_fraction=0.5)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _tree(root: Path, n: int = 40, bad: int = 3, seed: int = 0) -> None:
    """``n`` images in two class folders, plus ``bad`` files that do not decode."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (root / f"c{i % 2}" / f"{i:03d}.png").write_bytes(
            _png(rng.integers(0, 255, (12, 14, 3), dtype=np.uint8)))
    for i in range(bad):
        (root / "c1" / f"bad{i}.png").write_bytes(b"not a png")


def _hashes(x: np.ndarray) -> Counter[str]:
    return Counter(hashlib.sha1(img.tobytes()).hexdigest() for img in x)


def test_streaming_and_cached_give_the_same_images_and_counts(tmp_path: Path):
    _tree(tmp_path)
    cfg = SourceConfig(path=str(tmp_path))
    cached = read_source(cfg, Reading(3, 12, policy=LENIENT, cache="memory"))
    streamed = read_source(cfg, Reading(3, 12, policy=LENIENT, cache="none"))
    assert cached.cache == "memory" and streamed.cache == "none"
    assert cached.num_images == 40 and streamed.num_images == 43  # a stream knows only the list
    first, labels = to_numpy(streamed)
    second, _ = to_numpy(streamed)  # a second epoch decodes again
    expected = _hashes(to_numpy(cached)[0])
    assert _hashes(first) == expected and _hashes(second) == expected
    assert sorted(labels.tolist()) == [0] * 20 + [1] * 20
    streamed.tally()
    assert streamed.skipped == cached.skipped == {"not_an_image": 3}


def test_each_epoch_reads_the_units_in_its_own_seeded_order(tmp_path: Path):
    _tree(tmp_path, n=8, bad=0)
    store = Store()
    cfg = SourceConfig(path=str(tmp_path))
    from raysl.data.source import UnitSource, pick_reader

    target = list_target(cfg.path, store, "data.source")
    encoded = pick_reader(cfg, target, store, "data.source").open(cfg, target, store, 0, "x")
    many = [Unit(1, (p,)) for u in encoded.units for p in u.paths]
    encoded.units = many

    def orders(seed: int) -> list[list[int]]:
        """The unit read by each task, in task order, for two executions (epochs)."""
        src = UnitSource(encoded, store, 1, 8, LENIENT, None, seed, cfg.path, shuffle=True)
        # Each task's function carries its own unit (and only that unit).
        return [[many.index(t.read_fn.unit) for t in src.get_read_tasks(1)] for _ in range(2)]

    one, again = orders(1), orders(1)
    assert one == again  # seeded
    assert one[0] != one[1] and sorted(one[0]) == sorted(one[1]) == list(range(8))


def test_two_workers_split_the_stream_each_image_once(tmp_path: Path):
    _tree(tmp_path, n=60, bad=0)
    src = read_source(SourceConfig(path=str(tmp_path)), Reading(3, 12, cache="none"))
    expected = _hashes(to_numpy(src)[0])
    shards = src.dataset.streaming_split(2, equal=False)
    seen: list[Counter[str]] = [Counter(), Counter()]

    def consume(i: int) -> None:
        for batch in shards[i].iter_batches(batch_size=8, batch_format="numpy"):
            seen[i] += _hashes(batch["image"])

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert seen[0] and seen[1] and seen[0] + seen[1] == expected


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_corrupt_shard_members_and_cut_shards_are_skipped_and_counted(tmp_path: Path, rng):
    good = [_png(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)) for _ in range(6)]
    _tar(tmp_path / "a-0.tar", [(f"{i}.png", good[i]) for i in range(3)]
         + [("3.png", b"garbage")])  # unlabeled: a label on one sample would make 6 no_label
    _tar(tmp_path / "a-1.tar", [(f"{i + 4}.png", good[i + 3]) for i in range(3)])
    whole = (tmp_path / "a-1.tar").read_bytes()
    # Cut inside the second member's data (512-byte header, data padded to 512, each PNG < 512).
    (tmp_path / "a-2.tar").write_bytes(whole[:1024 + 512 + 100])
    for cache in ("memory", "none"):
        src = read_source(SourceConfig(path=str(tmp_path / "a-{0..2}.tar")),
                          Reading(3, 10, policy=LENIENT, cache=cache))
        x, _ = to_numpy(src)
        src.tally()
        assert len(x) == 7  # 6 good + the cut shard's first member
        assert src.skipped == {"not_an_image": 1, "truncated": 1}, cache
        assert any("a-0.tar/3: not_an_image" in e for e in src.skipped_examples)


def test_a_stream_with_too_many_bad_images_stops_naming_them(tmp_path: Path):
    _tree(tmp_path, n=10, bad=4)
    src = read_source(SourceConfig(path=str(tmp_path)), Reading(3, 12, cache="none"))  # 10% allowed
    with pytest.raises(DataError, match=r"data.max_bad_fraction=0.1: 4 of the 14 .*bad0.png"
                                        r".*after the first 14 images of the stream"):
        to_numpy(src)
    assert "4 of the 14" in src.stream_failure()
    failing = read_source(SourceConfig(path=str(tmp_path)),
                          Reading(3, 12, policy=DecodePolicy(on_error="fail", max_bad_fraction=1.0),
                                  cache="none"))
    with pytest.raises(DataError, match=r"data.on_error='fail'"):
        to_numpy(failing)


def test_shards_written_locally_read_back_the_same_images(tmp_path: Path):
    _tree(tmp_path / "src", n=30, bad=2)
    result = write_shards(SourceConfig(path=str(tmp_path / "src")), str(tmp_path / "tar"),
                          shard_size=8, log=lambda _: None)
    assert result.samples == 32 and len(result.shards) == 4  # bad bytes are copied as they are
    assert (tmp_path / "tar" / "shards.json").exists()
    original = read_source(SourceConfig(path=str(tmp_path / "src")), Reading(3, 12, policy=LENIENT))
    for fmt in ("tar", "parquet"):
        if fmt == "parquet":
            write_shards(SourceConfig(path=str(tmp_path / "src")), str(tmp_path / "pq"),
                         shard_size=8, fmt="parquet", log=lambda _: None)
        src = read_source(SourceConfig(path=str(tmp_path / ("tar" if fmt == "tar" else "pq"))),
                          Reading(3, 12, policy=LENIENT, cache="none"))
        x, y = to_numpy(src)
        src.tally()
        assert src.skipped == {"not_an_image": 2}, fmt
        assert _hashes(x) == _hashes(to_numpy(original)[0]) and src.class_names == ["c0", "c1"]
        assert sorted(y.tolist()) == [0] * 15 + [1] * 15
    assert "counted" not in " ".join(read_source(SourceConfig(path=str(tmp_path / "tar")),
                                                 Reading(3, 12, policy=LENIENT)).notes)


def test_array_sources_become_png_shards(tmp_path: Path, rng):
    images = rng.integers(0, 255, (10, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(10) % 2)
    write_shards(SourceConfig(path=str(tmp_path / "d.npz")), str(tmp_path / "out"),
                 shard_size=4, log=lambda _: None)
    x, y = to_numpy(read_source(SourceConfig(path=str(tmp_path / "out")), Reading(1, 8)))
    assert _hashes(x) == _hashes(images[..., None]) and sorted(y) == [0] * 5 + [1] * 5


def test_shards_to_and_from_a_loopback_s3_server_with_a_brace_pattern(s3_env: str,
                                                                       tmp_path: Path):
    pafs.S3FileSystem(endpoint_override=s3_env.split("://")[1], scheme="http",
                      access_key="raysl-test", secret_key="raysl-test-secret",
                      region="us-east-1", allow_bucket_creation=True).create_dir("raysl-shards")
    _tree(tmp_path / "src", n=20, bad=0)
    write_shards(SourceConfig(path=str(tmp_path / "src")), "s3://raysl-shards/train",
                 shard_size=6, log=lambda _: None)
    local = read_source(SourceConfig(path=str(tmp_path / "src")), Reading(3, 12))
    for path in ("s3://raysl-shards/train", "s3://raysl-shards/train/shard-{000000..000003}.tar"):
        src = read_source(SourceConfig(path=path), Reading(3, 12, cache="none"))
        assert src.num_images == 20 and src.class_names == ["c0", "c1"]
        assert _hashes(to_numpy(src)[0]) == _hashes(to_numpy(local)[0])
    with pytest.raises(DataError, match=r"1 of the 5 files of the pattern do not exist"):
        read_source(SourceConfig(path="s3://raysl-shards/train/shard-{000000..000004}.tar"),
                    Reading(3, 12))


def test_limit_takes_whole_shards_then_part_of_one(tmp_path: Path):
    _tree(tmp_path / "src", n=20, bad=0)
    write_shards(SourceConfig(path=str(tmp_path / "src")), str(tmp_path / "s"), shard_size=6,
                 log=lambda _: None)
    src = read_source(SourceConfig(path=str(tmp_path / "s"), limit=9), Reading(3, 12))
    assert src.num_images == 9 and len(to_numpy(src)[0]) == 9


def test_auto_cache_keeps_what_fits_and_streams_what_does_not():
    store = float(ray.cluster_resources()["object_store_memory"])
    mode, why = source_mod._cache_mode("auto", int(0.1 * store))
    assert mode == "memory" and "fit 40% of the" in why
    mode, why = source_mod._cache_mode("auto", int(0.5 * store))
    assert mode == "none" and "decoded every epoch" in why
    assert source_mod._cache_mode("none", 1)[0] == "none"


def test_first_images_are_the_same_fixed_sample_cached_or_streamed(tmp_path: Path):
    """The label-free monitors' sample: the same images whatever the cache mode, every time.

    A streamed source reads it on its own: its bad files are not counted twice and the
    training stream's epochs (their seeded unit orders) are not used up.
    """
    _tree(tmp_path, n=60)
    cfg = SourceConfig(path=str(tmp_path))
    cached = read_source(cfg, Reading(3, 12, policy=LENIENT, cache="memory"))
    streamed = read_source(cfg, Reading(3, 12, policy=LENIENT, cache="none"))
    assert streamed.units is not None
    executions = streamed.units.executions
    sample = source_mod.first_images(streamed, 20)
    assert sample.shape == (20, 12, 12, 3)
    assert np.array_equal(sample, source_mod.first_images(streamed, 20))  # fixed
    assert np.array_equal(sample, source_mod.first_images(cached, 20))  # whatever the cache
    assert streamed.units.executions == executions  # the stream's epochs are its own
    first_epoch, _ = to_numpy(streamed)
    streamed.tally()
    assert streamed.skipped == {"not_an_image": 3}  # counted once, by the training stream
    assert len(first_epoch) == 60


def test_a_whole_image_pass_beside_the_stream_counts_no_bad_file_twice(tmp_path: Path):
    """DeepCluster's pass over the training set decodes a streamed source again: every good
    image once, with its index and label, and the bad files stay counted once."""
    from raysl import config as C
    from raysl.data.pipeline import whole_image_stream

    _tree(tmp_path)  # 40 images and 3 bad files
    src = read_source(SourceConfig(path=str(tmp_path)),
                      Reading(3, 12, policy=LENIENT, cache="none"))
    to_numpy(src)  # the training stream's epoch: it counts the bad files
    data = C.load(None, ["data.image_size=16", "data.channels=3"]).data
    rows = whole_image_stream(src, data, max_tasks=1).take_all()
    assert len(rows) == 40 and len({int(r["index"]) for r in rows}) == 40
    assert rows[0]["image"].shape == (3, 16, 16) and {int(r["label"]) for r in rows} == {0, 1}
    src.tally()
    assert src.skipped == {"not_an_image": 3}


def test_shards_rewritten_only_with_overwrite_and_never_mixed(tmp_path: Path):
    _tree(tmp_path / "src", n=30, bad=0)
    src = SourceConfig(path=str(tmp_path / "src"))
    for fmt in ("tar", "parquet"):
        out = tmp_path / fmt
        write_shards(src, str(out), shard_size=4, fmt=fmt, log=lambda _: None)  # 8 shards
        with pytest.raises(DataError, match="the folder exists; pass --overwrite"):
            write_shards(src, str(out), shard_size=16, fmt=fmt, log=lambda _: None)
        result = write_shards(src, str(out), shard_size=16, fmt=fmt, log=lambda _: None,
                              overwrite=True)
        names = sorted(p.name for p in out.iterdir())
        assert len(result.shards) == 2 and names == sorted(
            [*result.shards, "_manifest.json", *(["shards.json"] if fmt == "tar" else [])])
        again = read_source(SourceConfig(path=str(out)), Reading(3, 12, cache="none"))
        assert again.num_images == 30 and len(to_numpy(again)[0]) == 30  # no old shard read
    with pytest.raises(DataError, match="overlaps the source"):
        write_shards(src, str(tmp_path / "src" / "shards"), log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parquet", "src", "tar"]
