"""Hostile tar and parquet shards: bounded inflation, bad labels as bad samples.

Each test crafts its shard, reads it with the reader's ``read_unit`` (what a read task runs;
no Ray, but for the last test, which reads through ``read_source``) and checks what comes
out: the bad samples as the reasons they are skipped, and, for the bombs, that the peak of
Python allocations (``tracemalloc``; a cell or member read into memory is a Python ``bytes``)
and of Arrow's allocations stayed far below what the shard inflates to.
"""

import gzip
import io
import json
import tarfile
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysl.config import SourceConfig
from raysl.data.ledger import DecodePolicy
from raysl.data.readers.base import Item, Unit, list_target
from raysl.data.readers.encoded import MAX_ENCODED_BYTES, MAX_LABEL_BYTES, encoded_bound
from raysl.data.readers.parquet import Parquet
from raysl.data.readers.tar import Tar
from raysl.data.source import Reading, read_source, to_numpy
from raysl.data.storage import Store

MB = 2**20
IMG = b"\x89PNG\r\n\x1a\n" + bytes(100)  # read_unit passes bytes on; decoding is not tested here


def read_all(items: Callable[[], Iterator[Item]]) -> tuple[list[Item], float]:
    """Every item (an image as its size), and the peak (MiB) of Python's and Arrow's
    allocations while reading them: the reader's own, as each image is dropped when counted."""
    arrow = 0
    out: list[Item] = []
    tracemalloc.start()
    try:
        for name, payload, label in items():
            arrow = max(arrow, pa.total_allocated_bytes())
            out.append((name, payload if isinstance(payload, str) else str(len(payload)).encode(),
                        label))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, max(peak, arrow) / MB


def reasons(items: list[Item]) -> list[object]:
    """Per item: its label (an int or None) if read, else the reason it is skipped."""
    return [payload if isinstance(payload, str) else label for _, payload, label in items]


def write_tar(path: Path, members: list[tuple[str, bytes]], compress: bool = False) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buf.getvalue(), 9) if compress else buf.getvalue())
    return path


def read_tar(path: Path, classes: list[str] = (), bound: int = MAX_ENCODED_BYTES
             ) -> Callable[[], Iterator[Item]]:
    reader = Tar()
    reader.max_encoded_bytes = bound
    return lambda: reader.read_unit(Unit(1, shard=str(path)), Store(), list(classes))


def test_the_bound_is_8_bytes_a_pixel_and_a_mib_of_metadata():
    assert encoded_bound(100_000_000) == MAX_ENCODED_BYTES == 800_000_000 + MB


def test_a_compressed_shard_is_skipped_and_counted_not_inflated(tmp_path: Path):
    # 64 MiB of zeros as one image member: ~64 KiB gzipped.
    path = write_tar(tmp_path / "s.tar", [("0.png", bytes(64 * MB)), ("0.cls", b"1")],
                     compress=True)
    assert path.stat().st_size < MB
    items, peak = read_all(read_tar(path, ["0", "1"]))
    assert [(name, payload) for name, payload, _ in items] == [(str(path), "compressed_shard")]
    assert peak < 1


def test_an_image_member_above_the_bound_is_skipped_unread(tmp_path: Path):
    path = write_tar(tmp_path / "s.tar", [("0.png", IMG), ("1.png", bytes(8 * MB)),
                                          ("2.png", IMG)])
    items, peak = read_all(read_tar(path, bound=MB))
    assert reasons(items) == [None, "too_large", None]
    assert peak < 1  # the 8 MiB member was streamed past, never held


