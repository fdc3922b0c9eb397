"""The project's bounded HTTP server for the upscaler: what KServe runs (a custom
predictor in the project's own image) and the recommended way to serve on one machine.

    srgan serve --model serving/srgan-celeba/3 --port 8080          # or: python -m srcore.server ...

`--model` is the serving SavedModel (srcore/export.py: a version folder holding
saved_model.pb, or the base folder holding numeric versions, as KServe's storage
initializer leaves it in /mnt/models), or anything `srgan upscale` takes (.keras file,
MLflow model URI).

Protocol: KServe v1 (the "v1" data plane, which TF Serving's REST API also speaks):
  GET  /v1/models/<name>          -> {"name": ..., "ready": true}   (readiness)
  GET  /  (and /ping, /health)    -> {"status": "alive"}            (liveness)
  POST /v1/models/<name>:predict  {"instances": [image, ...], "parameters": {...}}
       -> {"predictions": [sr_image, ...]}
and, so that MLflow's clients need no change, POST /invocations with
{"inputs": [...], "params": {...}}. An image is an HxWx3 nested list of integers 0..255
or {"b64": "<base64 PNG/JPEG>"} (TF Serving's binary convention). Parameters: `tile`,
`overlap`, `encoding` ("array", or "png": each answer is {"b64": "<base64 PNG>"},
about 20x smaller).

Bounded before any work, in this order:
- connections: at most `max_concurrent` requests are worked on at once; one more is
  answered 503 (Retry-After) as soon as its body is in. Bodies are read before a slot is
  taken, so a slow sender holds only its own connection; connections beyond a small
  multiple of max_concurrent (ServerLimits.max_connections) are answered 503 at accept
  and closed, so a flood cannot pile up threads, bodies (each at most max_body_bytes)
  or answers being written;
- the body: Content-Length over `max_body_bytes` -> 413 before a byte is read; a chunked
  body is cut (413) as soon as it passes the cap; no length at all -> 411; framing that a
  proxy could read otherwise (both headers, two lengths, "+5", a non-hex chunk size) -> 400;
- time: one deadline per request (`max_seconds`) covers reading the body (socket
  timeouts), parsing and the work; the work runs tile by tile and checks the deadline
  before every tile, so a timed-out request (504) stops computing before it is answered;
- content: JSON nested too deeply (RecursionError), floats, negatives, values over 255,
  booleans or strings are a 400 naming the image; then srcore.serving.ServingLimits
  (max_pixels over the request, max_batch, tile/overlap ranges) -> 400 naming the limit;
- the answer: an "array" answer larger than `max_response_bytes` is refused (400, asking
  for encoding=png) before the work, from its size computed in advance.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import json
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from srcore.serving import RequestRefused, ServingLimits, png_base64, uint8_pixels

log = logging.getLogger(__name__)

PREDICT_RE = re.compile(r"^/v1/models/([^/:]+):predict$")
MODEL_RE = re.compile(r"^/v1/models/([^/:]+)$")
# bytes of compact JSON per output pixel at most: "[255,255,255],"
_ARRAY_BYTES_PER_PIXEL = 14
# what a refused request may still push at us after its answer, read and dropped (see _drain)
DRAIN_BYTES = 1 << 20
DRAIN_SECONDS = 1.0


@dataclass(frozen=True)
class ServerLimits:
    """What the HTTP layer bounds (defaults = Config's serve_* fields); the model's own
    limits (pixels, batch, tile, time) are `serving`."""

    serving: ServingLimits = dataclasses.field(default_factory=ServingLimits)
    max_body_bytes: int = 8 * 1024 * 1024
    max_concurrent: int = 2
    max_response_bytes: int = 16 * 1024 * 1024
    header_timeout: float = 10.0  # seconds a client may take to send its request line and headers, in all

    @classmethod
    def from_config(cls, cfg: Any) -> "ServerLimits":
        return cls(serving=ServingLimits.from_config(cfg), max_body_bytes=cfg.serve_max_body_bytes,
                   max_concurrent=cfg.serve_max_concurrent, max_response_bytes=cfg.serve_max_response_bytes)

    @property
    def max_connections(self) -> int:
        # requests being worked on plus a few being refused or read: threads stay bounded
        return 4 * self.max_concurrent + 4


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# ---- the model ---------------------------------------------------------------------


class SavedModelGenerator:
    """The serving SavedModel's `generate` function behind the call that srcore.upscale
    makes on a Keras generator (`generator(x, training=False)`), with its `scale_factor`."""

    def __init__(self, path: Path):
        import tensorflow as tf

        self.path = path
        self.module = tf.saved_model.load(str(path))
        if not hasattr(self.module, "generate") or not hasattr(self.module, "scale"):
            raise ValueError(f"SavedModel {path} has no `generate` function: export it again with `srgan export`")
        self.scale_factor = int(self.module.scale.numpy())

    def __call__(self, x: Any, training: bool = False) -> Any:
        import tensorflow as tf

        return self.module.generate(tf.convert_to_tensor(x, tf.float32))


def savedmodel_dir(path: Path) -> Path | None:
    """The SavedModel folder at `path`: itself, or its highest numeric version (TF
    Serving's base-path layout); None when `path` holds no SavedModel."""
    if (path / "saved_model.pb").is_file():
        return path
    if path.is_dir():
        versions = [p for p in path.iterdir() if p.name.isdigit() and (p / "saved_model.pb").is_file()]
        if versions:
            return max(versions, key=lambda p: int(p.name))
    return None


def load_model(model: str) -> Any:
    """A generator for srcore.upscale from a SavedModel folder, a .keras file or an MLflow URI."""
    found = savedmodel_dir(Path(model))
    if found is not None:
        log.info("loading serving SavedModel %s", found)
        return SavedModelGenerator(found)
    from srcore.model_uri import resolve_generator

    return resolve_generator(model)


# ---- request content -------------------------------------------------------------------


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise HttpError(400, "the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise HttpError(400, f"the body is not JSON: {e}") from None


_DIGITS = re.compile(r"[0-9]{1,20}")
_HEX_DIGITS = re.compile(rb"[0-9A-Fa-f]{1,16}")


def as_image(value: Any, what: str, max_pixels: int) -> np.ndarray:
    """One request image -> uint8 HxWx3; a 400 for anything that is not 0..255 integers."""
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise HttpError(400, f"{what}: an image object must be {{\"b64\": \"<base64 PNG or JPEG>\"}}")
        return _decode_b64(value["b64"], what, max_pixels)
    try:
        arr = uint8_pixels(value, what)  # the pyfunc model's check: nothing is cast
    except ValueError as e:
        raise HttpError(400, str(e)) from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise HttpError(400, f"{what}: expected an HxWx3 image, got an array of shape {arr.shape}")
    return arr


def _decode_b64(text: str, what: str, max_pixels: int) -> np.ndarray:
    from srcore.data import images as image_rules

    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(400, f"{what}: b64 is not valid base64") from None
    try:
        # the project's one image rule (ingest's): size from the header before decoding, a
        # complete decode, EXIF orientation, and 16-bit / alpha / palette to 8-bit RGB by
        # COLOR_RULE (PIL's convert("RGB") clipped 16-bit grey to white and dropped alpha)
        with image_rules.open_checked(raw, max_pixels) as img:
            return np.asarray(image_rules.to_rgb8(image_rules.apply_exif_orientation(img)))
    except image_rules.BadImage as e:
        raise HttpError(400, f"{what}: b64 is not a usable image: {e}") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad bytes
        raise HttpError(400, f"{what}: b64 is not a readable image ({type(e).__name__})") from None


def _int_param(params: dict, name: str, default: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise HttpError(400, f"parameter {name}={value!r} is not an integer")
    return value


# ---- the server --------------------------------------------------------------------------


class UpscaleServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], generator: Any, name: str, limits: ServerLimits):
        self.generator, self.model_name, self.limits = generator, name, limits
        self.slots = threading.BoundedSemaphore(limits.max_concurrent)  # requests being worked on
        self.connections = 0
        self.lock = threading.Lock()
        super().__init__(address, Handler)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        with self.lock:
            full = self.connections >= self.limits.max_connections
            if not full:
                self.connections += 1
        if full:  # answered without a thread and without reading anything
            try:
                request.sendall(_raw_response(503, {"error": "too many connections; retry later"},
                                              {"Retry-After": "1"}))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.connections -= 1


def _raw_response(status: int, payload: dict, headers: dict[str, str]) -> bytes:
    from http import HTTPStatus

    body = json.dumps(payload).encode()
    lines = [f"HTTP/1.0 {status} {HTTPStatus(status).phrase}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Handler(BaseHTTPRequestHandler):
    server: UpscaleServer
    # HTTP/1.1 for `Expect: 100-continue` (curl sends it with larger bodies); still one request
    # per connection (every answer says Connection: close): no idle keep-alive threads
    protocol_version = "HTTP/1.1"
    server_version = "srgan-upscaler"

    def setup(self) -> None:
        self.timeout = self.server.limits.header_timeout
        self._body_read = False  # set once the whole body was read
        super().setup()
        # the socket timeout bounds each read; this bounds the request line and headers in all,
        # so a client dribbling a byte at a time cannot keep one of the few connections
        self._header_timer = threading.Timer(self.server.limits.header_timeout, self._headers_too_slow)
        self._header_timer.daemon = True
        self._header_timer.start()

    def _headers_too_slow(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def handle_expect_100(self) -> bool:
        """Say "100 Continue" only to a body the server would read: an announced size over the
        cap is answered now, before the client sends a byte of it."""
        cap = self.server.limits.max_body_bytes
        length = self.headers.get("Content-Length") or "0"
        if length.isdigit() and int(length) > cap:
            self._send(413, {"error": f"the body is {length} bytes, more than the limit max_body_bytes={cap}"})
            return False
        return super().handle_expect_100()

    def parse_request(self) -> bool:
        ok = super().parse_request()  # reads the headers
        self._header_timer.cancel()
        return ok

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("%s %s", self.address_string(), format % args)

    # ---- routing
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._body_read = True  # a GET has none
        path = self.path.split("?", 1)[0]
        match = MODEL_RE.match(path)
        if match:
            if match.group(1) != self.server.model_name:
                return self._send(404, {"error": f"model {match.group(1)!r} is not served here"})
            return self._send(200, {"name": self.server.model_name, "ready": True})
        if path in ("/", "/ping", "/health", "/v1/models"):
            return self._send(200, {"status": "alive", "models": [self.server.model_name]})
        self._send(404, {"error": f"no such path {path}"})

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        match = PREDICT_RE.match(path)
        if match and match.group(1) != self.server.model_name:
            return self._send(404, {"error": f"model {match.group(1)!r} is not served here"})
        if not match and path != "/invocations":
            return self._send(404, {"error": f"no such path {path}"})
        start = time.monotonic()
        deadline = start + self.server.limits.serving.max_seconds
        # The body is read before a work slot is taken: a client that sends slowly holds only its
        # connection (bounded by max_connections, each body by max_body_bytes), never a slot
        # that others need, and the same deadline still ends it.
        try:
            body = self._read_body(deadline)
            self._body_read = True
        except HttpError as e:
            return self._send(e.status, {"error": e.message}, e.headers)
        if not self.server.slots.acquire(blocking=False):
            return self._send(503, {"error": f"busy: {self.server.limits.max_concurrent} requests in flight "
                                             "(max_concurrent); retry later"}, {"Retry-After": "1"})
        try:
            status, payload, headers = 200, self._predict(body, deadline, mlflow=not match), {}
        except HttpError as e:
            status, payload, headers = e.status, {"error": e.message}, e.headers
        finally:
            # freed before the answer is written, so that a client's next request never finds its
            # own finished one still in flight; answers being written are bounded by max_connections
            self.server.slots.release()
        self._send(status, payload, headers)
        log.info("POST %s -> %d in %.2fs%s", path, status, time.monotonic() - start,
                 f": {payload['error']}" if status != 200 else "")

    # ---- the request
    def _predict(self, body: bytes, deadline: float, mlflow: bool) -> dict:
        from srcore.upscale import UpscaleTimeout, check_image_array, upscale_array

        limits = self.server.limits
        request = parse_json(body)
        del body
        key, params_key = ("inputs", "params") if mlflow else ("instances", "parameters")
        if not isinstance(request, dict) or not isinstance(request.get(key), list):
            raise HttpError(400, f'expected a JSON object {{"{key}": [image, ...]}}')
        params = request.get(params_key) or {}
        if not isinstance(params, dict):
            raise HttpError(400, f'"{params_key}" must be an object')
        instances = request[key]
        serving = limits.serving
        if len(instances) > serving.max_batch:  # before converting any image
            raise HttpError(400, f"the request holds {len(instances)} images, more than the limit "
                                 f"max_batch={serving.max_batch}")
        images = [as_image(v, f"image {i}", serving.max_pixels) for i, v in enumerate(instances)]
        del request, instances
        default_tile, default_overlap = serving.default_tiling()
        tile, overlap = _int_param(params, "tile", default_tile), _int_param(params, "overlap", default_overlap)
        encoding = params.get("encoding") or "array"
        try:
            serving.check([img.shape[:2] for img in images], tile, overlap, str(encoding))
            for i, img in enumerate(images):
                check_image_array(img, f"image {i}")
        except (RequestRefused, ValueError, TypeError) as e:
            raise HttpError(400, str(e)) from None
        if not images:
            raise HttpError(400, f'"{key}" holds no image')
        scale = _scale(self.server.generator)
        if encoding == "array":
            size = sum(h * w for h, w in (img.shape[:2] for img in images)) * scale * scale * _ARRAY_BYTES_PER_PIXEL
            if size > limits.max_response_bytes:
                raise HttpError(400, f"the answer as a JSON array would take up to {size} bytes, more than the limit "
                                     f"max_response_bytes={limits.max_response_bytes}: ask for "
                                     '"encoding": "png" (base64 PNG images) or send smaller images')
        outputs = []
        try:
            for i, img in enumerate(images):
                outputs.append(upscale_array(self.server.generator, img, tile=tile, overlap=overlap,
                                             name=f"image {i}", deadline=deadline))
        except UpscaleTimeout as e:
            raise HttpError(504, f"{e}: the request took longer than the limit max_seconds={serving.max_seconds}; "
                                 "send smaller images") from None
        if encoding == "png":
            return {"predictions": [{"b64": png_base64(img)} for img in outputs]}
        return {"predictions": [img.tolist() for img in outputs]}

    def _read_body(self, deadline: float) -> bytes:
        cap = self.server.limits.max_body_bytes
        # framing read strictly (RFC 9112 6.3): a proxy in front that frames the body another
        # way (both headers, two lengths, "+5", "1_0", a negative chunk size) is refused, never guessed
        lengths = set(self.headers.get_all("Content-Length") or [])
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        if chunked and lengths:
            raise HttpError(400, "the request has both Transfer-Encoding and Content-Length; send one")
        if chunked:
            return self._read_chunked(cap, deadline)
        if not lengths:
            raise HttpError(411, "a request body needs Content-Length (or chunked transfer encoding)")
        length = lengths.pop().strip()
        if lengths or not _DIGITS.fullmatch(length):
            raise HttpError(400, "Content-Length must be one number of digits (0-9), given once")
        n = int(length)
        if n > cap:
            raise HttpError(413, f"the body is {n} bytes, more than the limit max_body_bytes={cap}")
        return self._read_exact(n, deadline)

    def _read_exact(self, n: int, deadline: float) -> bytes:
        parts, left = [], n
        while left:
            chunk = self._recv(lambda: self.rfile.read1(min(left, 1 << 16)), deadline)
            if not chunk:
                raise HttpError(400, f"the body ended after {n - left} of {n} bytes")
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def _read_chunked(self, cap: int, deadline: float) -> bytes:
        parts, total = [], 0
        while True:
            line = self._recv(lambda: self.rfile.readline(1024), deadline)
            digits = line.split(b";", 1)[0].strip()
            if not _HEX_DIGITS.fullmatch(digits):  # int(x, 16) takes "-10" and "0x10": no cap holds then
                raise HttpError(400, "malformed chunked body (a chunk size is hexadecimal digits)")
            size = int(digits, 16)
            if size == 0:
                while self._recv(lambda: self.rfile.readline(1024), deadline) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > cap:
                raise HttpError(413, f"the chunked body passed the limit max_body_bytes={cap}; it was cut there")
            parts.append(self._read_exact(size, deadline))
            self._recv(lambda: self.rfile.readline(1024), deadline)  # the CRLF after the chunk

    def _recv(self, read: Any, deadline: float) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise HttpError(408, "the body did not arrive within the limit max_seconds")
        self.connection.settimeout(left)
        try:
            return read()
        except (TimeoutError, socket.timeout):
            raise HttpError(408, "the body did not arrive within the limit max_seconds") from None

    def finish(self) -> None:
        self._header_timer.cancel()
        try:
            super().finish()
            if not self._body_read:
                self._drain()
        except OSError:
            pass

    def _drain(self) -> None:
        """Closing a socket with unread bytes makes the kernel send a reset, which can destroy
        the answer before the client reads it; so stop sending, then read and drop what is
        still arriving, at most DRAIN_BYTES for at most DRAIN_SECONDS (as nginx's lingering close)."""
        self.connection.shutdown(socket.SHUT_WR)
        end, dropped = time.monotonic() + DRAIN_SECONDS, 0
        while dropped < DRAIN_BYTES and (left := end - time.monotonic()) > 0:
            self.connection.settimeout(left)
            try:
                data = self.connection.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            dropped += len(data)

    def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        try:
            self.connection.settimeout(max(self.server.limits.serving.max_seconds, 1.0))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except OSError as e:  # the client went away: nothing left to do for it
            log.info("could not answer %s: %s", self.address_string(), e)
        self.close_connection = True


def _scale(generator: Any) -> int:
    from srcore.models import generator_scale

    return generator_scale(generator)


def make_server(model: str | Any, name: str, host: str = "127.0.0.1", port: int = 8080,
                limits: ServerLimits | None = None) -> UpscaleServer:
    """Load the model (path/URI, or an already loaded generator) and bind; serve_forever() serves.
    A bad port is refused before the (slow) load; a failed bind names the address."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"invalid input port={port!r}: expected a TCP port number 0..65535 (0: any free port)")
    generator = load_model(model) if isinstance(model, (str, Path)) else model
    try:
        return UpscaleServer((host, port), generator, name, limits or ServerLimits())
    except OSError as err:  # address in use, no such host or interface, a privileged port
        raise ValueError(f"cannot listen on {host}:{port}: {err.strerror or err}; pass another --host/--port") from None


def serve_step(cfg: Any, model: str, model_name: str = "", host: str = "", port: str = "") -> dict[str, Any]:
    """The `serve` step (`srgan serve --model M`): the bounded server with the Config's
    serve_* limits, until interrupted (Ctrl-C / SIGTERM's KeyboardInterrupt)."""
    try:
        port_number = int(port or 8080)
    except ValueError:
        raise ValueError(f"invalid input port={port!r}: expected a TCP port number") from None
    limits = ServerLimits.from_config(cfg)
    server = make_server(model, model_name or cfg.registered_model_name, host or "127.0.0.1", port_number, limits)
    return {"url": _serve(server, model, limits)}


def _serve(server: Any, model: str, limits: ServerLimits) -> str:
    """Log where `server` answers, serve until interrupted, close it; its URL."""
    url = f"http://{server.server_address[0]}:{server.server_address[1]}"
    log.info("serving %s as %r on %s (POST %s/v1/models/%s:predict; limits: %s)", model, server.model_name, url,
             url, server.model_name, limits)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return url


SERVE_FLAGS = (("serve_max_pixels", int), ("serve_max_batch", int), ("serve_min_tile", int), ("serve_max_tile", int),
               ("serve_max_seconds", float), ("serve_max_body_bytes", int), ("serve_max_concurrent", int),
               ("serve_max_response_bytes", int))


def build_parser() -> argparse.ArgumentParser:
    from srcore.config import Config

    d = Config()
    p = argparse.ArgumentParser(prog="python -m srcore.server", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="SavedModel folder (version or base), .keras file or MLflow URI")
    p.add_argument("--name", default=d.registered_model_name, help="model name in /v1/models/<name>")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=8080)
    for field, kind in SERVE_FLAGS:
        p.add_argument(f"--{field.replace('_', '-')}", dest=field, type=kind, default=getattr(d, field),
                       help=next(f.metadata["help"] for f in dataclasses.fields(Config) if f.name == field))
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from srcore.config import Config, ConfigError

    try:  # the flags are Config fields: checked by Config's one rule (type, finite, range)
        cfg = Config(**{k: v for k, v in vars(args).items() if k.startswith("serve_")})
    except ConfigError as e:
        p.error(str(e))
    limits = ServerLimits.from_config(cfg)
    try:
        server = make_server(args.model, args.name, args.host, args.port, limits)
    except (OSError, ValueError) as e:
        p.exit(2, f"srcore.server: cannot serve {args.model}: {e}\n")
    _serve(server, args.model, limits)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
