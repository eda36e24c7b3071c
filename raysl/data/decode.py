"""Encoded image bytes -> square uint8 arrays, or a short reason why not.

Decoding happens once per image, when a source is read: whatever the file's mode (grayscale,
RGBA, CMYK, palette, 16-bit, float), the result is uint8 with the channels the run asks for,
EXIF orientation applied, shorter side resized to the decode size and centre-cropped square.
A file that cannot become such an array raises :class:`BadImage` with one of :data:`REASONS`,
which the readers count and report instead of failing the run.

Bytes are untrusted (training data, requests to the served model): Pillow is asked to try only
:data:`FORMATS`, never the others it knows (EPS, for one, hands the bytes to Ghostscript), and
the pixel cap, read from the header, bounds what decoding allocates: at most about 8 bytes a
pixel (an RGBA image and its RGB copy, both 4 bytes a pixel in Pillow). High-bit-depth images
cost no more: they are scaled to 8 bits a strip at a time.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Why a file was skipped; the keys of ``ImageSource.skipped`` and of the data/skipped_* metrics.
REASONS = {
    "missing": "the file vanished between listing and reading",
    "unreadable": "the file exists but cannot be read (permissions, a directory, I/O error)",
    "empty": "zero bytes",
    "not_an_image": "none of FORMATS recognises the bytes (e.g. text named .jpg, an EPS file)",
    "truncated": "the image data ends early",
    "corrupt": "the image format is recognised but its data cannot be decoded",
    "too_small": "a side shorter than the minimum (data.min_image_side)",
    "too_large": "more pixels than data.max_image_pixels (or, in a shard, more encoded bytes "
                 "than that allows: raysl.data.readers.encoded.encoded_bound)",
    # What the shard readers skip besides images (raysl/data/readers/tar.py, parquet.py):
    "compressed_shard": "a tar shard that is a gzip/bzip2/xz/zstd stream, never inflated",
    "bad_label": "a label that names no class of the source",
    "no_label": "a sample of a labeled source without a label (also an ungrouped tar)",
}
# The Pillow formats of the files the readers list (IMAGE_EXTENSIONS in data/readers/base.py);
# JPEG includes its multi-picture variant (MPO), which Pillow opens through the JPEG plugin.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
_16BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_STRIP_PIXELS = 1 << 18  # high-bit-depth images go to 8 bits this many pixels at a time (1 MiB)


class BadImage(ValueError):
    """An image file that is skipped; ``reason`` is a key of :data:`REASONS`.

    ``detail`` says what was found when a limit refused it (e.g. "5000 x 4000 = 20,000,000
    pixels, more than 16,777,216"), for messages to the one who sent the image.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def decode_image(data: bytes, channels: int, size: int, max_pixels: int = 100_000_000,
                 min_side: int = 8) -> np.ndarray:
    """Encoded bytes -> (size, size, channels) uint8: EXIF-rotated, shorter side resized, centred.

    Only :data:`FORMATS` are tried. JPEGs are decoded at reduced resolution when that still
    covers ``size`` (``draft``), and the pixel count is checked from the header before anything
    is decoded, so a 20000 x 20000 file costs nothing; below the cap, decoding allocates at most
    about 8 bytes a pixel whatever the mode.

    Args:
        data: the file's bytes.
        channels: 1 (luminance) or 3 (RGB).
        size: side of the square result.
        max_pixels: larger images are refused ("too_large").
        min_side: images with a shorter side are refused ("too_small").

    Raises:
        BadImage: with the reason.
    """
    if not data:
        raise BadImage("empty")
    with _no_pil_bomb_check():
        try:
            img: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
        except UnidentifiedImageError:
            raise BadImage("not_an_image") from None
        except Exception:  # PIL raises many types for a bad header
            raise BadImage("corrupt") from None
        w, h = img.size
        if w * h > max_pixels:
            raise BadImage("too_large", f"{w} x {h} = {w * h:,} pixels, more than "
                                        f"{max_pixels:,}")
        if min(w, h) < min_side:
            raise BadImage("too_small", f"{w} x {h}, a side shorter than {min_side}")
        mode = "RGB" if channels == 3 else "L"
        try:
            img.draft(mode, (size, size))  # JPEG: decode smaller
            ImageOps.exif_transpose(img, in_place=True)  # else it copies every image
            # One statement each, so that each step's input is freed before the next allocates.
            img = _to_8bit(img)
            img = img if img.mode == mode else img.convert(mode)
        except OSError as e:
            raise BadImage("truncated" if "truncated" in str(e) else "corrupt") from None
        except Exception:
            raise BadImage("corrupt") from None
    return _resize_center(img, size).reshape(size, size, channels)