def test_bad_labels_are_bad_samples_not_a_failed_run_or_class_0(tmp_path: Path):
    path = write_tar(tmp_path / "s.tar", [
        ("a.png", IMG), ("a.cls", b"dog"),
        ("b.png", IMG), ("b.cls", b"bird"),  # a class the source does not have
        ("c.png", IMG), ("c.cls", b"3.5\n7"),  # malformed
        ("d.png", IMG),  # no label at all
        ("e.png", IMG), ("e.json", b'{"label": "cat"}'),
        ("f.png", IMG), ("f.json", b'{"label": '),  # malformed JSON
        ("g.png", IMG), ("g.cls", b"\xff\xfe"),  # not text
        ("h.png", IMG), ("h.cls", b"c" * (MAX_LABEL_BYTES + 1)),  # longer than any label
        ("i.png", IMG), ("i.cls", b"0"),  # a class index, as raysl shards writes .cls
        ("j.png", IMG), ("j.cls", b"2"),  # an index beyond the classes
    ])
    assert reasons(read_all(read_tar(path, ["cat", "dog"]))[0]) == [
        1, "bad_label", "bad_label", "no_label", 0, "bad_label", "bad_label", "bad_label", 0,
        "bad_label"]
    # Unlabeled (no class names): labels are not read, nothing is skipped for them.
    assert reasons(read_all(read_tar(path))[0]) == [None] * 10


def test_integer_labels_outside_the_classes_are_bad_samples(tmp_path: Path):
    path = write_tar(tmp_path / "s.tar", [
        ("a.png", IMG), ("a.cls", b"1"), ("b.png", IMG), ("b.cls", b"-1"),
        ("c.png", IMG), ("c.cls", b"3"), ("d.png", IMG), ("d.cls", b" 002\n"),
        ("e.png", IMG), ("e.json", b'{"cls": 0}'), ("f.png", IMG), ("f.json", b'{"cls": [0]}')])
    assert reasons(read_all(read_tar(path, ["0", "1", "2"]))[0]) == [
        1, "bad_label", "bad_label", 2, 0, "bad_label"]


def test_a_shard_not_grouped_by_key_loses_no_label_silently(tmp_path: Path):
    # `tar cf s.tar *.png *.cls`: every image comes before every label.
    path = write_tar(tmp_path / "s.tar", [("a.png", IMG), ("b.png", IMG), ("a.cls", b"1"),
                                          ("b.cls", b"0")])
    items = read_all(read_tar(path, ["0", "1"]))[0]
    assert [(name.rsplit("/", 1)[1], reason) for name, reason, _ in items] == [
        ("a", "no_label"), ("b", "no_label")]  # the labels alone are not samples


def write_parquet(path: Path, groups: list[dict[str, list[object]]], **kwargs: object) -> Path:
    with pq.ParquetWriter(path, pa.table(groups[0]).schema, **kwargs) as writer:
        for group in groups:
            writer.write_table(pa.table(group))
    return path


def read_parquet(path: Path, classes: list[str] = (), bound: int = MAX_ENCODED_BYTES,
                 label_col: str = "label") -> Callable[[], Iterator[Item]]:
    reader = Parquet()
    reader.image_col, reader.label_col, reader.max_encoded_bytes = "image", label_col, bound
    return lambda: reader.read_unit(Unit(1, shard=str(path)), Store(), list(classes))


def test_a_zstd_bomb_cell_is_skipped_before_its_row_group_is_inflated(tmp_path: Path):
    # One row group holding a 64 MiB cell of zeros (a few KiB of zstd), between good ones.
    path = write_parquet(tmp_path / "s.parquet", [
        {"image": [IMG, IMG], "label": ["a", "b"]},
        {"image": [bytes(64 * MB), IMG], "label": ["a", "a"]},
        {"image": [IMG], "label": ["b"]}], compression="zstd")
    assert path.stat().st_size < MB
    items, peak = read_all(read_parquet(path, ["a", "b"], bound=MB))
    assert reasons(items) == [0, 1, "too_large", "too_large", 1]
    assert [name.rsplit("#", 1)[1] for name, _, _ in items] == ["0", "1", "2", "3", "4"]
    assert peak < 4


def test_a_label_cell_bomb_is_skipped_before_it_is_inflated(tmp_path: Path):
    path = write_parquet(tmp_path / "s.parquet", [
        {"image": [IMG], "label": ["a" * (32 * MB)]}, {"image": [IMG], "label": ["a"]}],
        compression="zstd")
    items, peak = read_all(read_parquet(path, ["a"]))
    assert reasons(items) == ["too_large", 0] and peak < 4
    # Opening the source gathers the labels into classes: that group is not read there either.
    target = list_target(str(path), Store(), "data.source")
    tracemalloc.start()
    try:
        opened = Parquet().open(SourceConfig(path=str(path)), target, Store(), 0, "data.source")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert opened.class_names == ["a"] and peak < 4 * MB


