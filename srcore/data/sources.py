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
- files larger than the size cap (`max_bytes`, default MAX_ENTRY_BYTES: zip bombs,
  /dev/zero and the like); the cap is enforced while reading, not taken from a header
  or st_size, and a reader that exceeds it raises EntryTooLarge;
- in a folder: anything but a regular file (FIFOs, sockets, devices), and symbolic
  links that leave the source folder unless `follow_symlinks` is set;
- in a zip: a second entry with a path seen before ("duplicate zip entry": the first
  entry in archive order is used, and the manifest's identity covers its CRC), and
  entries whose names are not valid UTF-8 although flagged so;
- a name seen before ("duplicate name": the first path in sorted order wins).

Every entry carries a cheap `stamp` (folder: size, mtime, ctime and inode; zip: CRC-32
and size) so that ingest can tell whether the source changed without reading it
(`fingerprint`). The folder stamp holds ctime because an edit that keeps the size and
restores the mtime (`touch -d`, `os.utime`) still moves the ctime, which no unprivileged
user can set back; it costs nothing (the listing's lstat has it), whereas hashing the
files' bytes would read the whole source on every run. A copied or restored folder thus
counts as changed (re-ingested once), never the other way round.

A folder file is read only if it is still the file that was listed: FileRef opens it
with O_NOFOLLOW and compares the descriptor's fstat (device, inode, size, mtime, ctime)
with the listing's lstat, so a file or symbolic link swapped in after the listing is
refused and counted ("changed since listing").

Names from a source are untrusted: they are logged through `printable()`. A URL is
recorded (manifest, MLflow, logs, errors) only through `redact_url()`.

This module must stay free of TensorFlow: ingest's worker processes import it.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import struct
import logging
import os
import re
import stat
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import numpy as np
from PIL import Image

from srcore.atomic import MARKER as OUTPUT_MARKER
from srcore.config import ConfigError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
#: larger files are refused unread: no 178x218 face needs anything near this
MAX_ENTRY_BYTES = 256 * 1024 * 1024
#: outputs are `<name>.png`; most file systems allow 255 bytes per name
MAX_NAME_BYTES = 250
DEMO_NAME = "demo"
#: bump when the demo renderer changes, so that old demo ingests are redone
DEMO_VERSION = 1
DEMO_WIDTH, DEMO_HEIGHT = 178, 218  # CelebA's aligned size
#: the demo source provides at most this many images, whatever `limit` says: it is a
#: smoke test, and its candidate list (one small object per image) must stay bounded
DEMO_MAX_IMAGES = 100_000

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


def printable(text: str) -> str:
    """`text` for a log line: control characters (and the like) escaped as in repr()."""
    return text if text.isprintable() else repr(text)[1:-1]


def _read_capped(stream, max_bytes: int, what: str) -> bytes:
    """Read until EOF, but never more than `max_bytes` (the header may lie)."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise EntryTooLarge(f"file too large (more than {max_bytes} bytes): {printable(what)}")
    return data


@dataclass(frozen=True)
class FileRef:
    """A regular file of a folder source, read with the size cap enforced.

    `identity` is the listing's (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) of the
    file; when set, the opened descriptor's fstat must match it (a swap after the listing
    is refused; size and times too because a freed inode number is reused at once by
    the next file created), and `nofollow` opens it with O_NOFOLLOW (the listing saw a
    regular file, not a link)."""

    path: str
    max_bytes: int = MAX_ENTRY_BYTES
    stamp: str = ""
    identity: tuple[int, ...] | None = None
    nofollow: bool = False

    def __call__(self) -> bytes:
        # O_NONBLOCK: if the file was swapped for a FIFO since the listing, opening it
        # must not wait for a writer; fstat then refuses anything but a regular file.
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
        if self.nofollow:
            flags |= getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, flags)
        except OSError as err:
            if self.nofollow and err.errno == errno.ELOOP:
                raise ChangedSinceListing("changed since listing: now a symbolic link (not followed)") from None
            raise
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise NotRegularFile(f"not a regular file ({_file_type(info.st_mode)})")
            if self.identity is not None and _identity(info) != tuple(self.identity):
                raise ChangedSinceListing("changed since listing: another file is at this path now (not read)")
            return _read_capped(f, self.max_bytes, self.path)

    def __str__(self) -> str:
        return self.path


def _identity(info: os.stat_result) -> tuple[int, ...]:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


class NotRegularFile(ValueError):
    """A FIFO, device, socket, ... where an image file was expected."""


class ChangedSinceListing(ValueError):
    """The path of a folder source no longer holds the file that was listed (a swap)."""


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "folder"), (stat.S_ISLNK, "symbolic link")):
        if test(mode):
            return name
    return "special file"


@dataclass(frozen=True)
class ZipMember:
    """Entry number `index` of the archive (by index, not name: with duplicate paths,
    ZipFile.read(name) would return the last one, not the one selected)."""

    archive: str
    member: str
    index: int = -1
    max_bytes: int = MAX_ENTRY_BYTES
    stamp: str = ""

    def __call__(self) -> bytes:
        archive = _open_zip(self.archive)
        info = archive.infolist()[self.index] if self.index >= 0 else archive.getinfo(self.member)
        # ZipExtFile checks the member's CRC at EOF, so a corrupt member raises here.
        with archive.open(info) as member:
            return _read_capped(member, self.max_bytes, f"{self.archive}!{self.member}")

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
    try:
        return zipfile.ZipFile(archive)
    except UnicodeDecodeError:
        # An entry flagged UTF-8 whose name is not: zipfile refuses the whole archive.
        # Read it with those flags cleared (names decode as cp437) and skip those entries.
        handle = _FlagScrubbingFile(archive)
        zf = zipfile.ZipFile(handle)
        zf.srgan_undecodable = handle.undecodable  # type: ignore[attr-defined]
        return zf


class _FlagScrubbingFile(io.RawIOBase):
    """A read-only view of a zip file whose central directory has the UTF-8 flag cleared
    on entries whose names are not valid UTF-8; `undecodable` holds their indices."""

    def __init__(self, path: str):
        self._file = open(path, "rb")
        self.undecodable: set[int] = set()
        start, size = self._central_directory()
        self._file.seek(start)
        directory = bytearray(self._file.read(size))
        position, index = 0, 0
        while position + 46 <= len(directory) and directory[position:position + 4] == b"PK\x01\x02":
            flags, = struct.unpack_from("<H", directory, position + 8)
            name_len, extra_len, comment_len = struct.unpack_from("<HHH", directory, position + 28)
            name = bytes(directory[position + 46: position + 46 + name_len])
            if flags & 0x800:
                try:
                    name.decode("utf-8")
                except UnicodeDecodeError:
                    struct.pack_into("<H", directory, position + 8, flags & ~0x800)
                    self.undecodable.add(index)
            position += 46 + name_len + extra_len + comment_len
            index += 1
        self._patch_start, self._patch = start, bytes(directory)
        self._file.seek(0)

    def _central_directory(self) -> tuple[int, int]:
        self._file.seek(0, 2)
        end = self._file.tell()
        tail_start = max(0, end - 65_557)
        self._file.seek(tail_start)
        tail = self._file.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0:
            raise zipfile.BadZipFile("no end of central directory record")
        size, start = struct.unpack_from("<II", tail, at + 12)
        if 0xFFFFFFFF in (size, start) and at >= 20 and tail[at - 20: at - 16] == b"PK\x06\x07":
            zip64_end, = struct.unpack_from("<Q", tail, at - 20 + 8)
            self._file.seek(zip64_end)
            record = self._file.read(56)
            size, start = struct.unpack_from("<QQ", record, 40)
        return start, size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def read(self, size: int = -1) -> bytes:
        position = self._file.tell()
        data = self._file.read(size)
        lo = max(position, self._patch_start)
        hi = min(position + len(data), self._patch_start + len(self._patch))
        if lo < hi:  # overlay the scrubbed central directory
            patched = bytearray(data)
            patched[lo - position: hi - position] = self._patch[lo - self._patch_start: hi - self._patch_start]
            data = bytes(patched)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()


@dataclass(frozen=True)
class DemoImage:
    index: int

    def __call__(self) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(render_demo_image(self.index)).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    def __str__(self) -> str:
        return f"demo image #{self.index}"


# ---- URLs as they may be recorded ----------------------------------------------------

REDACTED = "***"


def redact_url(url: str) -> str:
    """`url` as it may be recorded anywhere (manifest, MLflow, logs, errors): userinfo
    (`alice:hunter2@`) becomes `***@`, every query value (`X-Amz-Signature=...`, `sig=`,
    `token=`, ...; a list of names would miss the next signing scheme) becomes `***`,
    a bare query word becomes `***`, and the fragment is dropped. Not a URL: unchanged."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return f"<unparseable URL {REDACTED}>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(
        f"{piece.split('=', 1)[0]}={REDACTED}" if "=" in piece else REDACTED
        for piece in re.split(r"[&;]", parts.query) if piece
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def scrub_secrets(text: str, url: str) -> str:
    """`text` (an exception message, a log line) with the secrets of `url` replaced:
    the URL itself, its userinfo, its query string and every query value, raw or
    percent-encoded (requests and urllib3 quote and re-quote URLs in their messages)."""
    if "://" not in url:
        return text
    text = text.replace(url, redact_url(url))
    try:
        parts = urlsplit(url)
    except ValueError:
        return text
    secrets: list[str] = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        secrets += [userinfo, *userinfo.split(":", 1)]
    for piece in re.split(r"[&;]", parts.query + "&" + parts.fragment):
        value = piece.split("=", 1)[1] if "=" in piece else piece
        secrets.append(value)
    variants = {v for s in secrets if s for v in (s, unquote(s), quote(s, safe=""), quote(unquote(s), safe=""))}
    # longest first, so a value is not half-replaced through a shorter one inside it;
    # values under 3 characters (`dl=1`) are no secret and would mangle ordinary words
    for secret in sorted((v for v in variants if len(v) >= 3), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return scrub_any_url(text)


#: an absolute URL inside a message (up to a blank, a quote or a closing bracket)
_URL_IN_TEXT = re.compile(r"""[A-Za-z][A-Za-z0-9+.-]*://[^\s'"<>()\[\]]+""")
#: a query string inside a message, with or without its URL (urllib3: "with url: /f.zip?sig=...")
_QUERY_IN_TEXT = re.compile(r"""\?([^\s'"<>()\[\]]+)""")


def scrub_any_url(text: str) -> str:
    """`text` with every URL in it redacted (redact_url) and every query value blanked, not
    only the secrets of a URL the caller knows: a redirect's Location (another host, its own
    userinfo and signature) reaches the messages of requests and urllib3 too."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    return _QUERY_IN_TEXT.sub(
        lambda m: "?" + "&".join(
            f"{piece.split('=', 1)[0]}={REDACTED}" if "=" in piece else piece
            for piece in re.split(r"[&;]", m.group(1))),
        text)


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
                f"invalid parameter source={redact_url(spec)!r}: {path} is not a zip archive; pass CelebA's "
                "img_align_celeba.zip, a directory of images, an http(s) URL or 'demo'"
            )
        return "zip"
    raise ConfigError(
        f"invalid parameter source={redact_url(spec)!r}: no such file or directory; pass CelebA's "
        "img_align_celeba.zip, a directory of images, an http(s) URL of the zip, or 'demo'"
    )


def describe_source(spec: str, *, sha256: str = "", demo_count: int = 0) -> dict:
    """The identity of the source without listing it (no network): kind and location.
    ingest adds `fingerprint(entries)` of the listed candidates, which covers every
    file's size, mtime, ctime and inode (folder) or CRC and size (zip). A URL is recorded
    redacted (redact_url): a re-signed URL of the same file is the same source."""
    kind = source_kind(spec)
    if kind == "demo":
        return {"kind": "demo", "version": DEMO_VERSION, "images": min(demo_count, DEMO_MAX_IMAGES)}
    if kind == "url":
        return {"kind": "url", "url": redact_url(spec), "sha256": sha256.lower()}
    path = Path(spec).expanduser().resolve()
    if kind == "zip":
        return {"kind": "zip", "path": str(path), "bytes": path.stat().st_size}
    return {"kind": "directory", "path": str(path)}


def fingerprint(entries: Iterable[Entry]) -> str:
    """sha256 over `<name>\\0<stamp>\\n` of the entries in order: changes whenever a
    file is added, removed, renamed, or changes size, mtime, ctime, inode (folder) or
    CRC (zip)."""
    digest = hashlib.sha256()
    for name, data in entries:
        digest.update(f"{name}\0{getattr(data, 'stamp', '')}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def iter_images(
    spec: str,
    *,
    cache_dir: str | os.PathLike = "~/.cache/srgan",
    sha256: str = "",
    demo_count: int = 0,
    on_skip: SkipHandler | None = None,
    max_bytes: int = MAX_ENTRY_BYTES,
    follow_symlinks: bool = False,
    download_timeout_s: float | None = None,
    max_download_bytes: int | None = None,
) -> Iterator[Entry]:
    """Yield `(name, data)` for every usable image of the source, in path order.

    A URL is downloaded (resumably, cached, sha256-checked, within `download_timeout_s`
    seconds and `max_download_bytes` bytes) and then read as a zip. `demo_count` is how
    many synthetic images the 'demo' source provides (at most DEMO_MAX_IMAGES).
    `max_bytes` caps every file; `follow_symlinks` lets a folder's symlinks point outside it.
    """
    kind = source_kind(spec)
    if kind == "demo":
        raw: Iterable[tuple[str, ImageData]] = _demo_entries(min(demo_count, DEMO_MAX_IMAGES))
    elif kind == "directory":
        raw = _directory_entries(Path(spec).expanduser(), on_skip, max_bytes, follow_symlinks)
    else:
        archive = Path(spec).expanduser()
        if kind == "url":
            from srcore.data.download import download  # requests only when needed

            bounds = {"deadline_s": download_timeout_s, "max_bytes": max_download_bytes}
            archive = download(spec, cache_dir, sha256 or None, validate=_check_zip,
                               **{k: v for k, v in bounds.items() if v is not None})
        raw = _zip_entries(archive, on_skip, max_bytes)
    return _unique_names(raw, on_skip)


def _check_zip(path: Path) -> None:
    """Raises ValueError unless `path` is a zip archive (download deletes it then)."""
    if not zipfile.is_zipfile(path):
        raise ValueError("not a zip archive")


def _report(on_skip: SkipHandler | None, name: str, path: str, reason: str) -> None:
    log.warning("skipping %s: %s", printable(path), printable(reason))
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
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"unsafe name: longer than {MAX_NAME_BYTES} bytes (no room for '.png' in a file name)"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "unsafe name: not valid UTF-8"
    return None


def _unique_names(raw: Iterable[tuple[str, ImageData]], on_skip: SkipHandler | None) -> Iterator[Entry]:
    seen: dict[str, str] = {}
    for path, data in raw:
        name = name_of(path)
        reason = unsafe_name_reason(name)
        if reason is None and name in seen:
            reason = "duplicate name"
            log.info("%s and %s share the name %r: the first is used", printable(seen[name]), printable(path), name)
        if reason:
            _report(on_skip, name, path, reason)
            continue
        seen[name] = path
        yield Entry(name, data)


def _directory_entries(
    root: Path, on_skip: SkipHandler | None, max_bytes: int, follow_symlinks: bool
) -> Iterator[tuple[str, ImageData]]:
    """Regular image files below `root`; everything else that looks like an image is
    skipped with a reason. One lstat per file (CelebA's 202,599 files list in ~2 s)."""
    top = str(root)
    real_top = os.path.realpath(top)
    found: list[tuple[str, ImageData]] = []
    def unreadable(err: OSError) -> None:
        _report(on_skip, "", os.path.relpath(err.filename or top, top), f"unreadable folder: {err.strerror or err}")

    for folder, subfolders, files in os.walk(top, onerror=unreadable):  # does not follow directory symlinks
        # Not into hidden folders (srgan's temporaries among them) nor into srgan outputs
        # (an ingest output inside its own source would otherwise feed the next run).
        subfolders[:] = sorted(
            d for d in subfolders if not d.startswith(".") and not os.path.exists(os.path.join(folder, d, OUTPUT_MARKER))
        )
        prefix = os.path.relpath(folder, top).replace(os.sep, "/") + "/"
        prefix = "" if prefix == "./" else prefix
        for file in files:
            rel = prefix + file
            if not _is_image_path(file) or _is_os_metadata(rel):
                continue
            path = os.path.join(folder, file)
            data, reason = _folder_file(path, real_top, max_bytes, follow_symlinks)
            if reason:
                _report(on_skip, name_of(rel), rel, reason)
            else:
                found.append((rel, data))
    found.sort(key=lambda item: item[0])
    yield from found


def _folder_file(path: str, real_top: str, max_bytes: int, follow_symlinks: bool) -> tuple[FileRef | None, str | None]:
    try:
        info = os.lstat(path)
        is_link = stat.S_ISLNK(info.st_mode)
        if is_link:
            target = os.path.realpath(path)
            if not follow_symlinks and os.path.commonpath([real_top, target]) != real_top:
                return None, "symbolic link that leaves the source folder (not followed; see follow_symlinks)"
            info = os.stat(path)
    except OSError as err:
        return None, f"unreadable: {err.strerror or err}"
    except ValueError:  # commonpath of mixed absolute/relative paths
        return None, "symbolic link that leaves the source folder"
    if not stat.S_ISREG(info.st_mode):
        return None, f"not a regular file ({_file_type(info.st_mode)})"
    if info.st_size > max_bytes:
        return None, f"file too large ({info.st_size} bytes > {max_bytes})"
    stamp = f"{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}:{info.st_ino}"
    return FileRef(path, max_bytes, stamp, _identity(info), nofollow=not is_link), None


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


def _zip_entries(archive: Path, on_skip: SkipHandler | None, max_bytes: int) -> Iterator[tuple[str, ImageData]]:
    try:
        zf = _open_zip(str(archive))
        members = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ConfigError(f"invalid parameter source={str(archive)!r}: not a readable zip archive ({err})") from err
    undecodable = getattr(zf, "srgan_undecodable", set())
    seen_paths: set[str] = set()
    # archive order decides among equal paths (the first is used), then sorted by path
    chosen: list[tuple[str, ImageData]] = []
    for index, info in enumerate(members):
        path = info.filename
        if info.is_dir() or not _is_image_path(path) or _is_os_metadata(path.replace("\\", "/")):
            continue
        reason = unsafe_member_reason(info)
        if reason is None and index in undecodable:
            reason = "unsafe zip entry: name flagged UTF-8 but not valid UTF-8"
        if reason is None and path in seen_paths:
            reason = "duplicate zip entry: an earlier entry has the same path (the first is used)"
        if reason is None and info.file_size > max_bytes:
            reason = f"file too large ({info.file_size} bytes > {max_bytes})"
        if reason:
            _report(on_skip, name_of(path), path, reason)
            continue
        seen_paths.add(path)
        chosen.append((path, ZipMember(str(archive), path, index, max_bytes, f"{info.CRC:08x}:{info.file_size}")))
    chosen.sort(key=lambda item: item[0])
    yield from chosen


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
