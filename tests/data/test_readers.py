import gzip
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raysl.config import SourceConfig
from raysl.data.readers.idx import parse_idx
from raysl.data.source import (
    DataError,
    DecodePolicy,
    Reading,
    read_source,
    to_channels,
    to_numpy,
)

pytestmark = pytest.mark.usefixtures("ray_session")


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_reader(tmp_path: Path, rng):
    images = rng.integers(0, 255, (30, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 30, dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    src = read_source(SourceConfig(path=str(tmp_path)), Reading(1, 32))
    assert src.num_images == 30 and src.labeled
    x, y = to_numpy(src)
    assert x.shape == (30, 28, 28, 1) and x.dtype == np.uint8
    # The same rows, in a seeded random order (so blocks mix classes), labels kept with images.
    order = [next(i for i in range(30) if np.array_equal(images[i], row)) for row in x[..., 0]]
    assert sorted(order) == list(range(30)) and np.array_equal(y, labels[order])
    rgb, _ = to_numpy(read_source(SourceConfig(path=str(tmp_path), limit=7), Reading(3, 32)))
    assert rgb.shape == (7, 28, 28, 3)


def test_idx_rejects_truncated_file(tmp_path: Path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"x")
    with pytest.raises(DataError, match="header says"):
        parse_idx(path.read_bytes(), path.name)


def test_real_fashion_mnist(fmnist_dir: Path):
    src = read_source(SourceConfig(path=str(fmnist_dir), split="t10k", limit=100), Reading(1, 32))
    x, y = to_numpy(src)
    assert x.shape == (100, 28, 28, 1) and src.class_names[0] == "T-shirt/top"
    assert set(np.unique(y)) <= set(range(10)) and len(np.unique(y)) > 5
    assert 50 < x.mean() < 100  # real clothing images, not noise (mean ~73)


def test_npz_reader(tmp_path: Path, rng):
    np.savez(tmp_path / "gray.npz", images=rng.integers(0, 255, (12, 20, 24), dtype=np.uint8),
             labels=np.arange(12) % 3)
    src = read_source(SourceConfig(path=str(tmp_path / "gray.npz")), Reading(3, 32))
    x, y = to_numpy(src)
    assert x.shape == (12, 20, 24, 3) and sorted(y.tolist()) == sorted(np.arange(12) % 3)
    np.savez(tmp_path / "rgb.npz", x=rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8))
    src = read_source(SourceConfig(path=str(tmp_path / "rgb.npz")), Reading(3, 32))
    assert not src.labeled and to_numpy(src)[1] is None


@pytest.mark.parametrize(("arrays", "message"), [
    ({"pixels": np.zeros((2, 8, 8), np.uint8)}, "no image array"),
    ({"images": np.zeros((2, 8, 8), np.float32)}, "expected uint8"),
    ({"images": np.zeros((2, 8, 8), np.uint8), "labels": np.zeros(3, int)}, "integer labels"),
])
def test_npz_errors_say_what_is_wrong(tmp_path: Path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        read_source(SourceConfig(path=str(tmp_path / "bad.npz")), Reading(1, 32))


def _image_tree(root: Path, rng) -> None:
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            arr = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(arr).save(root / cls / f"{i}.{ext}")
    (root / "dog" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "notes.png").write_text("not an image")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(root / "cat" / "tiny.png")
    good = (root / "cat" / "0.jpg").read_bytes()
    (root / "cat" / "cut.jpg").write_bytes(good[: len(good) // 2])
    (root / "cat" / ".hidden.png").write_bytes(b"")  # hidden files are not images of the set
    (root / "dog" / "readme.txt").write_text("not listed: not an image extension")


LENIENT = DecodePolicy(max_bad_fraction=0.5)


def test_folder_reader_labels_and_skips_bad_files(tmp_path: Path, rng):
    _image_tree(tmp_path, rng)
    src = read_source(SourceConfig(path=str(tmp_path)), Reading(3, 32, policy=LENIENT))
    assert src.num_images == 8 and src.class_names == ["cat", "dog"]
    assert src.skipped == {"empty": 1, "not_an_image": 1, "too_small": 1, "truncated": 1}
    assert "dog/notes.png: not_an_image" in src.skipped_examples
    x, y = to_numpy(src)
    assert x.shape == (8, 32, 32, 3) and sorted(y.tolist()) == [0] * 4 + [1] * 4
    assert set(src.dataset.columns()) == {"image", "label", "path", "index"}
    gray = read_source(SourceConfig(path=str(tmp_path / "cat")), Reading(1, 16, policy=LENIENT))
    assert not gray.labeled and to_numpy(gray)[0].shape[1:] == (16, 16, 1)


def test_too_many_bad_files_or_on_error_fail_stop_the_run(tmp_path: Path, rng):
    _image_tree(tmp_path, rng)  # 4 bad files of 12
    with pytest.raises(DataError, match=r"data.max_bad_fraction=0.1: 4 of the 12 image files .*"
                                        r"33.3%.*Is data.source.path the right data"):
        read_source(SourceConfig(path=str(tmp_path)), Reading(3, 32))
    with pytest.raises(DataError, match=r"data.on_error='fail': 4 of the 12 .*empty.jpg: empty"):
        read_source(SourceConfig(path=str(tmp_path)),
                    Reading(3, 32, policy=DecodePolicy(on_error="fail", max_bad_fraction=1.0)))
    only_bad = tmp_path / "dog"
    for f in only_bad.glob("[0-9]*"):
        f.unlink()
    with pytest.raises(DataError, match="none of the 2 image files could be decoded"):
        read_source(SourceConfig(path=str(only_bad)), Reading(3, 32, policy=DecodePolicy(
            max_bad_fraction=1.0)))


def test_rows_come_in_a_seeded_random_order(tmp_path: Path, rng):
    for cls in ("a", "b"):  # sorted listing would give all of "a", then all of "b"
        (tmp_path / cls).mkdir()
        for i in range(40):
            Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(
                tmp_path / cls / f"{i:02d}.png")
    first = to_numpy(read_source(SourceConfig(path=str(tmp_path)), Reading(1, 12), seed=1))[1]
    again = to_numpy(read_source(SourceConfig(path=str(tmp_path)), Reading(1, 12), seed=1))[1]
    other = to_numpy(read_source(SourceConfig(path=str(tmp_path)), Reading(1, 12), seed=2))[1]
    assert first.tolist() == again.tolist() and first.tolist() != other.tolist()
    assert 5 < first[:20].sum() < 15  # the first 20 rows mix both classes


def test_listing_skips_fifos_and_directories_named_like_images(tmp_path: Path, rng):
    Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(tmp_path / "ok.png")
    os.mkfifo(tmp_path / "pipe.png")  # reading it would block forever
    (tmp_path / "dir.png").mkdir()
    src = read_source(SourceConfig(path=str(tmp_path)), Reading(1, 12))
    assert src.num_images == 1 and not src.skipped


def test_file_lists_txt_csv_parquet(tmp_path: Path, rng):
    _image_tree(tmp_path / "imgs", rng)
    good = sorted(p for p in (tmp_path / "imgs").rglob("[0-9].*"))
    rel = [str(p.relative_to(tmp_path)) for p in good]
    (tmp_path / "list.txt").write_text("# my images\n\n" + "\n".join(rel) + "\nimgs/gone.png\n")
    src = read_source(SourceConfig(path=str(tmp_path / "list.txt")), Reading(3, 32, policy=LENIENT))
    assert src.num_images == 8 and not src.labeled and src.skipped == {"missing": 1}
    names = [p.parent.name for p in good]
    with open(tmp_path / "list.csv", "w") as f:
        f.write("path,label\n" + "".join(f"{p},{n}\n" for p, n in zip(good, names, strict=True)))
    src = read_source(SourceConfig(path=str(tmp_path / "list.csv")), Reading(3, 32))
    y = to_numpy(src)[1]
    assert src.class_names == ["cat", "dog"] and sorted(y.tolist()) == [0] * 4 + [1] * 4
    pq.write_table(pa.table({"uri": [str(p) for p in good], "label": [0, 1] * 4}),
                   tmp_path / "list.parquet")
    src = read_source(SourceConfig(path=str(tmp_path / "list.parquet")), Reading(3, 32))
    assert src.num_images == 8 and src.class_names == ["0", "1"]
    with pytest.raises(DataError, match=r"no column of paths; expected one of \['path'"):
        (tmp_path / "bad.csv").write_text("name,label\nx,1\n")
        read_source(SourceConfig(path=str(tmp_path / "bad.csv")), Reading(3, 32))


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_parquet_of_encoded_images(tmp_path: Path, rng):
    arrays = [rng.integers(0, 255, (20, 30, 3), dtype=np.uint8) for _ in range(10)]
    blobs = [_png(a) for a in arrays]
    blobs[3] = b"garbage"
    (tmp_path / "shards").mkdir()
    for i in range(2):  # a directory of shards, labels as class names
        pq.write_table(pa.table({"image": blobs[5 * i: 5 * i + 5],
                                 "label": ["x", "y", "x", "y", "x"]}),
                       tmp_path / "shards" / f"part-{i}.parquet")
    src = read_source(SourceConfig(path=str(tmp_path / "shards")),
                      Reading(3, 16, policy=DecodePolicy(max_bad_fraction=0.2)))
    assert src.num_images == 9 and src.skipped == {"not_an_image": 1}
    assert src.class_names == ["x", "y"] and "part-0.parquet" in src.skipped_examples[0]
    # Hugging Face datasets' Image feature: a struct of bytes and path.
    pq.write_table(pa.table({"img": [{"bytes": b, "path": None} for b in blobs[:3]]}),
                   tmp_path / "hf.parquet")
    src = read_source(SourceConfig(path=str(tmp_path / "hf.parquet")), Reading(1, 16))
    assert src.num_images == 3 and to_numpy(src)[0].shape == (3, 16, 16, 1)
    with pytest.raises(DataError, match=r"data.source.image_column='nope'"):
        read_source(SourceConfig(path=str(tmp_path / "hf.parquet"), image_column="nope"),
                    Reading(1, 16))


def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def test_cifar_folders(tmp_path: Path, rng):
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _pickle(c10 / name, {b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8),
                             b"labels": [0, 1, 2, 9]})
    _pickle(c10 / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    train = read_source(SourceConfig(path=str(tmp_path)), Reading(3, 32))
    assert train.num_images == 20 and train.class_names[9] == "c9"
    assert train.description.startswith("CIFAR-10 train")
    test = read_source(SourceConfig(path=str(c10), split="test"), Reading(3, 32))
    x = to_numpy(test)[0]
    raw = pickle.loads((c10 / "test_batch").read_bytes())[b"data"]
    expected = raw.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    assert sorted(map(bytes, x)) == sorted(map(bytes, expected))  # CHW rows -> HWC images
    c100 = tmp_path / "c100" / "cifar-100-python"
    c100.mkdir(parents=True)
    for name in ("train", "test"):
        _pickle(c100 / name, {b"data": rng.integers(0, 255, (3, 3072), dtype=np.uint8),
                              b"fine_labels": [5, 99, 0], b"coarse_labels": [1, 2, 3]})
    _pickle(c100 / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    src = read_source(SourceConfig(path=str(tmp_path / "c100"), format="cifar"), Reading(3, 32))
    assert src.num_images == 3 and len(src.class_names) == 100


def test_cifar_pickles_cannot_run_code(tmp_path: Path):
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        _pickle(c10 / name, {b"data": os.system})  # would be os.system once unpickled
    with pytest.raises(DataError, match=r"refusing to load (posix|os)\.system"):
        read_source(SourceConfig(path=str(tmp_path)), Reading(3, 32))


def test_npy_reader(tmp_path: Path, rng):
    np.save(tmp_path / "x.npy", rng.integers(0, 255, (6, 10, 10, 3), dtype=np.uint8))
    src = read_source(SourceConfig(path=str(tmp_path / "x.npy")), Reading(1, 32))
    assert src.num_images == 6 and not src.labeled and to_numpy(src)[0].shape == (6, 10, 10, 1)


def test_missing_or_empty_inputs_are_clear_errors(tmp_path: Path):
    with pytest.raises(DataError, match=r"data.source.path='/nope/x': does not exist"):
        read_source(SourceConfig(path="/nope/x"), Reading(3, 32))
    with pytest.raises(DataError, match="no image files"):
        read_source(SourceConfig(path=str(tmp_path)), Reading(3, 32))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(DataError, match=r"a file of unknown kind; expected \.npz"):
        read_source(SourceConfig(path=str(tmp_path / "weights.bin")), Reading(3, 32))
    with pytest.raises(DataError, match="format 'folder' reads a directory, this is a file"):
        read_source(SourceConfig(path=str(tmp_path / "weights.bin"), format="folder"),
                    Reading(3, 32))


def _put(fs, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as f:
        f.write(data)


def test_object_storage_on_a_loopback_s3_server(s3_env: str, tmp_path: Path, rng):
    from raysl.data.storage import Store

    fs, _ = Store.from_env().resolve("s3://raysl-data")
    fs_create = pafs.S3FileSystem(endpoint_override=s3_env.split("://")[1], scheme="http",
                                  access_key="raysl-test", secret_key="raysl-test-secret",
                                  region="us-east-1", allow_bucket_creation=True)
    fs_create.create_dir("raysl-data")
    blobs = {f"raysl-data/tree/{c}/{i}.png": _png(rng.integers(0, 255, (20, 20, 3), np.uint8))
             for c in ("a", "b") for i in range(3)}
    blobs["raysl-data/tree/b/broken.png"] = b"\x89PNG broken"
    for path, data in blobs.items():
        _put(fs, path, data)
    src = read_source(SourceConfig(path="s3://raysl-data/tree"),
                      Reading(3, 16, policy=DecodePolicy(max_bad_fraction=0.2)))
    assert src.num_images == 6 and src.class_names == ["a", "b"]
    assert src.skipped == {"not_an_image": 1} and src.skipped_examples == [
        "b/broken.png: not_an_image"]
    # A file list in the bucket naming objects relative to it; a parquet of bytes in the bucket.
    _put(fs, "raysl-data/list.txt", b"tree/a/0.png\ntree/b/1.png\n")
    assert read_source(SourceConfig(path="s3://raysl-data/list.txt"),
                       Reading(1, 16)).num_images == 2
    buf = io.BytesIO()
    pq.write_table(pa.table({"image": list(blobs.values())[:4]}), buf)
    _put(fs, "raysl-data/shard.parquet", buf.getvalue())
    assert read_source(SourceConfig(path="s3://raysl-data/shard.parquet"),
                       Reading(3, 16)).num_images == 4
    with pytest.raises(DataError, match=r"s3://raysl-data/nope'\: does not exist"):
        read_source(SourceConfig(path="s3://raysl-data/nope"), Reading(3, 16))


def test_object_storage_endpoint_from_config(s3_env: str, monkeypatch, rng):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    fs_create = pafs.S3FileSystem(endpoint_override=s3_env.split("://")[1], scheme="http",
                                  access_key="raysl-test", secret_key="raysl-test-secret",
                                  region="us-east-1", allow_bucket_creation=True)
    fs_create.create_dir("raysl-npz")
    buf = io.BytesIO()
    np.savez(buf, images=rng.integers(0, 255, (5, 8, 8), dtype=np.uint8), labels=np.arange(5))
    _put(fs_create, "raysl-npz/d.npz", buf.getvalue())
    src = read_source(SourceConfig(path="s3://raysl-npz/d.npz", endpoint=s3_env), Reading(1, 8))
    assert src.num_images == 5 and src.labeled


def test_generated_fallback_is_labeled():
    src = read_source(SourceConfig(format="generated", limit=80), Reading(1, 32))
    x, y = to_numpy(src)
    assert x.shape == (80, 32, 32, 1) and len(np.unique(y)) == 8


def test_channel_conversion():
    rgb = np.zeros((1, 2, 2, 3), np.uint8)
    rgb[..., 1] = 200
    assert to_channels(rgb, 1)[0, 0, 0, 0] == round(0.587 * 200)
    assert to_channels(np.zeros((1, 2, 2, 4), np.uint8), 3).shape == (1, 2, 2, 3)

