"""Array sources above ``max_array_bytes`` are refused from their headers, naming the command.

The driver reads an array source whole, so one larger than ``data.source.max_array_bytes`` is
refused before any row is read, with the ``raysl shards`` command that converts it and the
setting that then trains on the shards.
"""

import gzip
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from raysl import config as C
from raysl.config import SourceConfig
from raysl.data.source import DataError, Reading, read_source, to_numpy
from raysl.errors import ConfigError


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_a_npy_above_the_limit_is_refused_with_the_command(tmp_path: Path, rng):
    path = tmp_path / "big images.npy"
    np.save(path, rng.integers(0, 255, (40, 10, 10, 3), dtype=np.uint8))  # 12,000 bytes
    with pytest.raises(DataError) as info:
        read_source(SourceConfig(path=str(path), max_array_bytes=11_999), Reading(3, 8))
    out = str(tmp_path / "big images-shards")
    message = str(info.value)
    assert f"data.source.path={str(path)!r}: uint8 images (40, 10, 10, 3) take 12000 bytes, " \
           "more than data.source.max_array_bytes=11999" in message
    assert f"`raysl shards {shlex.quote(str(path))} {shlex.quote(out)}`" in message
    assert f"`--set data.source.path={shlex.quote(out)}`" in message


@pytest.mark.usefixtures("ray_session")
def test_an_idx_directory_above_the_limit_is_refused_and_one_at_it_is_read(tmp_path: Path, rng):
    images = rng.integers(0, 255, (30, 8, 8), dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(30) % 3)
    size = images.nbytes + 30  # images and labels
    cfg = SourceConfig(path=str(tmp_path), split="t10k", max_array_bytes=size - 1)
    with pytest.raises(DataError, match=re.escape(
            f"uint8 images (30, 8, 8) and their labels take {size} bytes, more than "
            f"eval.bank.max_array_bytes={size - 1}")) as info:
        read_source(cfg, Reading(1, 8), field_name="eval.bank")
    out = f"{tmp_path}-t10k-shards"
    assert f"`raysl shards {tmp_path} {out} --split t10k`, then " \
           f"`--set eval.bank.path={out}`" in str(info.value)
    x, y = to_numpy(read_source(SourceConfig(path=str(tmp_path), split="t10k",
                                             max_array_bytes=size), Reading(1, 8)))
    assert x.shape == (30, 8, 8, 1) and sorted(y.tolist()) == sorted((np.arange(30) % 3).tolist())


def test_the_limit_is_a_validated_config_field():
    assert C.load(None, []).data.source.max_array_bytes == 2 * 2**30
    with pytest.raises(ConfigError) as info:
        C.load(None, ["data.source.max_array_bytes=0"])
    assert info.value.field == "data.source.max_array_bytes" and "must be >= 1" in str(info.value)
