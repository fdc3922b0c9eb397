"""Super-resolve images of any size and mode with a generator, in bounded memory.

Tiling: the image is cut into cores of `tile` x `tile` LR pixels. Each core is run
through the generator together with up to `overlap` pixels of real image context on
every side (clipped at the image border), and only the core's part of the output is
kept. Neighbouring cores therefore abut exactly and each sees real neighbours instead of
zero padding for `overlap` pixels, which is what makes seams invisible: the tiled result
equals the untiled one up to rounding once `overlap` covers the generator's effective
receptive field (see tests/test_upscale.py). Peak memory depends on
(tile + 2 * overlap)^2, never on the image size; only the uint8 output is full size.

Image modes (chosen, not inherited from the model, which only knows RGB):
- RGB: the generator.
- RGBA / LA: colour by the generator, alpha by bicubic (alpha is a mask, not texture).
- L (and 1-bit): replicated to RGB, upscaled, converted back to L with PIL's ITU-R 601
  luma, so a grey image stays grey (and single-channel) instead of picking up tints.
- 16-bit grey (I;16*, I): reduced to 8 bits (value / 257), then as L; the output is
  8-bit L because the model is 8-bit.
- P (palette): converted to RGB, or RGBA when it has transparency; the output is not
  re-palettised. CMYK, YCbCr, LAB, HSV, RGBX: converted to RGB.
- EXIF orientation is applied first, since the PNG output carries no EXIF.

Files: only regular files are read (a FIFO or device is skipped, never opened for a
blocking read), at most `max_file_bytes` of them, and an image whose header says more
than `max_pixels` pixels is skipped before decoding. Output goes into a folder that
upscale made (srcore.atomic.claim_output_dir); an input that fails, or whose output
cannot be written, is skipped and recorded while the others are still written. The x4
output counts too: an input whose output would exceed `max_pixels` is skipped before
decoding (a 98-byte PNG can declare 6400x6200, a 1.9 GB output), and a truncated file
is refused rather than upscaled with black rows.

Inputs smaller than MIN_SIDE pixels on a side are refused: a 1-pixel line has no
neighbourhood for the generator to infer detail from, so the "super-resolution" would be
noise around a constant.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterable, Iterator

import keras
import numpy as np
from PIL import Image

from srcore.atomic import check_output_dir, claim_output_dir, write_atomic
from srcore.data import images as image_rules
from srcore.data.sources import MAX_ENTRY_BYTES, EntryTooLarge, FileRef, NotRegularFile, printable
from srcore.data.degrade import from_unit, to_unit
from srcore.models import generator_scale

log = logging.getLogger(__name__)

DEFAULT_TILE = 128  # LR pixels per tile core: ~100 MB of activations for the full model
#: LR pixels of context on each side of a core. Measured bound at DEFAULT_TILE with this
#: overlap: tiled == untiled within 1 grey level for the full 16-block generator, both
#: trained (3 epochs, issue 13: 0-1 at tile 128 or 64) and with weights that make the
#: receptive field matter (tests/test_upscale.py: max diff 178 / 49 / 9 / 1 at overlap
#: 0 / 8 / 12 / 16). The theoretical receptive field (~40 LR px) is wider, its tail too
#: weak to change a rounded grey level.
DEFAULT_OVERLAP = 16
MIN_SIDE = 2
DEFAULT_MAX_PIXELS = 40_000_000  # same decompression-bomb guard as Config.max_pixels
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class ImageTooSmallError(ValueError):
    """The input is smaller than MIN_SIDE x MIN_SIDE pixels."""


class UnreadableImageError(ValueError):
    """A file could not be read or decoded as an image (or exceeds max_pixels)."""


class ScaleMismatchError(ValueError):
    """`scale` was given and differs from the generator's upscaling factor."""


class UpscaleTimeout(TimeoutError):
    """The work ran past its deadline (a served request's time budget)."""


# ---- arrays ------------------------------------------------------------------------


def upscale_array(
    generator: keras.Model,
    img: np.ndarray,
    tile: int | None = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    name: str = "image",
    deadline: float | None = None,
) -> np.ndarray:
    """uint8 HxW, HxWx1 (grey), HxWx2 (grey+alpha), HxWx3 (RGB) or HxWx4 (RGBA) ->
    the same layout `scale` times larger. `tile` is the tile core in LR pixels: None means
    DEFAULT_TILE, 0 runs the image in one piece (unbounded memory). `name` (e.g. the file
    path) is used in error messages. `deadline` (time.monotonic()) is checked before
    every tile: past it, UpscaleTimeout is raised and no further tile is computed."""
    img = np.asarray(img)
    check_image_array(img, name)
    tile = _tile_size(tile, overlap)
    scale = generator_scale(generator)
    run = _Tiler(generator, scale, tile, overlap, deadline, name)
    if img.ndim == 2:
        return run.grey(img)
    channels = img.shape[2]
    if channels == 1:
        return run.grey(img[..., 0])[..., None]
    if channels == 2:
        return np.dstack([run.grey(img[..., 0]), _upscale_alpha(img[..., 1], scale)])
    if channels == 3:
        return run.rgb(img)
    return np.dstack([run.rgb(img[..., :3]), _upscale_alpha(img[..., 3], scale)])


