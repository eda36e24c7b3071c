"""Decoding image bytes: every mode becomes uint8 of the asked channels; bad input gets a reason."""

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raysl.data.decode import REASONS, BadImage, decode_image, read_and_decode
from raysl.data.storage import Store


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _reason(data: bytes, **kwargs) -> str:
    with pytest.raises(BadImage) as e:
        decode_image(data, 3, 32, **kwargs)
    assert e.value.reason in REASONS
    return e.value.reason


@pytest.fixture
def photo(rng) -> np.ndarray:
    return rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)


def test_bad_bytes_get_their_reason(photo):
    png, jpg = _encode(Image.fromarray(photo), "PNG"), _encode(Image.fromarray(photo), "JPEG")
    broken = bytearray(png)
    idat = broken.find(b"IDAT")
    broken[idat + 10: idat + 30] = bytes(20)  # compressed data destroyed, header intact
    assert _reason(b"") == "empty"
    assert _reason(b"just some text, named cat.jpg " * 4) == "not_an_image"
    assert _reason(png[: len(png) // 2]) == "truncated"
    assert _reason(jpg[: len(jpg) // 2]) == "truncated"
    assert _reason(bytes(broken)) == "corrupt"
    assert _reason(_encode(Image.new("RGB", (1, 1)), "PNG")) == "too_small"
    assert _reason(_encode(Image.new("RGB", (60, 7)), "PNG")) == "too_small"
    assert _reason(_encode(Image.new("RGB", (60, 40)), "PNG"), max_pixels=2000) == "too_large"
    assert decode_image(png, 3, 32).shape == (32, 32, 3)  # the intact files decode


def test_huge_image_is_refused_from_its_header():
    # 20000 x 20000 (400 megapixels) costs 50 kB as a 1-bit PNG; decoding it would not.
    huge = _encode(Image.new("1", (20000, 20000)), "PNG")
    assert _reason(huge) == "too_large"
    assert Image.MAX_IMAGE_PIXELS is not None  # PIL's own guard is restored afterwards


def test_every_mode_becomes_uint8_of_the_asked_channels(photo):
    rgb = Image.fromarray(photo)
    palette = rgb.convert("P")
    cases = {
        "L": _encode(rgb.convert("L"), "PNG"),
        "RGBA": _encode(rgb.convert("RGBA"), "PNG"),
        "CMYK": _encode(rgb.convert("CMYK"), "JPEG"),
        "P+transparency": _encode(palette, "PNG", transparency=0),
        "WebP": _encode(rgb, "WEBP"),
        "BMP": _encode(rgb, "BMP"),
        "TIFF": _encode(rgb, "TIFF"),
    }
    for name, data in cases.items():
        for channels in (1, 3):
            out = decode_image(data, channels, 24)
            assert out.shape == (24, 24, channels) and out.dtype == np.uint8, name
            assert out.std() > 10, name  # the picture, not a blank


def test_16bit_and_float_are_scaled_by_range_not_clipped():
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    out16 = decode_image(_encode(Image.fromarray(ramp), "PNG"), 1, 64)
    assert np.abs(out16[..., 0].astype(int) - np.rint(ramp / 257).astype(int)).max() <= 1
    unit = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    outf = decode_image(_encode(Image.fromarray(unit, "F"), "TIFF"), 1, 64)
    assert outf.min() == 0 and outf.max() == 255  # [0, 1] floats span the uint8 range


def test_exif_orientation_is_honoured():
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _encode(Image.fromarray(arr), "JPEG", exif=exif, quality=95)
    out = decode_image(data, 1, 40)[..., 0].astype(int)  # displayed: 40 wide, 80 tall
    # Displayed upright, the white half is on top; ignoring EXIF it would be on the left.
    assert out[:10].mean() > 200 and out[-10:].mean() < 50


def test_resize_keeps_the_centre_of_the_shorter_side():
    arr = np.zeros((50, 150, 1), np.uint8)
    arr[:, 50:100] = 200  # the centre third
    out = decode_image(_encode(Image.fromarray(arr[..., 0]), "PNG"), 1, 25)
    assert out.shape == (25, 25, 1) and out[2:-2, 2:-2].min() == 200


def test_read_errors_are_missing_or_unreadable(tmp_path: Path, photo):
    store = Store()
    gone = tmp_path / "gone.png"
    with pytest.raises(BadImage, match="missing"):
        read_and_decode(store.read, str(gone), 3, 32, 10**8, 8)
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(BadImage, match="unreadable"):
        read_and_decode(store.read, str(tmp_path / "folder.png"), 3, 32, 10**8, 8)


def test_permission_denied_is_unreadable(tmp_path: Path, photo):
    """A file the process may not read. Root reads anything, so as root a forked child drops to
    'nobody' first (fork, not exec: the interpreter may sit where 'nobody' cannot go)."""
    path = tmp_path / "secret.png"
    Image.fromarray(photo).save(path)
    path.chmod(0o000)
    tmp_path.chmod(0o755)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report the reason through the pipe, never return into pytest
        reason = "decoded"
        try:
            if os.geteuid() == 0:
                os.setuid(65534)
            read_and_decode(Store().read, str(path), 3, 32, 10**8, 8)
        except BadImage as e:
            reason = e.reason
        except BaseException as e:
            reason = repr(e)
        os.write(write_end, reason.encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as f:
        assert f.read() == "unreadable"
