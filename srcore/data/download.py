"""Resumable HTTP(S) download with a sha256 check and a local cache.

`download(url, cache_dir, sha256)` fetches into `cache_dir/downloads/<key>/<name>` (key:
a hash of the redacted URL and sha256 when given, else of the whole URL; cache_path)
through `<name>.part`: an interrupted transfer (dropped connection, killed process)
continues where it stopped with an HTTP `Range: bytes=N-` request. A server that
ignores Range (200 instead of 206) is handled by starting over. The finished file
is verified against `sha256` when given and then reused without any network access.

Every byte received is kept: the body is read with `read1` (what the socket has, at
most one chunk), so a connection that drops mid-chunk loses nothing and the next
attempt resumes exactly after the last byte written. A download that fails its checks
(sha256, or the caller's `validate`, e.g. "is a zip") is deleted, never cached; a
cached file is re-checked before every reuse.

Bounds (a hostile or broken server must not hold ingest forever nor fill the disk):
- `deadline_s` (Config.download_timeout_s) bounds the whole download, every
  reconnect and back-off included; each socket wait is at most the time left.
- `max_bytes` (Config.max_download_bytes) bounds the file: a Content-Length over it is
  refused before reading, an endless (chunked) body is cut at the cap.
- Reconnects: `retries` in a row without progress, where progress means at least
  MIN_PROGRESS_BYTES new bytes (a server sending 1 byte per connection makes none),
  and MAX_CONNECTIONS in all.
Which partial file is kept: `<name>.part` stays only after an honest drop (the
connection broke or timed out, the deadline passed while bytes were arriving,
or the server answered 429 / 5xx): its bytes are genuine and the next run resumes
them. It is deleted when resuming it could not help: the body exceeded the cap, the
server answered another HTTP error (404, 403: a wrong or expired URL) or a wrong
Content-Range, the disk is full, a redirect loop, or the complete file failed its
checks.

The URL is recorded only redacted (sources.redact_url: no userinfo, no query values),
in log lines and errors alike; urllib3's own debug lines are scrubbed as well.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from srcore.atomic import path_error
from srcore.data.manifest import file_sha256
from srcore.data.sources import redact_url, scrub_secrets
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
    """A download failed; the message names the (redacted) URL and what to do."""


#: progress that resets the count of failed reconnects: at least this many new bytes
MIN_PROGRESS_BYTES = 4096
#: reconnects in all, however much each one delivered (with the deadline, a backstop)
MAX_CONNECTIONS = 200
#: default bounds, as Config.download_timeout_s / Config.max_download_bytes
DEFAULT_DEADLINE_S = 6 * 3600.0
DEFAULT_MAX_BYTES = 8 * 1024**3
#: redirects followed per request (requests' default is 30)
MAX_REDIRECTS = 10


@dataclasses.dataclass(frozen=True)
class DownloadLimits:
    """The bounds of every network read, from Config (download_timeout_s,
    max_download_bytes): carried to the weights downloads of train and evaluate
    (srcore.losses, srcore.weights) as one value instead of two parameters each."""

    deadline_s: float = DEFAULT_DEADLINE_S
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def from_config(cls, cfg) -> "DownloadLimits":
        return cls(float(cfg.download_timeout_s), int(cfg.max_download_bytes))


def download(
    url: str,
    cache_dir: str | os.PathLike,
    sha256: str | None = None,
    *,
    retries: int = 5,
    timeout: float = 60.0,
    validate: Callable[[Path], None] | None = None,
    deadline_s: float = DEFAULT_DEADLINE_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
    hint: str = MANUAL_HINT,
) -> Path:
    """Download `url` into the cache (resuming a partial file) and return its path.

    `sha256` (hex) is checked on the complete file; a mismatch deletes it and raises.
    A cached file is returned without network access (after re-checking `sha256` when
    given). `retries` is the number of reconnects in a row allowed without progress;
    `timeout` bounds each socket wait, `deadline_s` the whole download, `max_bytes` the
    file (see the module doc); `hint` ends the errors that a rerun may not fix (how to
    get the file without this download). `validate(path)` raises ValueError when a complete file
    is unusable (e.g. not a zip): the file is then deleted and DownloadError raised; a
    cached file is re-validated.
    """
    shown = redact_url(url)
    expected = _normalise_sha256(sha256)
    target = cache_path(url, cache_dir, expected)
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
    with _scrubbed_library_logs(url):
        try:
            _fetch_with_resume(url, partial, retries=retries, timeout=timeout, deadline_s=deadline_s,
                               max_bytes=max_bytes, hint=hint)
        except _Unresumable as err:
            partial.unlink(missing_ok=True)
            raise DownloadError(f"{err} The partial download was deleted.") from None
    _verify(shown, partial, expected, validate)
    os.replace(partial, target)
    log.info("downloaded %s -> %s", shown, target)
    return target


def cache_path(url: str, cache_dir: str | os.PathLike, sha256: str | None = None) -> Path:
    """Where `url` is cached: one folder per URL, so equal file names never collide (the
    folder is a hash: no secret of the URL appears in the path). With the expected
    `sha256` the key is the redacted URL plus that hash, so a re-signed URL of the same
    file (a new `X-Amz-Signature`, e.g. after the old one expired) finds the cached file
    or resumes its partial download; without it, the whole URL (`?id=1` and `?id=2` may
    be different files)."""
    name = unquote(Path(urlparse(url).path).name) or "download"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "download"
    expected = _normalise_sha256(sha256)
    identity = f"{redact_url(url)}\0{expected}" if expected else url
    url_key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / "downloads" / url_key / name


def _normalise_sha256(sha256: str | None) -> str | None:
    if not sha256:
        return None
    value = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"invalid sha256 {sha256!r}: expected 64 hexadecimal digits")
    return value


class _Unresumable(Exception):
    """A failure after which the partial file is useless: it is deleted (module doc)."""


class _DeadlinePassed(Exception):
    """The download's total time ran out (the partial file is kept for a resume)."""


