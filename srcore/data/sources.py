"""Image sources for ingest: a CelebA zip, a directory, an http(s) URL of a zip, or 'demo'.

`iter_images(spec, ...)` yields `(name, data)` pairs sorted by their path in the
source, where `name` is the file's basename without extension and `data` is a
picklable zero-argument callable returning the file's bytes (so that worker
processes read the bytes themselves, and a zip is read member by member, never
extracted). Entries that must not be used are reported through `on_skip(name, path,
reason)` and logged as warnings:

- zip entries whose path escapes the archive (`../x.jpg`, `/x.jpg`, `C:x.jpg`) or
  that are symbolic links (their path is never used to write anything anyway:
  outputs are named after the sanitised `name` only);
- names that are unsafe as file names (hidden, or containing separators);
- files larger than MAX_ENTRY_BYTES (zip bombs and the like; for directories the
  reader refuses them, raising EntryTooLarge, so that listing needs no stat calls);
- a name seen before ("duplicate name": the first path in sorted order wins).

This module must stay free of TensorFlow: ingest's worker processes import it.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import stat
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
from PIL import Image

from srcore.config import ConfigError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
#: larger files are refused unread: no 178x218 face needs anything near this
MAX_ENTRY_BYTES = 256 * 1024 * 1024
DEMO_NAME = "demo"
#: bump when the demo renderer changes, so that old demo ingests are redone
DEMO_VERSION = 1
DEMO_WIDTH, DEMO_HEIGHT = 178, 218  # CelebA's aligned size

ImageData = bytes | Callable[[], bytes]
SkipHandler = Callable[[str, str, str], None]


class Entry(NamedTuple):
    """One candidate image: unpacks as `(name, data)`."""

    name: str
    data: ImageData


class EntryTooLarge(ValueError):
    """A file over MAX_ENTRY_BYTES: refused unread (its message is the skip reason)."""


def read_bytes(data: ImageData) -> bytes:
    return data if isinstance(data, bytes) else data()


# ---- picklable readers (run in worker processes) ----------------------------------


@dataclass(frozen=True)
class FileRef:
    path: str

    def __call__(self) -> bytes:
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_ENTRY_BYTES:
                raise EntryTooLarge(f"file too large ({size} bytes > {MAX_ENTRY_BYTES})")
            return f.read()

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True)
class ZipMember:
    archive: str
    member: str

    def __call__(self) -> bytes:
        # ZipFile.read checks the member's CRC, so a corrupt member raises here.
        return _open_zip(self.archive).read(self.member)

    def __str__(self) -> str:
        return f"{self.archive}!{self.member}"


def _open_zip(archive: str) -> zipfile.ZipFile:
    """One open handle per archive and process: reopening per member would re-read
    the central directory (200k entries for CelebA) every time. Keyed by size and
    mtime too, so that a zip replaced at the same path is opened afresh."""
    info = os.stat(archive)
    return _open_zip_cached(archive, info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _open_zip_cached(archive: str, size: int, mtime_ns: int) -> zipfile.ZipFile:
    return zipfile.ZipFile(archive)


@dataclass(frozen=True)
class DemoImage:
    index: int

    def __call__(self) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(render_demo_image(self.index)).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    def __str__(self) -> str:
        return f"demo image #{self.index}"


# ---- source kinds -------------------------------------------------------------------


def source_kind(spec: str) -> str:
    """'demo', 'url', 'zip' or 'directory'; ConfigError when `spec` names nothing usable."""
    if spec == DEMO_NAME:
        return "demo"
    if re.match(r"^https?://", spec, re.IGNORECASE):
        return "url"
    path = Path(spec).expanduser()
    if path.is_dir():
        return "directory"
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise ConfigError(
                f"invalid parameter source={spec!r}: {path} is not a zip archive; pass CelebA's "
                "img_align_celeba.zip, a directory of images, an http(s) URL or 'demo'"
            )
        return "zip"
    raise ConfigError(
        f"invalid parameter source={spec!r}: no such file or directory; pass CelebA's "
        "img_align_celeba.zip, a directory of images, an http(s) URL of the zip, or 'demo'"
    )


def describe_source(spec: str, *, sha256: str = "", demo_count: int = 0) -> dict:
    """A cheap identity of the source (no listing, no network) for the manifest and
    for deciding whether an earlier ingest is still up to date."""
    kind = source_kind(spec)
    if kind == "demo":
        return {"kind": "demo", "version": DEMO_VERSION, "images": demo_count}
    if kind == "url":
        return {"kind": "url", "url": spec, "sha256": sha256.lower()}
    path = Path(spec).expanduser().resolve()
    if kind == "zip":
        return {"kind": "zip", "path": str(path), "bytes": path.stat().st_size}
    return {"kind": "directory", "path": str(path)}


def iter_images(
    spec: str,
    *,
    cache_dir: str | os.PathLike = "~/.cache/srgan",
    sha256: str = "",
    demo_count: int = 0,
    on_skip: SkipHandler | None = None,
) -> Iterator[Entry]:
    """Yield `(name, data)` for every usable image of the source, in path order.

    A URL is downloaded (resumably, cached, sha256-checked) and then read as a zip.
    `demo_count` is how many synthetic images the 'demo' source provides.
    """
    kind = source_kind(spec)
    if kind == "demo":
        raw: Iterable[tuple[str, ImageData]] = _demo_entries(demo_count)
    elif kind == "directory":
        raw = _directory_entries(Path(spec).expanduser())
    else:
        archive = Path(spec).expanduser()
        if kind == "url":
            from srcore.data.download import download  # requests only when needed

            archive = download(spec, cache_dir, sha256 or None)
            if not zipfile.is_zipfile(archive):
                raise ConfigError(f"invalid parameter source={spec!r}: the downloaded file {archive} is not a zip archive")
        raw = _zip_entries(archive, on_skip)
    return _unique_names(raw, on_skip)


def _report(on_skip: SkipHandler | None, name: str, path: str, reason: str) -> None:
    log.warning("skipping %s: %s", path, reason)
    if on_skip is not None:
        on_skip(name, path, reason)


def _is_image_path(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _is_os_metadata(path: str) -> bool:
    """macOS adds '__MACOSX/' and '._name' companions to zips it makes: not images."""
    return path.startswith("__MACOSX/") or "/__MACOSX/" in path or path.rsplit("/", 1)[-1].startswith("._")


def name_of(path: str) -> str:
    return PurePosixPath(path.replace("\\", "/")).stem


def unsafe_name_reason(name: str) -> str | None:
    """Outputs are written as `<name>.png`; refuse names that could misbehave there."""
    if not name or name.startswith("."):
        return "unsafe name: empty or hidden"
    if any(c in name for c in "/\\\0") or not name.isprintable():
        return "unsafe name: contains separators or control characters"
    return None


def _unique_names(raw: Iterable[tuple[str, ImageData]], on_skip: SkipHandler | None) -> Iterator[Entry]:
    seen: dict[str, str] = {}
    for path, data in raw:
        name = name_of(path)
        reason = unsafe_name_reason(name)
        if reason is None and name in seen:
            reason = "duplicate name"
            log.info("%s and %s share the name %r: the first is used", seen[name], path, name)
        if reason:
            _report(on_skip, name, path, reason)
            continue
        seen[name] = path
        yield Entry(name, data)


def _directory_entries(root: Path) -> Iterator[tuple[str, ImageData]]:
    # Plain strings rather than Path objects: CelebA's 202,599 files list in a second.
    top = str(root)
    found: list[str] = []
    for folder, subfolders, files in os.walk(top):  # does not follow directory symlinks
        subfolders.sort()
        prefix = os.path.relpath(folder, top).replace(os.sep, "/") + "/"
        prefix = "" if prefix == "./" else prefix
        found.extend(prefix + f for f in files if _is_image_path(f) and not _is_os_metadata(prefix + f))
    for rel in sorted(found):
        yield rel, FileRef(os.path.join(top, rel))


def unsafe_member_reason(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member must not be used (zip-slip, symlinks), or None."""
    if stat.S_ISLNK(info.external_attr >> 16):
        return "unsafe zip entry: symbolic link"
    path = info.filename.replace("\\", "/")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        return "unsafe zip entry: absolute path"
    if ".." in path.split("/"):
        return "unsafe zip entry: path escapes the archive ('..')"
    return None


