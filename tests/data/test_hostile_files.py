"""Small hostile files cannot make raysl allocate what their headers claim.

Each bomb is refused with a DataError naming the file, and ``tracemalloc`` shows the peak of
Python allocations while reading it stayed a small fraction of what the file announced (the
bytes of zlib's output and NumPy's arrays are both traced).
"""

import gzip
import io
import pickle
import re
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from raysl.data.formats import (
    DataError,
    idx_slices,
    load_cifar,
    load_npy,
    load_npz,
    npz_slices,
    parse_idx,
)
from raysl.data.storage import Store

MB = 2**20


def peak_mb(fn) -> float:
    """Peak traced allocation (MiB) while ``fn()`` runs (it is expected to raise DataError)."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    peak_mb.last_error = str(info.value)  # type: ignore[attr-defined]
    return peak / MB


def idx_header(*dims: int) -> bytes:
    return bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def test_a_gzip_bomb_idx_is_decompressed_no_further_than_its_header():
    # 200 MiB of zeros after a header announcing 4 x 28 x 28 bytes: ~200 KiB gzipped.
    bomb = gzip.compress(idx_header(4, 28, 28) + bytes(200 * MB), compresslevel=9)
    assert len(bomb) < 1 * MB
    assert peak_mb(lambda: parse_idx(bomb, "t10k-images-idx3-ubyte.gz")) < 5
    assert "t10k-images-idx3-ubyte.gz: header says [4, 28, 28] (3136 bytes), file has more" \
        in peak_mb.last_error  # type: ignore[attr-defined]


def test_an_idx_header_claiming_terabytes_is_refused_before_reading():
    data = gzip.compress(idx_header(2**31, 2**31, 2) + bytes(100))
    assert peak_mb(lambda: parse_idx(data, "x.gz")) < 1
    assert "more than the" in peak_mb.last_error  # type: ignore[attr-defined]
    zero_dims = gzip.compress(bytes([0, 0, 8, 0]) + bytes(50 * MB))  # ndim 0: reads nothing
    assert peak_mb(lambda: parse_idx(zero_dims, "z.gz")) < 5


def test_read_a_slice_at_a_time_a_file_allocates_a_slice_whatever_its_header_says(
        tmp_path: Path):
    """What ``raysl shards`` does with an array too large to read whole (formats.ArraySlices)."""
    path = tmp_path / "train-images-idx3-ubyte.gz"

    def read_all() -> None:
        with idx_slices(Store(), str(tmp_path), [str(path)], "train", "data.source") as sliced:
            for _ in sliced.read(2):
                pass

    path.write_bytes(gzip.compress(idx_header(4, 28, 28) + bytes(200 * MB), compresslevel=9))
    assert peak_mb(read_all) < 5
    assert f"{path}: header says uint8 (4, 28, 28) (3136 bytes), file has more" \
        in peak_mb.last_error  # type: ignore[attr-defined]
    path.write_bytes(gzip.compress(idx_header(10**6, 28, 28) + bytes(3 * 784)))  # 784 MB?
    assert peak_mb(read_all) < 1
    assert "(784000000 bytes), file has 2352" in peak_mb.last_error  # type: ignore[attr-defined]


def test_idx_files_still_read_gzipped_or_not():
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_header(2, 3, 4) + pixels.tobytes()
    assert np.array_equal(parse_idx(raw, "x"), pixels)
    assert np.array_equal(parse_idx(gzip.compress(raw), "x.gz"), pixels)
    with pytest.raises(DataError, match=r"x\.gz: not a valid gzip file"):
        parse_idx(b"\x1f\x8b" + b"garbage" * 10, "x.gz")
    with pytest.raises(DataError, match=r"header says \[2, 3, 4\] \(24 bytes\), file has 23"):
        parse_idx(raw[:-1], "x")


def _npy_with_header(shape: tuple[int, ...], data: bytes) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": "|u1", "fortran_order": False,
                                               "shape": shape})
    return out.getvalue() + data


def test_a_npy_header_larger_than_its_file_is_refused_before_allocating(tmp_path: Path):
    path = tmp_path / "bomb.npy"
    path.write_bytes(_npy_with_header((10**6, 1000, 1000), bytes(100)))  # claims 1 TB
    assert peak_mb(lambda: load_npy(Store(), str(path))) < 1
    assert f"{path}: header says uint8 (1000000, 1000, 1000) (1000000000000 bytes), the file " \
           "holds 100" in peak_mb.last_error  # type: ignore[attr-defined]


def test_an_npz_member_larger_than_its_stored_size_is_refused(tmp_path: Path):
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images.npy", _npy_with_header((10**5, 1000, 1000), bytes(64)))
    assert peak_mb(lambda: load_npz(Store(), str(path))) < 1
    assert "bomb.npz['images.npy']: header says uint8" in peak_mb.last_error  # type: ignore[attr-defined]
    assert peak_mb(lambda: npz_slices(Store(), str(path))) < 1
    assert "bomb.npz['images.npy']: header says uint8" in peak_mb.last_error  # type: ignore[attr-defined]
    good = tmp_path / "good.npz"
    np.savez_compressed(good, images=np.zeros((3, 8, 8), np.uint8), labels=np.arange(3))
    assert load_npz(Store(), str(good)).images.shape == (3, 8, 8)


def _cifar_folder(root: Path, batch: object, meta: object | None = None) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(batch if isinstance(batch, bytes)
                                    else pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps(
        meta if meta is not None else {b"label_names": [b"a", b"b"]}, protocol=2))
    return folder


def test_a_cifar_pickle_building_an_array_larger_than_itself_is_refused(tmp_path: Path):
    # What NumPy pickles an array with, _reconstruct(ndarray, shape, dtype), hand-assembled
    # with a shape of 2^28 elements (a real pickle has (0,) and then sets the data it holds).
    reconstruct = np.zeros(1).__reduce__()[0]
    hostile = (b"\x80\x02" + f"c{reconstruct.__module__}\n_reconstruct\n".encode()
               + b"cnumpy\nndarray\n" + b"\x8a\x04" + (2**28).to_bytes(4, "little") + b"\x85"
               + b"X\x01\x00\x00\x00b" + b"\x87" + b"R" + b".")
    assert len(hostile) < 100
    folder = _cifar_folder(tmp_path, hostile)
    assert peak_mb(lambda: load_cifar(Store(), str(folder), "cifar-10-batches-py", "train",
                                      "data.source")) < 1
    assert f"{folder}/data_batch_1: not a CIFAR python batch" in peak_mb.last_error  # type: ignore[attr-defined]
    assert "larger than the" in peak_mb.last_error  # type: ignore[attr-defined]


@pytest.mark.parametrize("batch, meta, message", [
    ({b"data": {"not": "pixels"}, b"labels": [0]}, None, "data_batch_1: not a cifar-10"),
    ({b"data": np.zeros((2, 3072), np.uint8)}, None, "data_batch_1: not a cifar-10"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1, 1]}, None,
     "data_batch_1: 3 labels for 2 images"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, {b"label_names": [1, 2]},
     "batches.meta: class names are not a list of byte strings"),
    (["a", "list"], None, "data_batch_1: not a CIFAR python batch (a list)"),
])
def test_malformed_cifar_dicts_are_data_errors_naming_the_file(tmp_path: Path, batch, meta,
                                                                message):
    folder = _cifar_folder(tmp_path, batch, meta)
    with pytest.raises(DataError, match=re.escape(message)):
        load_cifar(Store(), str(folder), "cifar-10-batches-py", "train", "data.source")


def test_a_cifar_pickle_calling_ndarray_directly_builds_nothing(tmp_path: Path):
    # REDUCE(numpy.ndarray, ((2^28,), 'u1')): the class itself would allocate 256 MiB.
    hostile = (b"\x80\x02" + b"cnumpy\nndarray\n" + b"\x8a\x04" + (2**28).to_bytes(4, "little")
               + b"\x85" + b"X\x02\x00\x00\x00u1" + b"\x86" + b"R" + b".")
    folder = _cifar_folder(tmp_path, hostile)
    assert peak_mb(lambda: load_cifar(Store(), str(folder), "cifar-10-batches-py", "train",
                                      "data.source")) < 1
    assert "may only be rebuilt by _reconstruct" in peak_mb.last_error  # type: ignore[attr-defined]


def test_a_damaged_npz_or_npy_is_a_data_error_naming_it(tmp_path: Path):
    good = tmp_path / "good.npz"
    np.savez_compressed(good, images=np.random.default_rng(0).integers(
        0, 255, (20, 16, 16), dtype=np.uint8))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:-40])  # the zip's central directory cut off
    with pytest.raises(DataError, match=r"cut\.npz: not a readable \.npz archive"):
        load_npz(Store(), str(cut))
    npy = tmp_path / "short.npy"
    npy.write_bytes(_npy_with_header((4, 8, 8), bytes(4 * 8 * 8)))
    assert load_npy(Store(), str(npy)).images.shape == (4, 8, 8)
    npy.write_bytes(b"\x93NUMPY\x09\x00" + b"garbage")
    with pytest.raises(DataError, match=r"short\.npy: not a \.npy array"):
        load_npy(Store(), str(npy))
