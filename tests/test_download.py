"""Resumable download against a loopback HTTP server (no internet needed)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from helpers_images import celeba_names, jpeg_bytes, small_config, write_zip
from helpers_time import within

from srcore.config import ConfigError
from srcore.data import download as download_module
from srcore.data import sources
from srcore.data.download import DownloadError, cache_path, download
from srcore.data.ingest import ingest

PAYLOAD = os.urandom(300_000)


class FileServer(http.server.ThreadingHTTPServer):
    """Serves `payload` at any path, honouring `Range: bytes=N-` unless told not to.

    `cut_first`: the first response announces the full length, sends half and closes.
    `ignore_range`: always answer 200 with the whole body.
    """

    daemon_threads = True

    def __init__(self, payload: bytes):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.payload = payload
        self.cut_first = False
        self.cut_every: int | None = None  # every response sends at most this many bytes, then drops
        self.ignore_range = False
        self.away = ""
        self.requests: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/files/img_align_celeba.zip"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        server = self.server
        if "/missing.zip" in self.path:
            self.send_error(404)
            return
        if "/loop.zip" in self.path:  # redirects to itself forever
            self.send_response(302)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if "/away.zip" in self.path:  # redirects to server.away (another host, its own secrets)
            self.send_response(302)
            self.send_header("Location", server.away)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if "/endless.zip" in self.path:  # a chunked body that never ends
            self._endless()
            return
        if "/huge.zip" in self.path:  # announces a terabyte
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            return
        if "/slow.zip" in self.path:  # honest but slow: 8 kB every 50 ms, ~1 minute in all
            self.send_response(200)
            self.send_header("Content-Length", str(8000 * 1200))
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(1200):
                    self.wfile.write(b"s" * 8000)
                    self.wfile.flush()
                    time.sleep(0.05)
            return
        requested = self.headers.get("Range")
        server.requests.append({"path": self.path, "range": requested})
        start = int(re.match(r"bytes=(\d+)-", requested).group(1)) if requested and not server.ignore_range else 0
        body = server.payload[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if server.cut_every is not None:
            self.wfile.write(body[: server.cut_every])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if server.cut_first and len(server.requests) == 1:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # drop the connection mid-body
            self.close_connection = True
            return
        self.wfile.write(body)

    def _endless(self) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        block = b"z" * 65536
        with contextlib.suppress(OSError):  # until the client hangs up
            while True:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
        self.close_connection = True

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def server(monkeypatch):
    # Loopback must not go through any proxy configured for this machine.
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(download_module, "RETRY_BACKOFF", 0.0)
    httpd = FileServer(PAYLOAD)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_verifies_and_caches(server: FileServer, tmp_path: Path):
    path = download(server.url, tmp_path, sha(PAYLOAD))
    assert path.read_bytes() == PAYLOAD
    assert path.name == "img_align_celeba.zip" and path == cache_path(server.url, tmp_path, sha(PAYLOAD))
    assert not list(tmp_path.rglob("*.part"))
    # A verified cached file is reused without touching the network.
    server.shutdown()
    assert download(server.url, tmp_path, sha(PAYLOAD)) == path
    assert len(server.requests) == 1


def test_dropped_connection_is_resumed_with_range(server: FileServer, tmp_path: Path):
    server.cut_first = True
    path = download(server.url, tmp_path, sha(PAYLOAD))
    assert path.read_bytes() == PAYLOAD
    assert server.requests[0]["range"] is None
    # Resumed where the written bytes end: at most one read chunk before the cut.
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", server.requests[1]["range"]).group(1))
    assert len(PAYLOAD) // 2 - download_module.CHUNK_BYTES < resumed_at <= len(PAYLOAD) // 2
    assert len(server.requests) == 2


def test_partial_file_from_an_earlier_run_is_resumed(server: FileServer, tmp_path: Path):
    target = cache_path(server.url, tmp_path, sha(PAYLOAD))
    target.parent.mkdir(parents=True)
    target.with_name(target.name + ".part").write_bytes(PAYLOAD[:1000])
    assert download(server.url, tmp_path, sha(PAYLOAD)).read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == ["bytes=1000-"]


def test_server_ignoring_range_restarts_from_zero(server: FileServer, tmp_path: Path):
    server.ignore_range = True
    target = cache_path(server.url, tmp_path, sha(PAYLOAD))
    target.parent.mkdir(parents=True)
    target.with_name(target.name + ".part").write_bytes(b"stale bytes that are not the payload")
    assert download(server.url, tmp_path, sha(PAYLOAD)).read_bytes() == PAYLOAD


def test_sha256_mismatch_is_rejected_and_deleted(server: FileServer, tmp_path: Path):
    wrong = "0" * 64
    with pytest.raises(DownloadError) as caught:
        download(server.url, tmp_path, wrong)
    message = str(caught.value)
    assert server.url in message and wrong in message and sha(PAYLOAD) in message
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_http_error_names_the_url(server: FileServer, tmp_path: Path):
    url = server.url.replace("img_align_celeba.zip", "missing.zip")
    with pytest.raises(DownloadError, match=re.escape(url) + ".*HTTP 404"):
        download(url, tmp_path)


def test_unreachable_network_says_how_to_work_offline(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match=r"--source /path/to/img_align_celeba\.zip"):
        download(f"http://127.0.0.1:{port}/img_align_celeba.zip", tmp_path, retries=0, timeout=5)


def test_invalid_sha256_value_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="sha256"):
        download("http://127.0.0.1:9/x.zip", tmp_path, "not-a-hash")


def test_url_source_ingests_the_downloaded_zip(server: FileServer, tmp_path: Path):
    members = {f"img_align_celeba/{n}.jpg": jpeg_bytes(i) for i, n in enumerate(celeba_names(6))}
    archive = write_zip(tmp_path / "faces.zip", members)
    server.payload = archive.read_bytes()
    cfg = small_config(server.url, tmp_path / "data", limit=6, test_count=2, sha256=sha(server.payload))
    manifest = ingest(cfg)
    source = manifest["source"]
    assert {k: source[k] for k in ("kind", "url", "sha256")} == {"kind": "url", "url": server.url, "sha256": sha(server.payload)}
    assert source["candidates"] == 6 and len(source["fingerprint"]) == 64  # the zip's entries (CRC + size)
    assert manifest["counts"] == {"train": 4, "test": 2, "skipped": 0}
    assert cache_path(server.url, cfg.cache_dir, cfg.sha256).read_bytes() == server.payload


def test_connections_dropping_before_one_chunk_still_make_progress(server: FileServer, tmp_path: Path):
    # each connection delivers 20 kB < CHUNK_BYTES (64 KiB) and drops: every byte must be kept
    server.payload = PAYLOAD[:100_000]
    server.cut_every = 20_000
    path = download(server.url, tmp_path, sha(server.payload), retries=2)
    assert path.read_bytes() == server.payload
    starts = [int(r["range"][6:-1]) if r["range"] else 0 for r in server.requests]
    assert starts == [0, 20_000, 40_000, 60_000, 80_000]


def test_a_bad_download_is_deleted_not_cached(server: FileServer, tmp_path: Path):
    server.payload = b"<html>not a zip</html>"  # e.g. a login page instead of the archive
    cfg = small_config(server.url, tmp_path / "data", limit=6, test_count=2)
    with pytest.raises(DownloadError, match="not a zip"):
        ingest(cfg)
    folder = cache_path(server.url, cfg.cache_dir).parent
    assert not folder.exists() or list(folder.iterdir()) == []

    members = {f"img_align_celeba/{n}.jpg": jpeg_bytes(i) for i, n in enumerate(celeba_names(6))}
    server.payload = write_zip(tmp_path / "faces.zip", members).read_bytes()
    assert ingest(cfg)["counts"]["train"] == 4  # the next run downloads again and works


def test_a_poisoned_cache_entry_is_revalidated_and_replaced(server: FileServer, tmp_path: Path):
    target = cache_path(server.url, tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"garbage from an older version")
    path = download(server.url, tmp_path, validate=lambda p: None if p.read_bytes() == PAYLOAD else (_ for _ in ()).throw(ValueError("bad")))
    assert path.read_bytes() == PAYLOAD and len(server.requests) == 1


# ---- issue 18: every read bounded in time and bytes, partial files, errors that name the URL ----


def leftover_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def test_an_endless_chunked_body_stops_at_the_byte_cap_and_leaves_nothing(server: FileServer, tmp_path: Path):
    url = server.url.replace("img_align_celeba.zip", "endless.zip")
    with within(30), pytest.raises(DownloadError) as caught:
        download(url, tmp_path, max_bytes=300_000)
    message = str(caught.value)
    assert url in message and "max_download_bytes=300000" in message
    assert leftover_files(tmp_path) == []  # no .part: resuming an endless body cannot help


def test_a_content_length_over_the_cap_is_refused_before_reading(server: FileServer, tmp_path: Path):
    url = server.url.replace("img_align_celeba.zip", "huge.zip")
    with within(10), pytest.raises(DownloadError, match=r"max_download_bytes=1000000 \(the server announces 1000000000000"):
        download(url, tmp_path, max_bytes=1_000_000)
    assert leftover_files(tmp_path) == []


def test_one_byte_per_connection_ends_after_the_retries(server: FileServer, tmp_path: Path):
    server.cut_every = 1  # progress, but never enough to count as progress
    with within(30), pytest.raises(DownloadError, match="3 reconnects without progress"):
        download(server.url, tmp_path, retries=3)
    assert len(server.requests) == 4


def test_the_total_deadline_ends_a_slow_download_and_keeps_its_bytes(server: FileServer, tmp_path: Path):
    url = server.url.replace("img_align_celeba.zip", "slow.zip")
    started = time.monotonic()
    with within(30), pytest.raises(DownloadError, match=r"download_timeout_s=1\.5 s .*kept for a resume"):
        download(url, tmp_path, deadline_s=1.5)
    assert time.monotonic() - started < 5
    parts = list(tmp_path.rglob("*.part"))  # an honest, slow server: the next run resumes
    assert len(parts) == 1 and parts[0].stat().st_size > 0


def test_a_redirect_loop_names_the_url(server: FileServer, tmp_path: Path):
    url = server.url.replace("img_align_celeba.zip", "loop.zip")
    with within(30), pytest.raises(DownloadError, match=re.escape(url) + ".*redirect"):
        download(url, tmp_path)
    assert leftover_files(tmp_path) == []


def test_a_full_disk_names_the_file_and_removes_the_partial(server: FileServer, tmp_path: Path):
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux) to fail a write with ENOSPC")
    partial = cache_path(server.url, tmp_path).with_name("img_align_celeba.zip.part")
    partial.parent.mkdir(parents=True)
    partial.symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    with within(30), pytest.raises(DownloadError) as caught:
        download(server.url, tmp_path)
    message = str(caught.value)
    assert f"cannot write {partial}: No space left on device" in message and server.url in message
    assert not partial.is_symlink() and not partial.exists()


SECRETS = ("hunter2", "SECRETSIG", "AKIDSECRET", "tok3nvalue")


def secret_url(server: FileServer, name: str = "img_align_celeba.zip") -> str:
    host = server.url.split("//", 1)[1].split("/", 1)[0]
    return (f"http://alice:hunter2@{host}/files/{name}?X-Amz-Signature=SECRETSIG"
            f"&X-Amz-Credential=AKIDSECRET%2F2026&access_token=tok3nvalue")


def assert_no_secret(text: str, where: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{leaked} leaked into {where}: {text[:2000]}"


def test_source_url_secrets_are_recorded_nowhere(server: FileServer, tmp_path: Path, tracking, caplog):
    """manifest.json, MLflow params, tags, run name, artifacts (config.yaml, the logged
    manifest) and every log line (DEBUG included, urllib3's request lines too) get the URL
    without userinfo and query values; config.yaml shows the user that redacted URL."""
    import mlflow
    import yaml

    from srcore.steps import ingest_step

    members = {f"img_align_celeba/{n}.jpg": jpeg_bytes(i) for i, n in enumerate(celeba_names(6))}
    server.payload = write_zip(tmp_path / "faces.zip", members).read_bytes()
    url = secret_url(server)
    server.cut_first = True  # one drop: the resume's WARNING line names the URL too
    caplog.set_level(logging.DEBUG)
    cfg = small_config(url, tmp_path / "data", limit=6, test_count=2)
    with within(120):
        ingest_step(cfg)
    manifest_text = (tmp_path / "data" / "manifest.json").read_text()
    assert_no_secret(manifest_text, "manifest.json")
    assert '"url": "http://***@127.0.0.1' in manifest_text and "X-Amz-Signature=***" in manifest_text

    client = mlflow.MlflowClient()
    (run,) = client.search_runs([mlflow.get_experiment_by_name(cfg.experiment_name).experiment_id])
    assert_no_secret(repr(run.data.params), "MLflow params")
    assert_no_secret(repr(run.data.tags), "MLflow tags")
    assert_no_secret(run.info.run_name or "", "the run name")
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "art")))
    logged = {p.relative_to(artifacts).as_posix(): p for p in artifacts.rglob("*") if p.is_file()}
    # the run's Config and the data manifest are among what was checked, not skipped
    assert {"config.yaml", "data/manifest.json"} <= set(logged), sorted(logged)
    for name, path in logged.items():
        assert_no_secret(path.read_text(errors="replace"), name)
    # the user still sees where the data came from: the redacted URL, in the run's config.yaml
    recorded = yaml.safe_load(logged["config.yaml"].read_text())["source"]
    assert recorded.startswith("http://***@127.0.0.1") and "/files/img_align_celeba.zip?" in recorded
    assert "X-Amz-Signature=***" in recorded and "access_token=***" in recorded
    assert any("interrupted" in r.getMessage() for r in caplog.records)
    assert_no_secret("\n".join(r.getMessage() for r in caplog.records), "log lines")
    assert server.requests[0]["path"].endswith("access_token=tok3nvalue")  # the real URL was used

    # errors too: an HTTP error, and a connection refused (urllib3's message quotes the path)
    with pytest.raises(DownloadError) as caught:
        download(secret_url(server, "missing.zip"), tmp_path / "c2")
    assert_no_secret(str(caught.value), "an HTTP error")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = url.replace(f":{server.server_address[1]}/", f":{port}/")
    with pytest.raises(DownloadError) as caught:
        download(dead, tmp_path / "c3", retries=0, timeout=5)
    assert_no_secret(str(caught.value), "a connection error")
    assert "X-Amz-Signature=***" in str(caught.value)
    with pytest.raises(ConfigError) as caught:  # a scheme we do not fetch: named, redacted
        sources.source_kind("ftp://alice:hunter2@host/ok.zip?sig=SECRETSIG")
    assert_no_secret(str(caught.value), "an unusable source")


def test_a_re_signed_url_of_the_same_file_resumes_its_partial_download(server: FileServer, tmp_path: Path):
    first = server.url + "?X-Amz-Signature=aaaa1111&X-Amz-Expires=60"
    again = server.url + "?X-Amz-Signature=bbbb2222&X-Amz-Expires=60"  # the old one expired
    partial = cache_path(first, tmp_path, sha(PAYLOAD)).with_name("img_align_celeba.zip.part")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(PAYLOAD[:1000])  # left by a run that hit its deadline
    assert download(again, tmp_path, sha(PAYLOAD)).read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == ["bytes=1000-"]
    # without a sha256 the query may name another file: separate cache entries
    assert cache_path(first, tmp_path) != cache_path(again, tmp_path)


@pytest.mark.parametrize("scheme", ["http", "ftp"])
def test_secrets_of_a_redirect_location_are_recorded_nowhere(scheme, server: FileServer, tmp_path: Path, caplog):
    """The Location's own userinfo and signature (not the source URL's) reach requests'
    and urllib3's messages: a refused connection there, an unsupported scheme."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    server.away = f"{scheme}://bob:hunter2@127.0.0.1:{port}/f.zip?X-Amz-Signature=SECRETSIG&access_token=tok3nvalue"
    url = server.url.replace("img_align_celeba.zip", "away.zip")
    with within(30), caplog.at_level(logging.DEBUG), pytest.raises(DownloadError) as caught:
        download(url, tmp_path, retries=1, deadline_s=10)
    assert_no_secret(str(caught.value), "the error")
    assert_no_secret(caplog.text, "the log")
    assert "127.0.0.1" in str(caught.value) + caplog.text  # what went wrong is still shown