def _zip_entries(archive: Path, on_skip: SkipHandler | None) -> Iterator[tuple[str, ImageData]]:
    try:
        members = _open_zip(str(archive)).infolist()
    except (zipfile.BadZipFile, OSError) as err:
        raise ConfigError(f"invalid parameter source={str(archive)!r}: not a readable zip archive ({err})") from err
    for info in sorted(members, key=lambda i: i.filename):
        path = info.filename
        if info.is_dir() or not _is_image_path(path) or _is_os_metadata(path.replace("\\", "/")):
            continue
        reason = unsafe_member_reason(info)
        if reason is None and info.file_size > MAX_ENTRY_BYTES:
            reason = f"file too large ({info.file_size} bytes > {MAX_ENTRY_BYTES})"
        if reason:
            _report(on_skip, name_of(path), path, reason)
            continue
        yield path, ZipMember(str(archive), path)


# ---- demo images ------------------------------------------------------------------


def _demo_entries(count: int) -> Iterator[tuple[str, ImageData]]:
    for index in range(count):
        yield f"demo-{index:06d}.png", DemoImage(index)


def render_demo_image(index: int) -> np.ndarray:
    """A deterministic synthetic 'face' (178x218 RGB uint8) with real fine detail.

    Smooth shading, sharp edges (face, eyes, mouth outlines), stripes (hair) and
    noise (skin texture) give a super-resolution model something to learn without
    CelebA or network access. Same index -> same pixels.
    """
    rng = np.random.default_rng([20240601, index])
    h, w = DEMO_HEIGHT, DEMO_WIDTH
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)

    image = _gradient_background(rng, x, y)
    cx, cy = w / 2 + rng.uniform(-8, 8), h * 0.55 + rng.uniform(-8, 8)
    ax, ay = rng.uniform(42, 54), rng.uniform(56, 68)

    hair = _ellipse(x, y, cx, cy - ay * 0.35, ax * 1.25, ay * 0.95)
    hair_color = rng.uniform(10, 120, 3)
    strands = 0.5 + 0.5 * np.sin(rng.uniform(0.6, 1.4) * x + 3 * np.sin(y / rng.uniform(6, 14)))
    _paint(image, hair, hair_color[None, None, :] * (0.6 + 0.6 * strands[..., None]))

    face = _ellipse(x, y, cx, cy, ax, ay)
    skin = rng.uniform([150, 100, 80], [240, 190, 160])
    radial = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2
    _paint(image, face, skin[None, None, :] * (1.0 - 0.25 * radial[..., None]))

    eye_dx, eye_y = ax * rng.uniform(0.35, 0.45), cy - ay * rng.uniform(0.15, 0.25)
    iris = rng.uniform(20, 140, 3)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        _paint(image, _ellipse(x, y, ex, eye_y, 10, 5), np.array([235, 235, 230]))
        _paint(image, _ellipse(x, y, ex, eye_y, 4, 4), iris)
        _paint(image, _ellipse(x, y, ex, eye_y, 1.6, 1.6), np.array([10, 10, 10]))
        _paint(image, _ellipse(x, y, ex, eye_y - 11, 12, 2.5), hair_color * 0.8)  # eyebrow

    _paint(image, _ellipse(x, y, cx, cy + ay * 0.12, 4, 11), skin * 0.8)  # nose shadow
    mouth_y = cy + ay * rng.uniform(0.45, 0.55)
    _paint(image, _ellipse(x, y, cx, mouth_y, ax * 0.35, 4.5), rng.uniform([140, 40, 50], [210, 90, 100]))

    image += rng.normal(0.0, 6.0, image.shape)  # sensor-like grain: genuine high frequencies
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _gradient_background(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    start, end = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    angle = rng.uniform(0, np.pi)
    t = (x * np.cos(angle) + y * np.sin(angle)) / (DEMO_WIDTH + DEMO_HEIGHT)
    t = (t - t.min()) / (t.max() - t.min())
    background = start + (end - start) * t[..., None]
    frequency, direction = rng.uniform(0.2, 0.7), rng.uniform(0, np.pi)
    stripes = np.sin(frequency * (x * np.cos(direction) + y * np.sin(direction)))
    return background + 18.0 * stripes[..., None]


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0


def _paint(image: np.ndarray, mask: np.ndarray, color: np.ndarray) -> None:
    color = np.broadcast_to(color, image.shape)
    image[mask] = color[mask]