def square_pixels(pixels: np.ndarray, channels: int, size: int, min_side: int = 8
                  ) -> np.ndarray:
    """A decoded image (H, W) or (H, W, C) of 0-255 values -> (size, size, channels) uint8.

    The same as :func:`decode_image` does after decoding: colour converted, shorter side resized
    to ``size``, the centre kept.

    Raises:
        BadImage: not an image array ("not_an_image"), or a side shorter than ``min_side``.
    """
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] in (3, 4))):
        raise BadImage("not_an_image")
    if not np.issubdtype(pixels.dtype, np.integer) or pixels.size == 0 or \
            pixels.min() < 0 or pixels.max() > 255:
        raise BadImage("not_an_image")
    if min(pixels.shape[:2]) < min_side:
        raise BadImage("too_small")
    img = Image.fromarray(pixels.astype(np.uint8)).convert("RGB" if channels == 3 else "L")
    return _resize_center(img, size).reshape(size, size, channels)


def square_images(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, size, size, C) uint8, each as :func:`decode_image` resizes.

    The shorter side resized to ``size`` (bilinear, antialiased), the centre kept; images
    already ``size`` x ``size`` are returned as they are, pixel for pixel. This is how every
    image reaches an encoder (:func:`raysl.eval.features.resized`): evaluation's decoded rows,
    the pyfunc's requests, ``raysl embed``'s sources, so the same pixels embed alike.
    """
    if images.shape[1:3] == (size, size):
        return images
    channels = images.shape[-1]
    out = np.empty((len(images), size, size, channels), np.uint8)
    for i, image in enumerate(images):
        img = Image.fromarray(image[..., 0] if channels == 1 else image)
        out[i] = _resize_center(img, size).reshape(size, size, channels)
    return out


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float grayscale -> 8-bit ``L`` by range, not by clipping (PIL's convert clips).

    Palette images with transparency go through RGBA, as PIL asks.
    """
    if img.mode in _16BIT_MODES or img.mode == "F":
        return _scaled_to_8bit(img)
    if img.mode == "P" and "transparency" in img.info:
        return img.convert("RGBA")
    return img


def _scaled_to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale -> ``L``, :data:`_STRIP_PIXELS` at a time.

    Integers above 255 are taken as 16-bit (scaled by 255/65535), floats up to 1 as [0, 1]
    (scaled by 255); NaN becomes 0. Converting the whole image as float32 at once held several
    4-byte copies of it (a 33-kB 16-bit PNG of 4000 x 4000 raised memory by 260 MB); strips hold
    a few MiB, beside the image and its 1-byte result.
    """
    w, h = img.size
    rows = max(1, _STRIP_PIXELS // w)

    def strips() -> Iterator[tuple[int, np.ndarray]]:  # (first row, float32 rows)
        for top in range(0, h, rows):
            yield top, np.array(img.crop((0, top, w, min(h, top + rows))), dtype=np.float32)

    high = max((float(np.nanmax(strip, initial=0)) for _, strip in strips()), default=0.0)
    if img.mode == "F":
        scale = 255.0 if high <= 1.0 else 1.0
    else:
        scale = 255.0 / 65535.0 if high > 255 else 1.0
    out = np.empty((h, w), np.uint8)
    for top, strip in strips():
        np.nan_to_num(strip, copy=False, nan=0.0)
        strip *= scale
        np.rint(strip, out=strip)
        np.clip(strip, 0, 255, out=strip)
        out[top:top + len(strip)] = strip
    return Image.fromarray(out)


def _resize_center(img: Image.Image, size: int) -> np.ndarray:
    """Shorter side -> ``size`` (bilinear, antialiased), then the centred square."""
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                     Image.Resampling.BILINEAR, reducing_gap=3.0)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


@contextmanager
def _no_pil_bomb_check() -> Iterator[None]:
    """Our own ``max_pixels`` replaces PIL's global decompression-bomb limit while decoding."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's palette/EXIF chatter, once per bad file
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def read_and_decode(read: Callable[[str], bytes], path: str, channels: int, size: int,
                    max_pixels: int, min_side: int) -> np.ndarray:
    """Read ``path`` with ``read(path) -> bytes`` and decode it, mapping I/O errors to reasons.

    Raises:
        BadImage: "missing", "unreadable" or any reason of :func:`decode_image`.
    """
    try:
        data = read(path)
    except FileNotFoundError:
        raise BadImage("missing") from None
    except OSError:
        raise BadImage("unreadable") from None
    return decode_image(data, channels, size, max_pixels, min_side)