def test_a_row_group_of_many_large_cells_is_read_a_few_rows_at_a_time(tmp_path: Path):
    # 16 cells of 2 MiB (32 MiB of zeros-like bytes in 2 KiB of zstd), one page each, under a
    # 3 MiB bound: each is read, a row at a time (64 at a time held all 32 MiB: 34 MiB).
    path = write_parquet(tmp_path / "s.parquet", [
        {"image": [bytes([i]) * (2 * MB) for i in range(16)], "label": ["a"] * 16}],
        compression="zstd", use_dictionary=False, write_batch_size=1, data_page_size=MB)
    items, peak = read_all(read_parquet(path, ["a"], bound=3 * MB))
    assert reasons(items) == [0] * 16 and peak < 12


def test_parquet_bad_labels_are_bad_samples(tmp_path: Path):
    path = write_parquet(tmp_path / "s.parquet", [
        {"image": [IMG] * 5, "label": ["cat", "bird", None, " dog ", "x" * (MAX_LABEL_BYTES + 1)]}])
    assert reasons(read_all(read_parquet(path, ["cat", "dog"]))[0]) == [
        0, "bad_label", "no_label", 1, "bad_label"]
    ints = write_parquet(tmp_path / "i.parquet", [
        {"image": [IMG] * 4, "label": pa.array([0, -1, 5, 1], pa.int64())}])
    assert reasons(read_all(read_parquet(ints, ["0", "1"]))[0]) == [0, "bad_label", "bad_label", 1]


def test_an_unreadable_parquet_shard_is_cut_and_counted(tmp_path: Path):
    path = write_parquet(tmp_path / "s.parquet", [{"image": [IMG] * 3, "label": ["a"] * 3}])
    data = bytearray(path.read_bytes())
    data[4:40] = bytes(36)  # the first page's header and data
    path.write_bytes(bytes(data))
    items = read_all(read_parquet(path, ["a"]))[0]
    assert [payload for _, payload, _ in items] == ["corrupt"]


def test_a_json_label_member_is_read_as_its_label_field(tmp_path: Path):
    path = write_tar(tmp_path / "s.tar", [("a.png", IMG),
                                          ("a.json", json.dumps({"label": 1}).encode())])
    assert reasons(read_all(read_tar(path, ["0", "1"]))[0]) == [1]


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (12, 12), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.usefixtures("ray_session")
def test_a_run_skips_and_counts_bad_labels_and_keeps_the_rest(tmp_path: Path):
    """Through read_source, decoded by Ray: the counts by reason and the good rows' labels."""
    png = _png()
    (tmp_path / "t").mkdir()
    write_tar(tmp_path / "t" / "a.tar", [
        ("0.png", png), ("0.cls", b"cat"), ("1.png", png), ("1.cls", b"dog"),
        ("2.png", png), ("2.cls", b"-1"),  # negative: never a class, a bad sample
        ("3.png", png),  # no label
        ("4.png", png), ("4.cls", b"dog")])
    write_parquet(tmp_path / "p.parquet", [
        {"image": [png] * 5, "label": ["cat", "dog", "-1", None, "dog"]}])
    for path in (tmp_path / "t", tmp_path / "p.parquet"):
        src = read_source(SourceConfig(path=str(path)), Reading(3, 12, policy=DecodePolicy(
            max_bad_fraction=0.5)))
        x, y = to_numpy(src)
        assert src.class_names == ["cat", "dog"], path
        assert src.skipped == {"bad_label": 1, "no_label": 1}, path
        assert len(x) == 3 and sorted(y.tolist()) == [0, 1, 1], path
    # With an index naming the classes, a name it lacks is a bad sample too.
    (tmp_path / "t" / "shards.json").write_text(json.dumps(
        {"format": "raysl-shards/1", "shards": {"a.tar": 5}, "class_names": ["cat", "bird"]}))
    src = read_source(SourceConfig(path=str(tmp_path / "t")),
                      Reading(3, 12, policy=DecodePolicy(max_bad_fraction=0.9)))
    assert src.skipped == {"bad_label": 3, "no_label": 1} and to_numpy(src)[1].tolist() == [0]