def _fetch_with_resume(url: str, partial: Path, *, retries: int, timeout: float, deadline_s: float,
                       max_bytes: int, hint: str = MANUAL_HINT) -> None:
    """Fill `partial` with the whole body of `url`, reconnecting after drops."""
    shown = redact_url(url)
    deadline = time.monotonic() + deadline_s
    failures = connections = 0
    with requests.Session() as session:
        session.max_redirects = MAX_REDIRECTS
        while True:
            before = partial.stat().st_size if partial.exists() else 0
            connections += 1
            try:
                _fetch_once(session, url, partial, timeout=timeout, deadline=deadline, max_bytes=max_bytes, hint=hint)
                return
            except _DeadlinePassed:
                have = partial.stat().st_size if partial.exists() else 0
                raise DownloadError(
                    f"cannot download {shown}: not complete within download_timeout_s={deadline_s:g} s "
                    f"({have} bytes so far, kept for a resume); rerun to resume, raise "
                    f"--download-timeout-s for a slow link, or fetch it by hand. {hint}"
                ) from None
            except requests.TooManyRedirects:
                raise _Unresumable(
                    f"cannot download {shown}: more than {MAX_REDIRECTS} redirects (a redirect loop?); "
                    f"check the URL. {hint}"
                ) from None
            except _DROPPED as err:
                reason = scrub_secrets(str(err), url)
                if partial.exists() and partial.stat().st_size - before >= MIN_PROGRESS_BYTES:
                    failures = 0  # real progress: a flaky link, not a dead one
                failures += 1
                if failures > retries or connections >= MAX_CONNECTIONS:
                    why = (f"{failures - 1} reconnects without progress" if failures > retries
                           else f"{connections} connections")
                    raise DownloadError(f"cannot download {shown} after {why}: {reason}. {hint}") from None
                wait = min(RETRY_BACKOFF * failures, max(0.0, deadline - time.monotonic()))
                log.warning("download of %s interrupted (%s); resuming in %.0f s", shown, reason, wait)
                time.sleep(wait)
            except requests.RequestException as err:  # invalid URL, unsupported scheme, ...
                raise _Unresumable(f"cannot download {shown}: {scrub_secrets(str(err), url)}. {hint}") from None


