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
from typing import Any, ClassVar

import numpy as np
import pytest

from raysl import catalog
from raysl.config import SourceConfig
from raysl.data.readers import cifar_pickle
from raysl.data.readers.base import list_target
from raysl.data.readers.cifar import load_cifar
from raysl.data.readers.idx import idx_slices, parse_idx
from raysl.data.readers.npy import load_npy
from raysl.data.readers.npz import load_npz, npz_slices
from raysl.data.storage import Store
from raysl.errors import DataError

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
    """What ``raysl shards`` does with an array too large to read whole (ArraySlices)."""
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


# ---------------------------------------------------------------------------------------------
# Honestly compressed arrays: inflated no further than the header says, which is bounded first
# ---------------------------------------------------------------------------------------------


def test_a_bzip2_npz_member_is_refused_before_it_is_inflated(tmp_path: Path):
    # zipfile inflates a bzip2 member's every read without an output bound: 64 MiB of zeros
    # (under 100 bytes of bzip2) would be inflated whole by the first 1 MiB read.
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as z:
        z.writestr("images.npy", _npy_with_header((64, 1024, 1024), bytes(64 * MB)))
    assert path.stat().st_size < 10_000
    for read in (lambda: load_npz(Store(), str(path)), lambda: npz_slices(Store(), str(path))):
        assert peak_mb(read) < 1
        assert "bomb.npz['images.npy']: compressed with zip method 12 (bzip2 or LZMA)" in \
            peak_mb.last_error  # type: ignore[attr-defined]


@pytest.mark.parametrize("fmt", ["idx", "npz"])
def test_an_honest_array_above_max_array_bytes_is_refused_before_it_is_inflated(
        tmp_path: Path, fmt: str):
    # 32 MiB of zeros the header declares honestly (~32 KiB compressed), 1 MiB allowed.
    if fmt == "idx":
        (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(idx_header(32, 1024, 1024) + bytes(32 * MB)))
        path = str(tmp_path)
    else:
        path = str(tmp_path / "x.npz")
        np.savez_compressed(path, images=np.zeros((32, 1024, 1024), np.uint8))
    cfg = SourceConfig(path=path, max_array_bytes=MB)
    target = list_target(path, Store(), "data.source")
    reader = catalog.get("reader", fmt)()
    assert peak_mb(lambda: reader.open(cfg, target, Store(), 0, "data.source")) < 1
    assert "raysl shards" in peak_mb.last_error  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# The CIFAR unpickler: plain numeric arrays over bytes the pickle holds, nothing on its word
# ---------------------------------------------------------------------------------------------

_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy(._core).multiarray._reconstruct


class _Array:
    """Pickles as NumPy does, _reconstruct(ndarray, (0,), 'b') then BUILD, with any state."""

    def __init__(self, state: tuple) -> None:
        self.state = state

    def __reduce__(self) -> tuple:
        return _RECONSTRUCT, (np.ndarray, (0,), b"b"), self.state


class _Codec:
    """Pickles as _codecs.encode(inner, encoding)."""

    def __init__(self, inner: object, encoding: str) -> None:
        self.inner, self.encoding = inner, encoding

    def __reduce__(self) -> tuple:
        import _codecs
        return _codecs.encode, (self.inner, self.encoding)


def _load_cifar_bomb(tmp_path: Path, batch: object) -> float:
    data = batch if isinstance(batch, bytes) else pickle.dumps(batch, protocol=2)
    folder = _cifar_folder(tmp_path, data)
    return peak_mb(lambda: load_cifar(Store(), str(folder), "cifar-10-batches-py", "train",
                                      "data.source"))


@pytest.mark.parametrize("dtype, message", [
    # Its state claims 2^20 items and brings 2: NumPy read past the list (pointers from the
    # heap), which crashed the process in the review.
    (np.dtype(object), "dtype 'O8': only plain numeric arrays are read"),
    (np.dtype([("a", "u1"), ("b", "u1")]), "only plain numeric arrays are read"),
    (np.dtype(("u1", (4,))), "only plain numeric arrays are read"),
    (np.dtype("U4"), "only plain numeric arrays are read"),
], ids=["object", "structured", "sub-array", "text"])
def test_a_cifar_array_of_object_structured_or_sub_array_dtype_is_refused(
        tmp_path: Path, dtype: np.dtype, message: str):
    hostile = {b"data": _Array((1, (2**20,), dtype, False, [1, 2])), b"labels": [0]}
    assert _load_cifar_bomb(tmp_path, hostile) < 1
    assert message in peak_mb.last_error  # type: ignore[attr-defined]


def test_a_cifar_array_whose_shape_needs_more_bytes_than_its_data_is_refused(tmp_path: Path):
    hostile = {b"data": _Array((1, (2**28,), np.dtype("u1"), False, b"ab")), b"labels": [0]}
    assert _load_cifar_bomb(tmp_path, hostile) < 1
    assert "an array of uint8 (268435456,) needs 268435456 bytes, its data has 2" in \
        peak_mb.last_error  # type: ignore[attr-defined]


def test_a_cifar_codec_chain_is_refused_at_its_first_step(tmp_path: Path):
    # "hex" doubles its input: 24 steps from 64 bytes make 1 GiB.
    bomb: object = b"x" * 64
    for _ in range(24):
        bomb = _Codec(bomb, "hex")
    assert _load_cifar_bomb(tmp_path, {b"data": bomb, b"labels": [0]}) < 1
    assert "_codecs.encode of a bytes to 'hex': only text to 'latin1' is read" in \
        peak_mb.last_error  # type: ignore[attr-defined]


