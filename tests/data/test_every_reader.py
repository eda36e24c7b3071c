"""Every registered reader reads a small dataset in its format (a new reader must add one)."""

import gzip
import io
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raysl import catalog
from raysl.config import SourceConfig
from raysl.config.source import MADE_FORMATS
from raysl.data.source import Reading, read_source, to_numpy

pytestmark = pytest.mark.usefixtures("ray_session")

N, CLASSES = 12, 3  # images written per format, labels 0..2 where the format has labels


def _images(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (N, 16, 16, 3), dtype=np.uint8), np.arange(N) % CLASSES


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _folder(root: Path) -> SourceConfig:
    x, y = _images()
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        (root / f"c{label}" / f"{i}.png").write_bytes(_png(img))
    return SourceConfig(path=str(root))


def _files(root: Path) -> SourceConfig:
    _folder(root / "imgs")
    rows = [f"imgs/c{i % CLASSES}/{i}.png,{i % CLASSES}" for i in range(N)]
    (root / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return SourceConfig(path=str(root / "list.csv"))


def _parquet(root: Path) -> SourceConfig:
    x, y = _images()
    pq.write_table(pa.table({"image": [_png(a) for a in x], "label": y}), root / "d.parquet")
    return SourceConfig(path=str(root / "d.parquet"))


def _tar(root: Path) -> SourceConfig:
    import tarfile

    x, y = _images()
    for s in range(2):  # two shards, no index: the reader counts them
        with tarfile.open(root / f"s-{s}.tar", "w") as tar:
            for i in range(s * N // 2, (s + 1) * N // 2):
                for name, data in ((f"{i:04d}.png", _png(x[i])),
                                   (f"{i:04d}.cls", str(y[i]).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return SourceConfig(path=str(root / "s-{0..1}.tar"))


def _idx(root: Path) -> SourceConfig:
    x, y = _images()
    gray = x[..., 0]
    for name, arr in (("train-images-idx3-ubyte.gz", gray), ("train-labels-idx1-ubyte.gz", y)):
        header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
        with gzip.open(root / name, "wb") as f:
            f.write(header + arr.astype(np.uint8).tobytes())
    return SourceConfig(path=str(root))


def _npz(root: Path) -> SourceConfig:
    x, y = _images()
    np.savez(root / "d.npz", images=x, labels=y)
    return SourceConfig(path=str(root / "d.npz"))


def _npy(root: Path) -> SourceConfig:
    np.save(root / "d.npy", _images()[0])
    return SourceConfig(path=str(root / "d.npy"))


def _cifar(root: Path) -> SourceConfig:
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    x, y = _images()
    big = np.zeros((N, 3, 32, 32), np.uint8)
    big[:, :, :16, :16] = x.transpose(0, 3, 1, 2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": big.reshape(N, -1), b"labels": y.tolist()}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"k{i}".encode() for i in range(10)]}, f, protocol=2)
    return SourceConfig(path=str(root))


def _generated(root: Path) -> SourceConfig:
    return SourceConfig(format="generated", limit=N)


def _colour_shapes(root: Path) -> SourceConfig:
    return SourceConfig(format="colour_shapes", limit=N)


WRITERS: dict[str, tuple[Callable[[Path], SourceConfig], int, bool]] = {
    # reader: (writer, images it reads, labeled)
    "folder": (_folder, N, True), "files": (_files, N, True), "parquet": (_parquet, N, True),
    "tar": (_tar, N, True), "idx": (_idx, N, True), "npz": (_npz, N, True),
    "npy": (_npy, N, False), "cifar": (_cifar, 5 * N, True), "generated": (_generated, N, True),
    "colour_shapes": (_colour_shapes, N, True),
}


def test_every_registered_reader_has_a_writer_here():
    assert set(catalog.names("reader")) == set(WRITERS)
    made = {n for n, r in catalog.entries("reader").items() if r.reads == "none"}
    assert made == set(MADE_FORMATS)  # the config knows which formats read no path


@pytest.mark.parametrize("name", catalog.names("reader"))
def test_every_reader_reads_its_format_named_and_detected(tmp_path: Path, name: str):
    write, count, labeled = WRITERS[name]
    cfg = write(tmp_path)
    for fmt in ({"auto", name} if name not in MADE_FORMATS else {name}):  # named only
        named = SourceConfig(format=fmt, path=cfg.path, limit=cfg.limit)
        src = read_source(named, Reading(1, 16))
        x, y = to_numpy(src)
        assert src.num_images == count == len(x) and x.dtype == np.uint8 and x.shape[-1] == 1
        assert src.labeled == labeled and (y is None) == (not labeled)
        if labeled and name not in ("cifar", *MADE_FORMATS):
            assert sorted(y.tolist()) == sorted((np.arange(N) % CLASSES).tolist())
        assert str(count) in src.description
