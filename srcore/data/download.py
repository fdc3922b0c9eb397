"""Resumable HTTP(S) download with a sha256 check and a local cache.

`download(url, cache_dir, sha256)` fetches into `cache_dir/downloads/<url-hash>/<name>`
through `<name>.part`: an interrupted transfer (dropped connection, killed process)
continues where it stopped with an HTTP `Range: bytes=N-` request. A server that
ignores Range (200 instead of 206) is handled by starting over. The finished file
is verified against `sha256` when given and then reused without any network access.

Every byte received is kept: the body is read with `read1` (what the socket has, at
most one chunk), so a connection that drops mid-chunk loses nothing and the next
attempt resumes exactly after the last byte written. A download that fails its checks
(sha256, or the caller's `validate`, e.g. "is a zip") is deleted, never cached; a
cached file is re-checked before every reuse.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
import urllib3

from srcore.data.manifest import file_sha256
from srcore.progress import progress

log = logging.getLogger(__name__)

#: largest read; a read returns what has arrived, so a short one is never held back
CHUNK_BYTES = 64 * 1024
#: what a dropped connection raises from the raw stream (urllib3) or from requests
_DROPPED = (
    requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.IncompleteRead,
)
#: seconds to wait before retry k (k = 1, 2, ...) is RETRY_BACKOFF * k
RETRY_BACKOFF = 1.0
MANUAL_HINT = (
    "If this machine has no network access, download img_align_celeba.zip by hand "
    "and pass --source /path/to/img_align_celeba.zip"
)


class DownloadError(RuntimeError):
    """A download failed; the message names the URL and what to do."""


def download(
    url: str,
    cache_dir: str | os.PathLike,
    sha256: str | None = None,
    *,
    retries: int = 5,
    timeout: float = 60.0,
    validate: Callable[[Path], None] | None = None,
) -> Path:
    """Download `url` into the cache (resuming a partial file) and return its path.

    `sha256` (hex) is checked on the complete file; a mismatch deletes it and raises.
    A cached file is returned without network access (after re-checking `sha256` when
    given). `retries` is the number of reconnects allowed after a dropped connection.
    `validate(path)` raises ValueError when a complete file is unusable (e.g. not a zip):
    the file is then deleted and DownloadError raised; a cached file is re-validated.
    """
    expected = _normalise_sha256(sha256)
    target = cache_path(url, cache_dir)
    if target.exists():
        problem = _problem(target, expected, validate)
        if problem is None:
            log.info("using cached %s (%s)", target, "sha256 verified" if expected else "not verified")
            return target
        log.warning("cached %s %s: deleting it and downloading again", target, problem)
        target.unlink()

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create the download cache folder {target.parent}: {err.strerror or err}") from err
    partial = target.with_name(target.name + ".part")
    _fetch_with_resume(url, partial, retries=retries, timeout=timeout)
    _verify(url, partial, expected, validate)
    os.replace(partial, target)
    log.info("downloaded %s -> %s", url, target)
    return target


def cache_path(url: str, cache_dir: str | os.PathLike) -> Path:
    """Where `url` is cached: one folder per URL, so equal file names never collide."""
    name = unquote(Path(urlparse(url).path).name) or "download"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "download"
    url_key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / "downloads" / url_key / name


def _normalise_sha256(sha256: str | None) -> str | None:
    if not sha256:
        return None
    value = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"invalid sha256 {sha256!r}: expected 64 hexadecimal digits")
    return value


def _fetch_with_resume(url: str, partial: Path, *, retries: int, timeout: float) -> None:
    """Fill `partial` with the whole body of `url`, reconnecting after drops."""
    failures = 0
    with requests.Session() as session:
        while True:
            before = partial.stat().st_size if partial.exists() else 0
            try:
                _fetch_once(session, url, partial, timeout=timeout)
                return
            except _DROPPED as err:
                got_bytes = partial.exists() and partial.stat().st_size > before
                if got_bytes:
                    failures = 0  # progress was made: a flaky link, not a dead one
                failures += 1
                if failures > retries:
                    raise DownloadError(f"cannot download {url}: {err}. {MANUAL_HINT}") from err
                wait = RETRY_BACKOFF * failures
                log.warning("download of %s interrupted (%s); resuming in %.0f s", url, err, wait)
                time.sleep(wait)


def _fetch_once(session: requests.Session, url: str, partial: Path, *, timeout: float) -> None:
    offset = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416 and offset:
            # Range not satisfiable: the partial file is already complete (or bogus).
            if _range_total(response) == offset:
                return
            log.warning("server refused to resume %s at byte %d: starting over", url, offset)
            partial.unlink()
            raise requests.ConnectionError("partial file could not be resumed")
        if response.status_code not in (200, 206):
            raise DownloadError(
                f"cannot download {url}: HTTP {response.status_code} {response.reason}. {MANUAL_HINT}"
            )
        if response.status_code == 206:
            if _range_start(response) != offset:
                partial.unlink(missing_ok=True)
                raise requests.ConnectionError(f"server resumed at the wrong offset (wanted byte {offset})")
            mode = "ab"
        else:  # 200: the whole body, whether or not we asked for a range
            if offset:
                log.info("server ignored the resume request for %s: starting over", url)
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        with open(partial, mode) as out, progress(
            total=total, desc=f"download {partial.name[:-5]}", unit="B",
            unit_scale=True, unit_divisor=1024, initial=offset,
        ) as bar:
            for chunk in _received(response):
                out.write(chunk)
                out.flush()  # on disk before the next read can fail
                bar.update(len(chunk))
        if total is not None and partial.stat().st_size < total:
            raise requests.ConnectionError(
                f"connection closed after {partial.stat().st_size} of {total} bytes"
            )


def _received(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives. Not iter_content: urllib3's read(n) collects n bytes
    before returning any and raises on a drop, discarding what it had collected."""
    raw = response.raw
    while True:
        chunk = raw.read1(CHUNK_BYTES, decode_content=True)
        if not chunk:
            return
        yield chunk


def _range_start(response: requests.Response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _range_total(response: requests.Response) -> int | None:
    match = re.match(r"bytes [^/]*/(\d+)", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _problem(path: Path, expected: str | None, validate: Callable[[Path], None] | None) -> str | None:
    """Why a complete file is unusable, or None."""
    if expected is not None:
        actual = file_sha256(path)
        if actual != expected:
            return f"has sha256 {actual}, expected {expected}"
    if validate is not None:
        try:
            validate(path)
        except ValueError as err:
            return f"is unusable ({err})"
    return None


def _verify(url: str, path: Path, expected: str | None, validate: Callable[[Path], None] | None = None) -> None:
    if expected is None:
        log.warning("no sha256 given for %s: the download is not verified", url)
    problem = _problem(path, expected, validate)
    if problem is not None:
        path.unlink()
        what = "sha256 mismatch" if problem.startswith("has sha256") else "bad download"
        raise DownloadError(
            f"{what} for {url}: the downloaded file {problem}. The downloaded file was deleted; "
            "check the URL and the --sha256 value."
        )
