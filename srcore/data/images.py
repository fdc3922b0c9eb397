"""One image's decoding, shared by ingest (center crop -> 8-bit RGB PNG) and upscale:
the decompression-bomb check on the header (for upscale on the x4 output too), the
check that a file decodes completely (no black rows from a cut PNG, no grey blocks
from a cut JPEG), EXIF
orientation, 16-bit scaling and the deterministic PNG encoding live here once.

This module must stay free of TensorFlow: ingest's worker processes import it.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
import zlib
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

#: zlib level 1 encodes 128x128 crops ~3x faster than PIL's default 6 and the files
#: are only ~3% larger (measured on CelebA crops); a fixed level keeps bytes stable.
PNG_COMPRESS_LEVEL = 1

COLOR_RULE = (
    "8-bit RGB: EXIF orientation applied; grayscale, palette, CMYK and other modes converted "
    "with PIL; 16-bit values scaled by 255/65535; alpha composited on black; ICC profiles ignored"
)


class BadImage(ValueError):
    """A candidate that cannot be used; the message is the reason in the manifest."""


# ---- decoding -----------------------------------------------------------------------


def open_checked(raw: bytes | BinaryIO, max_pixels: int, min_side: int = 1, output_scale: int = 1) -> Image.Image:
    """Decode an image whose header says at most `max_pixels` pixels and at least
    `min_side` on each side (checked before a single pixel is decoded); BadImage if not.

    `output_scale`: the caller makes an image that many times larger on each side
    (upscale: x4), so the header must promise at most max_pixels / output_scale**2 pixels:
    the output is bounded too, before anything is decoded. The image must decode
    completely (see check_complete): a truncated file is a BadImage, never black rows."""
    source = io.BytesIO(raw) if isinstance(raw, (bytes, bytearray)) else raw
    factor = max(1, int(output_scale)) ** 2
    with _pixel_limit(max_pixels), warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(source)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise BadImage(f"decompression bomb: {err} (max_pixels={max_pixels})") from None
        except UnidentifiedImageError:
            raise BadImage("not an image: unrecognised format") from None
        width, height = image.size
        if width * height > max_pixels:
            raise BadImage(f"decompression bomb: {width}x{height} = {width * height} pixels > max_pixels={max_pixels}")
        if width * height * factor > max_pixels:
            out_w, out_h = width * int(output_scale), height * int(output_scale)
            raise BadImage(
                f"too large: {width}x{height} makes a {out_w}x{out_h} = {out_w * out_h} pixel output "
                f"> max_pixels={max_pixels}"
            )
        if width < min_side or height < min_side:
            raise BadImage(f"too small: {width}x{height} < {min_side}x{min_side}")
        try:
            with _truncated_images_refused():
                image.load()
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
            raise BadImage(f"truncated or corrupt image: {err}") from None
        check_complete(image, raw if isinstance(raw, (bytes, bytearray)) else None)
    return image


@contextlib.contextmanager
def _truncated_images_refused() -> Iterator[None]:
    """PIL pads a cut-off file with black when LOAD_TRUNCATED_IMAGES is set (a global
    another library may have set): refuse instead."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


#: channels per PNG colour type (grey, RGB, palette, grey+alpha, RGBA)
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
#: Adam7 passes: (x start, y start, x step, y step)
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def check_complete(image: Image.Image, raw: bytes | bytearray | None) -> None:
    """BadImage unless every row of the image was in the file.

    load() raises for a file that simply ends early, but a file cut and then closed
    properly loads without complaint:
    - PNG: a zlib stream that ends cleanly after 54 of 218 rows, then IEND: PIL's
      decoder stops at the end of the stream and leaves the other rows black. The IDAT
      data are inflated here (bounded by the size the header implies) and must hold
      every row.
    - JPEG: entropy data cut, then an EOI marker: libjpeg only warns (PIL drops the
      warning) and fills the missing blocks with grey 128. See _check_jpeg_complete."""
    if raw is None:
        return
    if image.format in ("JPEG", "MPO"):
        _check_jpeg_complete(image, raw)
        return
    if image.format != "PNG":
        return
    header = _png_header(raw)
    if header is None:
        return
    width, height, depth, color, interlace, idat = header
    if color not in _PNG_CHANNELS:
        return
    bits = depth * _PNG_CHANNELS[color]

    def row_bytes(w: int) -> int:
        return 1 + (w * bits + 7) // 8  # the filter byte and the packed samples

    if interlace:
        needed = 0
        for x0, y0, dx, dy in _ADAM7:
            w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
            needed += h * row_bytes(w) if w and h else 0
    else:
        needed = height * row_bytes(width)
    try:
        got = len(zlib.decompressobj().decompress(idat, needed))
    except zlib.error as err:
        raise BadImage(f"truncated or corrupt image: {err}") from None
    if got < needed:
        rows = got // row_bytes(width) if not interlace else None
        held = f"{rows} of {height} rows" if rows is not None else f"{got} of {needed} bytes"
        raise BadImage(f"truncated image: its pixel data hold {held}")


#: what libjpeg decodes a block with no data to (all coefficients 0), per mode
_JPEG_FILL = {"L": 128, "RGB": (128, 128, 128)}
#: bytes put before EOI by the probe; data that was complete never reads them
_JPEG_PROBE = b"\x55" * 64