def _fetch_once(session: requests.Session, url: str, partial: Path, *, timeout: float, deadline: float,
                max_bytes: int, hint: str = MANUAL_HINT) -> None:
    shown = redact_url(url)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _DeadlinePassed()
    offset = partial.stat().st_size if partial.exists() else 0
    # identity: a zip does not compress further, and a gzip body could inflate past the cap in one read
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    wait = min(timeout, remaining)
    with session.get(url, headers=headers, stream=True, timeout=(wait, wait)) as response:
        if response.status_code == 416 and offset:
            # Range not satisfiable: the partial file is already complete (or bogus).
            if _range_total(response) == offset:
                return
            log.warning("server refused to resume %s at byte %d: starting over", shown, offset)
            partial.unlink()
            raise requests.ConnectionError("partial file could not be resumed")
        if response.status_code not in (200, 206):
            if response.status_code == 429 or response.status_code >= 500:  # may recover: keep the bytes
                raise DownloadError(
                    f"cannot download {shown}: HTTP {response.status_code} {response.reason}; rerun later to "
                    f"resume. {hint}"
                )
            raise _Unresumable(f"cannot download {shown}: HTTP {response.status_code} {response.reason}. {hint}")
        if response.status_code == 206:
            if _range_start(response) != offset:
                partial.unlink(missing_ok=True)
                raise requests.ConnectionError(f"server resumed at the wrong offset (wanted byte {offset})")
            mode = "ab"
        else:  # 200: the whole body, whether or not we asked for a range
            if offset:
                log.info("server ignored the resume request for %s: starting over", shown)
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        if total is not None and total > max_bytes:
            raise _Unresumable(_too_large(shown, max_bytes, f"the server announces {total} bytes"))
        try:
            out = open(partial, mode)
        except OSError as err:
            raise _Unresumable(f"cannot download {shown}: {path_error(err, partial, 'cannot write')}") from None
        with out, progress(
            total=total, desc=f"download {partial.name[:-5]}", unit="B",
            unit_scale=True, unit_divisor=1024, initial=offset,
        ) as bar:
            written = offset
            for chunk in _received(response):
                if written + len(chunk) > max_bytes:
                    raise _Unresumable(_too_large(shown, max_bytes, "the body goes on past it"))
                try:
                    out.write(chunk)
                    out.flush()  # on disk before the next read can fail
                except OSError as err:  # disk full, quota, ...: name the file, free the space
                    raise _Unresumable(
                        f"cannot download {shown}: {path_error(err, partial, 'cannot write')}"
                    ) from None
                written += len(chunk)
                bar.update(len(chunk))
                if time.monotonic() > deadline:
                    raise _DeadlinePassed()
        if total is not None and partial.stat().st_size < total:
            raise requests.ConnectionError(
                f"connection closed after {partial.stat().st_size} of {total} bytes"
            )


def _too_large(shown: str, max_bytes: int, what: str) -> str:
    return (f"cannot download {shown}: larger than max_download_bytes={max_bytes} ({what}); check the URL, "
            "or raise --max-download-bytes if the file is really that large.")


@contextlib.contextmanager
def _scrubbed_library_logs(url: str) -> Iterator[None]:
    """urllib3 logs each request line (path and query) at DEBUG: scrub its records."""

    def scrub(record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub_secrets(record.getMessage(), url), ()
        return True

    loggers = [logging.getLogger(name) for name in ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.response")]
    for logger in loggers:
        logger.addFilter(scrub)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(scrub)


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
        mismatch = problem.startswith("has sha256")
        raise DownloadError(
            f"{'sha256 mismatch' if mismatch else 'bad download'} for {url}: the downloaded file {problem}. "
            f"The downloaded file was deleted; check the URL{' and the --sha256 value' if mismatch else ''}."
        )