def test_cifar_latin1_encodes_may_not_make_more_than_the_file(tmp_path: Path):
    # One 64 KiB string, encoded 4,096 times through the memo: 256 MiB from a 90 KiB file.
    text = "x" * 2**16
    hostile = {b"data": [_Codec(text, "latin1") for _ in range(4096)], b"labels": [0]}
    assert _load_cifar_bomb(tmp_path, hostile) < 1
    assert "_codecs.encode made more bytes than the" in peak_mb.last_error  # type: ignore[attr-defined]


@pytest.mark.parametrize("hostile, message", [
    # BINBYTES of 2 GiB: the C unpickler allocates the size it is told before reading.
    (b"\x80\x03B" + (2**31).to_bytes(4, "little") + b"abc",
     "BINBYTES at byte 2 claims 2147483648 bytes, the file has 3 after it"),
    # LONG_BINPUT to memo slot 2^28: the C unpickler grows (and zero-fills) 2 GiB of memo.
    (b"\x80\x02N" + b"r" + (2**28).to_bytes(4, "little") + b".",
     "LONG_BINPUT at byte 3 stores memo slot 268435456 after 0 slots"),
    # Objects for next to nothing: an empty set is 216 bytes for one opcode byte, a list 56.
    (b"\x80\x04](" + b"\x8f" * 2**16 + b"e.",
     "opcode 0x8f at byte 4 is not one a CIFAR batch uses"),
], ids=["binbytes", "long-binput", "sets"])
def test_a_cifar_pickle_claiming_lengths_or_memo_slots_it_lacks_is_refused(
        tmp_path: Path, hostile: bytes, message: str):
    assert _load_cifar_bomb(tmp_path, hostile) < 1 + len(hostile) / MB  # the file, read whole
    assert message in peak_mb.last_error  # type: ignore[attr-defined]


class _Python2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes as Python 2's cPickle did at protocol 2 (the published CIFAR batches): every
    string a BINSTRING, read back as bytes (a dtype's byte order too), NumPy 1's names."""

    dispatch: ClassVar[dict[type, Any]] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_string(self, obj: bytes | str) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data if len(data) < 256
                   else pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(obj)

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = "numpy.core.multiarray" if obj is _RECONSTRUCT else obj.__module__
        self.write(pickle.GLOBAL + f"{module}\n{obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = dispatch[str] = save_string
    dispatch[type] = dispatch[type(_RECONSTRUCT)] = save_global


def _dumps(obj: object, protocol: int | str) -> bytes:
    if protocol != "python2":
        return pickle.dumps(obj, protocol=protocol)
    out = io.BytesIO()
    _Python2Pickler(out, protocol=2).dump(obj)
    return out.getvalue()


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, "python2"])
def test_real_cifar_batches_still_read_and_their_labels_are_checked(tmp_path: Path,
                                                                      protocol: int | str):
    pixels = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    batch = {b"batch_label": b"training batch 1 of 5", b"data": pixels, b"labels": [1, 0],
             b"filenames": [b"a.png", b"b.png"]}
    folder = _cifar_folder(tmp_path / str(protocol), _dumps(batch, protocol))
    out = load_cifar(Store(), str(folder), "cifar-10-batches-py", "train", "data.source")
    assert out.images.shape == (10, 32, 32, 3) and out.labels.tolist() == [1, 0] * 5
    assert np.array_equal(out.images[0], pixels[0].reshape(3, 32, 32).transpose(1, 2, 0))
    for labels, bad in (([1, 2], "label 2 is not one of the 2 classes"),
                        ([-1, 0], "label -1 is negative")):
        bad_folder = _cifar_folder(tmp_path / f"{protocol}{labels}",
                                   _dumps({**batch, b"labels": labels}, protocol))
        with pytest.raises(DataError, match=re.escape(bad)):
            load_cifar(Store(), str(bad_folder), "cifar-10-batches-py", "train", "data.source")


def test_a_cifar_pickle_of_more_opcodes_than_any_batch_is_refused(tmp_path: Path,
                                                                   monkeypatch):
    # At 2^20 opcodes (the real cap) a 1 MiB pickle of empty lists takes ~80 MB: allowed, and
    # no more. The cap is lowered here so the walk is quick under tracemalloc.
    monkeypatch.setattr(cifar_pickle, "_MAX_PICKLE_OPS", 1000)
    hostile = b"\x80\x04](" + b"]" * 1000 + b"e."
    assert _load_cifar_bomb(tmp_path, hostile) < 1
    assert "more than 1000 opcodes, no CIFAR batch has that many" in \
        peak_mb.last_error  # type: ignore[attr-defined]


def test_a_cifar_file_larger_than_any_batch_is_refused_unread(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(cifar_pickle, "_MAX_CIFAR_BYTES", 2**16)  # 256 MiB in earnest
    folder = _cifar_folder(tmp_path, pickle.dumps({b"data": bytes(2**20)}, protocol=2))
    assert peak_mb(lambda: load_cifar(Store(), str(folder), "cifar-10-batches-py", "train",
                                      "data.source")) < 0.5
    assert "larger than any CIFAR batch" in peak_mb.last_error  # type: ignore[attr-defined]
