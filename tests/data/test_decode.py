"""Decoding image bytes: every mode becomes uint8 of the asked channels; bad input gets a reason.

Hostile bytes too: formats raysl does not list are never handed to Pillow's plugins for them
(EPS would reach Ghostscript), and a high-bit-depth image costs no more memory than the pixel
cap allows.
"""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image, UnidentifiedImageError

from raysl.data.decode import FORMATS, REASONS, BadImage, decode_image, read_and_decode
from raysl.data.readers.base import IMAGE_EXTENSIONS
from raysl.data.storage import Store

# A complete EPS file: Pillow knows it as EPS and renders it with Ghostscript when loaded.
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n"
       b"0 0 moveto 16 16 lineto stroke showpage\n%%EOF\n")


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


def test_a_limit_says_what_it_found():
    with pytest.raises(BadImage) as e:
        decode_image(_encode(Image.new("RGB", (60, 40)), "PNG"), 3, 32, max_pixels=2000)
    assert e.value.detail == "60 x 40 = 2,400 pixels, more than 2,000"
    with pytest.raises(BadImage) as e:
        decode_image(_encode(Image.new("RGB", (60, 7)), "PNG"), 3, 32)
    assert e.value.detail == "60 x 7, a side shorter than 8"


def test_formats_are_the_listed_extensions():
    assert {Image.registered_extensions()[ext] for ext in IMAGE_EXTENSIONS} == set(FORMATS)


def test_eps_never_reaches_ghostscript(monkeypatch):
    calls = []

    def ghostscript(*args, **kwargs):
        calls.append(args)
        raise OSError("Ghostscript was called")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    unrestricted = Image.open(io.BytesIO(EPS))  # what any format would do with these bytes
    assert unrestricted.format == "EPS"
    with pytest.raises(OSError, match="Ghostscript was called"):
        unrestricted.load()
    calls.clear()
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(EPS), formats=FORMATS)
    assert _reason(EPS) == "not_an_image"
    assert calls == []


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "TGA", "PPM"])
def test_formats_pillow_knows_but_raysl_does_not_list_are_not_images(fmt):
    data = _encode(Image.new("RGB", (16, 16), (200, 10, 10)), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow alone would decode it
    assert _reason(data) == "not_an_image"


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


# Measured in a fresh process: Pillow allocates its images outside Python's allocator, so
# tracemalloc does not see them; the kernel's peak resident size (VmHWM, reset first) does.
_PEAK = """
import sys
from raysl.data.decode import decode_image
data = open(sys.argv[1], "rb").read()
def kernel(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
before = kernel("VmRSS:")
decode_image(data, int(sys.argv[2]), 37, int(sys.argv[3]))
print(kernel("VmHWM:") - before)
"""


def _decode_peak_bytes(tmp_path: Path, data: bytes, channels: int, max_pixels: int) -> int:
    """The growth of a fresh process's peak resident memory while it decodes ``data``."""
    path = tmp_path / "image"
    path.write_bytes(data)
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(channels),
                          str(max_pixels)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout)


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="needs Linux's /proc/self/clear_refs to reset the peak RSS")
def test_high_bit_depth_images_cost_what_the_pixel_cap_allows(tmp_path: Path):
    # 4000 x 4000 at the cap, a few tens of kB each. Converting them as float32 all at once
    # took 16 bytes a pixel (260 MB for the 16-bit PNG); now 3.4 to 5.6.
    side = 4000
    cap = side * side
    sparse = np.zeros((side, side), np.float32)
    sparse[::97, ::89] = 0.7
    rgba = np.repeat((sparse * 255).astype(np.uint8)[..., None], 4, axis=2)
    # (file, bytes a pixel): the decoded image (at most 4 bytes a pixel), its 8-bit copy and
    # strips of a few MiB; the 8-bit RGBA image, which any cap must allow, and its RGB copy.
    files = {
        "16-bit PNG": (_encode(Image.fromarray((sparse * 60000).astype(np.uint16)), "PNG"), 6),
        "32-bit int TIFF": (_encode(Image.fromarray((sparse * 60000).astype(np.int32)), "TIFF",
                                    compression="tiff_adobe_deflate"), 6),
        "32-bit float TIFF": (_encode(Image.fromarray(sparse), "TIFF",
                                      compression="tiff_adobe_deflate"), 6),
        "RGBA PNG": (_encode(Image.fromarray(rgba), "PNG"), 9),
    }
    for name, (data, per_pixel) in files.items():
        assert len(data) < 100_000, name
        peak = _decode_peak_bytes(tmp_path, data, 3, cap)  # 3 channels: an RGB copy, the most
        assert peak < per_pixel * cap + 8 * 2**20, (name, f"{peak / cap:.1f} bytes a pixel")


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