def check_image_array(img: np.ndarray, name: str) -> None:
    if img.dtype != np.uint8:
        raise TypeError(f"{name}: expected a uint8 image, got dtype {img.dtype}")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 2, 3, 4)):
        raise ValueError(f"{name}: expected HxW or HxWxC with C in 1..4, got shape {img.shape}")
    h, w = img.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ImageTooSmallError(
            f"{name}: {w}x{h} px is too small to upscale; need at least {MIN_SIDE}x{MIN_SIDE} px"
        )


def _tile_size(tile: int | None, overlap: int) -> int:
    """Validated tile size; None (e.g. a CLI flag left out) means the default."""
    tile = DEFAULT_TILE if tile is None else int(tile)
    if tile < 0:
        raise ValueError(f"tile must be a positive number of LR pixels (or 0 for no tiling), got {tile}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0 LR pixels, got {overlap}")
    return tile


def _upscale_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    h, w = alpha.shape
    return np.asarray(Image.fromarray(alpha).resize((w * scale, h * scale), Image.Resampling.BICUBIC))


class _Tiler:
    """Runs the generator over an image tile by tile (see the module doc)."""

    def __init__(self, generator: keras.Model, scale: int, tile: int, overlap: int,
                 deadline: float | None, name: str):
        self.generator, self.scale, self.tile, self.overlap = generator, scale, tile, overlap
        self.deadline, self.name = deadline, name

    def grey(self, grey: np.ndarray) -> np.ndarray:
        rgb = self.rgb(np.repeat(grey[..., None], 3, axis=2))
        return np.asarray(Image.fromarray(rgb).convert("L"))

    def rgb(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        scale, overlap = self.scale, self.overlap
        out = np.empty((h * scale, w * scale, 3), np.uint8)
        for ys, xs in _tile_cores(h, w, self.tile):
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise UpscaleTimeout(f"{self.name}: ran out of time before the tile at ({xs.start}, {ys.start})")
            ctx_y = slice(max(0, ys.start - overlap), min(h, ys.stop + overlap))
            ctx_x = slice(max(0, xs.start - overlap), min(w, xs.stop + overlap))
            sr = _run_generator(self.generator, rgb[ctx_y, ctx_x])
            # keep only the core: its offset inside the context window, times the scale
            top, left = (ys.start - ctx_y.start) * scale, (xs.start - ctx_x.start) * scale
            core_h, core_w = (ys.stop - ys.start) * scale, (xs.stop - xs.start) * scale
            out[ys.start * scale : ys.stop * scale, xs.start * scale : xs.stop * scale] = sr[
                top : top + core_h, left : left + core_w
            ]
        return out


def _tile_cores(h: int, w: int, tile: int) -> Iterator[tuple[slice, slice]]:
    tile_h = tile or h
    tile_w = tile or w
    for y in range(0, h, tile_h):
        for x in range(0, w, tile_w):
            yield slice(y, min(h, y + tile_h)), slice(x, min(w, x + tile_w))


def _run_generator(generator: keras.Model, rgb: np.ndarray) -> np.ndarray:
    # a direct call, not predict(): eager execution takes every tile shape without retracing
    sr = generator(to_unit(rgb[None]), training=False)
    return from_unit(sr)[0].numpy()


# ---- files -------------------------------------------------------------------------


class UpscaledFiles(list):
    """The written output paths (a plain list of Path) plus `skipped`: one
    (input path, reason) pair for every input that was not upscaled."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: list[tuple[Path, str]] = []


OUTPUT_KIND = "upscale"


def upscale_files(
    model_uri_or_path: str | os.PathLike,
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    scale: int | None = None,
    tile: int | None = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = MAX_ENTRY_BYTES,
) -> UpscaledFiles:
    """Upscale image files (directories are expanded to their images) into
    `out_dir/<stem>_x<scale>.png`. Unreadable, oversized (> max_pixels pixels or
    > max_file_bytes bytes), special (FIFO, device) and too small inputs, and outputs the
    file system refuses, are skipped, logged and listed in the result's `skipped`; they
    never stop the batch. `scale`, when given, must equal the model's factor. `tile`: as
    upscale_array. `out_dir` must be new, empty or an earlier upscale output: otherwise
    OutputDirError (an OSError naming it when it cannot be created)."""
    # imported here: the pyfunc model's serving environment needs neither tqdm nor MLflow URIs
    from srcore.model_uri import check_model_source, resolve_generator
    from srcore.progress import progress

    tile = _tile_size(tile, overlap)
    check_model_source(str(model_uri_or_path))  # a bogus model: one line, before anything else
    check_output_dir(out_dir, OUTPUT_KIND)  # srcore.atomic's ownership rule: refused before any work
    generator = resolve_generator(str(model_uri_or_path))
    factor = generator_scale(generator)
    check_scale(scale, factor, str(model_uri_or_path))
    files = expand_inputs(inputs)
    out = claim_output_dir(out_dir, OUTPUT_KIND)  # only now: a bad model or input leaves no folder behind

    result = UpscaledFiles()
    used_names: set[str] = set()
    for path in progress(files, total=len(files), desc="upscale", unit="img"):
        try:
            image = read_image(path, max_pixels, max_file_bytes, output_scale=factor)
            sr = upscale_array(generator, image, tile=tile, overlap=overlap, name=str(path))
            target = out / _output_name(path, factor, used_names)
            write_image_atomic(sr, target)
        except (UnreadableImageError, ImageTooSmallError, OSError) as e:
            reason = printable(str(e))
            log.warning("skipping %s", reason)
            result.skipped.append((path, reason))
            continue
        result.append(target)
    _log_summary(result, len(files), out)
    return result


def check_scale(scale: int | None, model_factor: int, model: str) -> None:
    """Refuse a requested `scale` the model cannot deliver."""
    if scale is not None and int(scale) != model_factor:
        raise ScaleMismatchError(
            f"--scale {scale} does not match the model's upscaling factor x{model_factor} ({model}); "
            f"omit --scale or pass --scale {model_factor}"
        )


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Paths as given; a directory stands for its image files (sorted, not recursive)."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files.extend(sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(p)  # a missing file is reported as unreadable, not fatal
    return files


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, max_file_bytes: int = MAX_ENTRY_BYTES,
               output_scale: int = 1) -> np.ndarray:
    """Decode `path` into a uint8 array in one of upscale_array's layouts (see module doc).
    Only a regular file is read, at most `max_file_bytes` of it; the pixel count of the
    input and of its `output_scale` x larger output are checked against `max_pixels` on
    the header, before decoding; a truncated file is refused."""
    try:
        raw = FileRef(str(path), max_file_bytes)()
    except (EntryTooLarge, NotRegularFile) as e:
        raise UnreadableImageError(f"{path}: {e}") from e
    except OSError as e:
        raise UnreadableImageError(f"{path}: cannot read ({e.strerror or e})") from e
    try:
        with image_rules.open_checked(raw, max_pixels, output_scale=output_scale) as img:
            return _to_upscalable_array(image_rules.apply_exif_orientation(img))
    except image_rules.BadImage as e:
        message = str(e).replace("max_pixels=", "max_pixels (--max-pixels) =")
        raise UnreadableImageError(f"{path}: not a usable image: {message}") from e
    except (OSError, ValueError) as e:
        raise UnreadableImageError(f"{path}: not a readable image ({e})") from e


def _to_upscalable_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("RGB", "RGBA", "L", "LA"):
        return np.asarray(img)
    if mode in _SIXTEEN_BIT_MODES:
        return image_rules.wide_to_8bit(np.asarray(img), mode)
    if mode == "P":
        return np.asarray(img.convert("RGBA" if "transparency" in img.info else "RGB"))
    if mode in ("PA", "RGBa"):
        return np.asarray(img.convert("RGBA"))
    if mode in ("1", "F"):
        return np.asarray(img.convert("L"))
    if mode == "La":
        return np.asarray(img.convert("LA"))
    return np.asarray(img.convert("RGB"))  # CMYK, YCbCr, LAB, HSV, RGBX, ...


def _output_name(path: Path, factor: int, used: set[str]) -> str:
    # two inputs with the same stem (a.jpg, b/a.png) must not overwrite each other
    name, n = f"{path.stem}_x{factor}.png", 1
    while name in used:
        n += 1
        name = f"{path.stem}-{n}_x{factor}.png"
    used.add(name)
    return name


def write_image_atomic(img: np.ndarray, target: Path) -> None:
    """Write a PNG under a temporary name and rename it, so `target` is never half written."""
    pixels = img[..., 0] if img.ndim == 3 and img.shape[2] == 1 else img
    write_atomic(target, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))


def _log_summary(result: UpscaledFiles, total: int, out: Path) -> None:
    log.info("upscaled %d of %d file(s) into %s", len(result), total, out)
    if result.skipped:
        log.warning(
            "skipped %d file(s): %s", len(result.skipped), "; ".join(reason for _, reason in result.skipped)
        )

