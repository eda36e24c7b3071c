import gzip
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raysl.config import SourceConfig
from raysl.data.readers import DataError, read_idx, read_source, to_channels, to_numpy

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
    src = read_source(SourceConfig(path=str(tmp_path)), channels=1, decode_size=32)
    assert src.num_images == 30 and src.labeled
    x, y = to_numpy(src)
    assert x.shape == (30, 28, 28, 1) and x.dtype == np.uint8
    assert np.array_equal(x[..., 0], images) and np.array_equal(y, labels)
    rgb, _ = to_numpy(read_source(SourceConfig(path=str(tmp_path), limit=7), 3, 32))
    assert rgb.shape == (7, 28, 28, 3)


def test_idx_rejects_truncated_file(tmp_path: Path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"x")
    with pytest.raises(DataError, match="header says"):
        read_idx(path)


def test_real_fashion_mnist(fmnist_dir: Path):
    src = read_source(SourceConfig(path=str(fmnist_dir), split="t10k", limit=100), 1, 32)
    x, y = to_numpy(src)
    assert x.shape == (100, 28, 28, 1) and src.class_names[0] == "T-shirt/top"
    assert set(np.unique(y)) <= set(range(10)) and len(np.unique(y)) > 5
    assert 50 < x.mean() < 100  # real clothing images, not noise (mean ~73)


def test_npz_reader(tmp_path: Path, rng):
    np.savez(tmp_path / "gray.npz", images=rng.integers(0, 255, (12, 20, 24), dtype=np.uint8),
             labels=np.arange(12) % 3)
    src = read_source(SourceConfig(path=str(tmp_path / "gray.npz")), 3, 32)
    x, y = to_numpy(src)
    assert x.shape == (12, 20, 24, 3) and y.tolist() == (np.arange(12) % 3).tolist()
    np.savez(tmp_path / "rgb.npz", x=rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8))
    src = read_source(SourceConfig(path=str(tmp_path / "rgb.npz")), 3, 32)
    assert not src.labeled and to_numpy(src)[1] is None


@pytest.mark.parametrize(("arrays", "message"), [
    ({"pixels": np.zeros((2, 8, 8), np.uint8)}, "no image array"),
    ({"images": np.zeros((2, 8, 8), np.float32)}, "expected uint8"),
    ({"images": np.zeros((2, 8, 8), np.uint8), "labels": np.zeros(3, int)}, "integer labels"),
])
def test_npz_errors_say_what_is_wrong(tmp_path: Path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        read_source(SourceConfig(path=str(tmp_path / "bad.npz")), 1, 32)


def _image_tree(root: Path, rng) -> None:
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            arr = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(arr).save(root / cls / f"{i}.{ext}")
    (root / "dog" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "notes.png").write_text("not an image")
    (root / "cat" / "tiny.png").write_bytes(b"")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(root / "cat" / "tiny.png")
    good = (root / "cat" / "0.jpg").read_bytes()
    (root / "cat" / "cut.jpg").write_bytes(good[:40])


def test_folder_reader_labels_and_skips_bad_files(tmp_path: Path, rng):
    _image_tree(tmp_path, rng)
    src = read_source(SourceConfig(path=str(tmp_path)), 3, decode_size=32)
    assert src.num_images == 8 and src.class_names == ["cat", "dog"]
    assert src.skipped == {"empty": 1, "corrupt": 2, "too_small": 1}
    assert any("notes.png: corrupt" in e for e in src.skipped_examples)
    x, y = to_numpy(src)
    assert x.shape == (8, 32, 32, 3) and sorted(y.tolist()) == [0] * 4 + [1] * 4
    gray = read_source(SourceConfig(path=str(tmp_path / "cat")), 1, decode_size=16)
    assert not gray.labeled and to_numpy(gray)[0].shape[1:] == (16, 16, 1)


def test_missing_or_empty_inputs_are_clear_errors(tmp_path: Path):
    with pytest.raises(DataError, match=r"data.source.path='/nope/x': does not exist"):
        read_source(SourceConfig(path="/nope/x"), 3, 32)
    with pytest.raises(DataError, match="no image files"):
        read_source(SourceConfig(path=str(tmp_path)), 3, 32)


def test_generated_fallback_is_labeled():
    src = read_source(SourceConfig(format="generated", limit=80), 1, 32)
    x, y = to_numpy(src)
    assert x.shape == (80, 32, 32, 1) and len(np.unique(y)) == 8


def test_channel_conversion():
    rgb = np.zeros((1, 2, 2, 3), np.uint8)
    rgb[..., 1] = 200
    assert to_channels(rgb, 1)[0, 0, 0, 0] == round(0.587 * 200)
    assert to_channels(np.zeros((1, 2, 2, 4), np.uint8), 3).shape == (1, 2, 2, 3)