def _check_jpeg_complete(image: Image.Image, raw: bytes | bytearray) -> None:
    """A JPEG whose entropy data end before its last block decodes with grey-128 blocks
    from the cut on. The test: decode again with junk bytes put before the EOI marker.
    Complete data never reach them (libjpeg skips them as extraneous bytes before the
    marker) and the pixels are identical; cut data read them as coefficients, and the
    pixels change. The second decode (~0.7 ms) runs only when the last row has a pixel
    of exactly the fill value (true of every cut before the last block row, rare in
    photos: it must be exact) or the JPEG is progressive (a cut refinement scan is
    blurred, not grey). A cut inside the very last block changes at most that block."""
    fill = _JPEG_FILL.get(image.mode)
    if fill is None:
        return
    pixels = np.asarray(image)
    last_row = pixels[-1]
    suspicious = bool(image.info.get("progressive") or image.info.get("progression")) or bool(
        (last_row == fill).all(axis=-1).any() if last_row.ndim == 2 else (last_row == fill).any()
    )
    if not suspicious:
        return
    end = _jpeg_end(raw)
    if end is None:
        return
    try:
        with Image.open(io.BytesIO(bytes(raw[:end]) + _JPEG_PROBE + bytes(raw[end:]))) as probe:
            probe.load()
            same = probe.mode == image.mode and np.array_equal(np.asarray(probe), pixels)
    except (OSError, SyntaxError, ValueError, EOFError):
        same = False
    if not same:
        raise BadImage("truncated image: its JPEG data end before the last rows (the decoder filled them grey)")


def _jpeg_end(raw: bytes | bytearray) -> int | None:
    """Offset of the EOI marker that ends the (first) image's data, walking the
    segments (EXIF thumbnails are inside APP1 and skipped whole), or None."""
    size, at = len(raw), 2
    while at + 2 <= size:
        if raw[at] != 0xFF:
            return None
        marker = raw[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
        elif marker == 0xD9:
            return at
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length field
            at += 2
        else:
            if at + 4 > size:
                return None
            at += 2 + int.from_bytes(raw[at + 2: at + 4], "big")
            if marker == 0xDA:  # entropy-coded data: up to a marker that is not FF00 / RSTn
                while True:
                    found = raw.find(b"\xff", at)
                    if found < 0 or found + 1 >= size:
                        return None
                    following = raw[found + 1]
                    if following == 0x00 or 0xD0 <= following <= 0xD7:
                        at = found + 2
                    elif following == 0xFF:
                        at = found + 1
                    else:
                        at = found
                        break
    return None


def _png_header(raw: bytes | bytearray) -> tuple[int, int, int, int, int, bytes] | None:
    """(width, height, bit depth, colour type, interlace, IDAT data) of a PNG, or None."""
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    position, idat, ihdr = 8, [], None
    view = memoryview(raw)
    while position + 8 <= len(raw):
        length, kind = struct.unpack(">I4s", view[position:position + 8])
        data = view[position + 8: position + 8 + length]
        if kind == b"IHDR" and length >= 13:
            ihdr = struct.unpack(">IIBBBBB", data[:13])
        elif kind == b"IDAT":
            idat.append(bytes(data))
        elif kind == b"IEND":
            break
        position += 12 + length
    if ihdr is None:
        return None
    width, height, depth, color, _, _, interlace = ihdr
    return width, height, depth, color, interlace, b"".join(idat)


@contextlib.contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """PIL's own bomb check uses a global; make it ours for the duration."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def apply_exif_orientation(image: Image.Image) -> Image.Image:
    # Phone photos store rotation as a tag; CelebA has none, so this is usually a no-op.
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # malformed EXIF must not cost us an otherwise good image
        return image
    if orientation in (1, None):
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def wide_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """16-bit (or 32-bit holding 16-bit) grey -> uint8 by 255/65535, rounded, never clipped
    at 255; 'F' floats are taken on the 0..255 scale."""
    if mode == "F":
        return np.clip(np.round(values), 0, 255).astype(np.uint8)
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


# ---- ingest: center crop, 8-bit RGB, PNG ---------------------------------------------


def crop_to_png(raw: bytes, hr_size: int, max_pixels: int) -> bytes:
    """Encoded image bytes -> PNG bytes of its center hr_size x hr_size crop (8-bit RGB)."""
    image = open_checked(raw, max_pixels, min_side=hr_size)
    image = apply_exif_orientation(image)
    crop = image.crop(center_box(image.width, image.height, hr_size))
    return encode_png(to_rgb8(crop))


def center_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """The center size x size crop box; (25, 45, 153, 173) for 178x218 and 128."""
    left, top = (width - size) // 2, (height - size) // 2
    return left, top, left + size, top + size


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (see COLOR_RULE)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        gray = wide_to_8bit(np.asarray(image), mode)
        return Image.fromarray(np.ascontiguousarray(np.stack([gray] * 3, axis=-1)))
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        return _composite_on_black(image.convert("RGBA"))
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def _composite_on_black(rgba: Image.Image) -> Image.Image:
    pixels = np.asarray(rgba).astype(np.uint32)
    rgb = (pixels[..., :3] * pixels[..., 3:4] + 127) // 255
    return Image.fromarray(rgb.astype(np.uint8))


def encode_png(image: Image.Image) -> bytes:
    """Lossless PNG with deterministic bytes: a fresh image has no info to copy into
    chunks (ICC profile, EXIF, dpi, text), and the zlib level is fixed."""
    clean = Image.frombytes(image.mode, image.size, image.tobytes())
    buffer = io.BytesIO()
    clean.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
