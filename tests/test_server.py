"""The bounded server (srcore.server) on loopback: a real process started with the KServe
predictor container's own command line (srcore.deploy's manifest), serving the exported
SavedModel of a smoke-size generator from its version folder, spoken to in the
KServe v1 protocol with real sockets: over-limit bodies are refused before they are read,
concurrency is capped, bad pixels and deep nesting are 400s, answers equal `srgan upscale`,
and (in process, to count the generator's calls) a timed-out request stops its work."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import free_port, wait_http
from srcore.config import build_config
from srcore.export import export_savedmodel
from srcore.models import build_generator, load_generator
from srcore.serving import ServingLimits
from srcore.server import ServerLimits, UpscaleServer, load_model
from srcore.upscale import upscale_array, upscale_files

NAME = "srgan-test"
BODY_CAP = 1_000_000  # the 100k-bracket body (200 KB) fits: it must fail on its nesting, not its size
LIMITS = {"serve_max_pixels": 4096, "serve_max_batch": 3, "serve_min_tile": 8, "serve_max_tile": 64,
          "serve_max_seconds": 20.0, "serve_max_body_bytes": BODY_CAP, "serve_max_concurrent": 1,
          "serve_max_response_bytes": 500_000}


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory) -> Path:
    cfg = build_config("smoke")
    path = tmp_path_factory.mktemp("server-gen") / "generator.keras"
    build_generator(cfg.gen_filters, cfg.gen_blocks, cfg.scale, init_scale=1.0).save(path)
    return path


@pytest.fixture(scope="module")
def exported(keras_model, tmp_path_factory) -> Path:
    """The KServe layout: <base>/<name>/<version>/; the server gets the base folder, as
    the storage initializer leaves a version's parent in /mnt/models."""
    out = tmp_path_factory.mktemp("server-export")
    export_savedmodel(str(keras_model), out, NAME, 3)
    return out / NAME


def container_command(model_dir: Path, port: int) -> list[str]:
    """The predictor container's command line exactly as srcore.deploy writes it into the
    InferenceService, with only what the cluster provides swapped: this Python for the
    image's, the export's folder for /mnt/models, loopback and a free port for 0.0.0.0:8080."""
    from srcore.deploy import MODEL_MOUNT, PORT, build_manifest

    cfg = build_config("smoke", overrides={**LIMITS, "deploy_service_name": NAME, "deploy_image": "img"})
    [container] = build_manifest(cfg, "pvc://srgan-data/serving/m/3", "ns")["spec"]["predictor"]["containers"]
    swap = {"python": sys.executable, MODEL_MOUNT: str(model_dir), "0.0.0.0": "127.0.0.1", str(PORT): str(port)}
    return [swap.get(word, word) for word in container["command"] + container["args"]]


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("server-log") / "server.log"
    # what a pvc:// storage URI mounts at /mnt/models: the version folder itself
    cmd = container_command(exported / "3", port)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    try:
        wait_http(f"{url}/v1/models/{NAME}", timeout=180, proc=proc)
        yield url, port
        assert proc.poll() is None, "the server died"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        print(log_path.read_text()[-3000:])


def predict(url: str, payload: dict, timeout: float = 60) -> requests.Response:
    return requests.post(f"{url}/v1/models/{NAME}:predict", json=payload, timeout=timeout)


def raw_request(port: int, head: str, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode() + b"\r\n\r\n" + body)
    return sock


def read_status(sock: socket.socket) -> tuple[int, str]:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def test_readiness_and_an_answer_equal_to_srgan_upscale(server, keras_model, tmp_path):
    url, _ = server
    assert requests.get(f"{url}/v1/models/{NAME}", timeout=10).json() == {"name": NAME, "ready": True}
    assert requests.get(f"{url}/v1/models/other", timeout=10).status_code == 404

    img = image(20, 24)
    Image.fromarray(img).save(tmp_path / "face.png")
    [written] = upscale_files(keras_model, [tmp_path / "face.png"], tmp_path / "up", tile=16)  # what `srgan upscale` runs
    with Image.open(written) as f:
        expected = np.asarray(f)

    r = predict(url, {"instances": [img.tolist()], "parameters": {"tile": 16}})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.asarray(r.json()["predictions"][0], dtype=np.uint8), expected)

    # the compact answer and a b64 PNG request give the same pixels
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="PNG")
    r = predict(url, {"instances": [{"b64": base64.b64encode(buffer.getvalue()).decode()}],
                      "parameters": {"tile": 16, "encoding": "png"}})
    assert r.status_code == 200, r.text
    with Image.open(io.BytesIO(base64.b64decode(r.json()["predictions"][0]["b64"]))) as out:
        np.testing.assert_array_equal(np.asarray(out), expected)

    # MLflow's payload on /invocations (a drop-in for `mlflow models serve`)
    r = requests.post(f"{url}/invocations", json={"inputs": [img.tolist()], "params": {"tile": 16}}, timeout=60)
    assert r.status_code == 200 and np.array_equal(np.asarray(r.json()["predictions"][0], dtype=np.uint8), expected)


def test_oversized_content_length_is_refused_before_reading(server):
    _, port = server
    start = time.monotonic()
    # headers only: the server must answer without waiting for the gigabyte announced
    sock = raw_request(port, f"POST /v1/models/{NAME}:predict HTTP/1.1\r\nHost: x\r\n"
                             "Content-Type: application/json\r\nContent-Length: 1000000000")
    status, body = read_status(sock)
    assert status == 413 and "max_body_bytes=1000000" in body
    assert time.monotonic() - start < 5


def test_expect_100_continue_is_answered_by_the_cap(server):
    _, port = server
    head = f"POST /v1/models/{NAME}:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" \
           "Expect: 100-continue\r\nContent-Length: "
    status, body = read_status(raw_request(port, head + "5000000"))  # over the cap: no 100, a 413
    assert status == 413 and "max_body_bytes" in body
    payload = json.dumps({"instances": [image(8, 8).tolist()], "parameters": {"tile": 8}}).encode()
    sock = raw_request(port, head + str(len(payload)))
    assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")  # then the client sends its body
    sock.sendall(payload)
    status, body = read_status(sock)
    assert status == 200 and len(json.loads(body.partition("\r\n\r\n")[2] or body)["predictions"]) == 1


def test_a_chunked_stream_over_the_cap_is_cut(server):
    _, port = server
    sock = raw_request(port, f"POST /v1/models/{NAME}:predict HTTP/1.1\r\nHost: x\r\n"
                             "Content-Type: application/json\r\nTransfer-Encoding: chunked")
    piece = b"[" * 65536
    sent = 0
    try:
        while sent < BODY_CAP + 256 * 1024:  # past the cap; the stream's last chunk never comes
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            sent += len(piece)
    except OSError:
        pass  # the server may already have cut it
    status, body = read_status(sock)
    assert status == 413 and "cut" in body


@pytest.mark.parametrize(("framing", "named"), [
    ("Transfer-Encoding: chunked\r\n\r\n-10\r\n", "chunk size"),  # int("-10", 16): the cap went negative
    ("Transfer-Encoding: chunked\r\n\r\n0x10\r\n", "chunk size"),
    ("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n10\r\n", "both"),
    ("Content-Length: 10\r\nContent-Length: 3\r\n\r\n", "given once"),
    ("Content-Length: 1_0\r\n\r\n", "digits"),
    ("Content-Length: +10\r\n\r\n", "digits"),
    ("Content-Length: -5\r\n\r\n", "digits"),
])
def test_body_framing_is_read_strictly(server, framing, named):
    """A body framed in a way a proxy in front could read otherwise is a 400 before it is read;
    a negative chunk size let an endless body past max_body_bytes."""
    _, port = server
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"POST /v1/models/{NAME}:predict HTTP/1.1\r\nHost: x\r\n{framing}".encode() + b"[" * 64)
    status, body = read_status(sock)
    assert status == 400 and named in body, body


@pytest.mark.parametrize(("pixels", "named"), [
    (np.full((8, 8, 3), 0.99).tolist(), "floats"),
    (np.full((8, 8, 3), -1).tolist(), "0..255"),
    (np.full((8, 8, 3), 256).tolist(), "0..255"),
    (np.full((8, 8, 3), True).tolist(), "booleans"),
    ([[["1", "2", "3"]] * 8] * 8, "strings"),
    ([[[1, 2, 3]] * 8] * 7 + [[[1, 2, 3]] * 5], "rows of equal length"),
    (np.zeros((8, 8), int).tolist(), "HxWx3"),
])
def test_pixels_that_are_not_uint8_are_a_400(server, pixels, named):
    r = predict(server[0], {"instances": [pixels]})
    assert r.status_code == 400 and named in r.json()["error"], r.text


def test_deep_nesting_and_limits_are_400s(server):
    url, _ = server
    r = requests.post(f"{url}/v1/models/{NAME}:predict", data=b"[" * 100_000 + b"]" * 100_000,
                      headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "nested" in r.json()["error"]
    r = requests.post(f"{url}/v1/models/{NAME}:predict", data=b'{"instances": [[[[1,2,3]]' + b"]" * 10, timeout=30)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    assert "max_pixels=4096" in predict(url, {"instances": [image(70, 60).tolist()]}).json()["error"]
    assert "max_batch=3" in predict(url, {"instances": [image(4, 4).tolist()] * 4}).json()["error"]
    assert "min_tile=8" in predict(url, {"instances": [image(8, 8).tolist()], "parameters": {"tile": 1}}).json()["error"]
    # 4080 LR px -> 65280 output px, up to 0.9 MB as a JSON array: over the 0.5 MB cap, refused before work
    big = predict(url, {"instances": [image(40, 34, s).tolist() for s in range(3)]})
    assert big.status_code == 400 and "max_response_bytes" in big.json()["error"] and "png" in big.json()["error"]


def test_a_slow_body_holds_no_slot_and_work_in_flight_gets_503_at_once(in_process, keras_model):
    """max_concurrent=1: a body still arriving does not take the only slot (another request is
    served meanwhile); a request being worked on does, and one more is answered 503 at once."""
    counting = CountingGenerator(load_generator(str(keras_model)), delay=0.05)
    url, srv = in_process(counting, max_concurrent=1, serving=ServingLimits(min_tile=8, max_seconds=20))
    port = srv.server_address[1]
    slow = raw_request(port, f"POST /v1/models/{NAME}:predict HTTP/1.1\r\nHost: x\r\n"
                             "Content-Type: application/json\r\nContent-Length: 40", b'{"instances"')
    time.sleep(0.3)
    assert predict(url, {"instances": [image(8, 8).tolist()], "parameters": {"tile": 8}}).status_code == 200
    slow.sendall(b': [[[[1,2,3],[4,5,6]],[[1,2,3],[4,5,6]]]]}'[:40 - len(b'{"instances"')])
    status, body = read_status(slow)
    assert status in (200, 400), body  # worked on once its body was in

    long_work = threading.Thread(target=predict, args=(url, {"instances": [image(48, 40).tolist()],
                                                              "parameters": {"tile": 8}}))  # 30 tiles, ~1.5 s
    before = counting.calls
    long_work.start()
    while counting.calls == before:  # the work has started: it holds the slot
        time.sleep(0.01)
    start = time.monotonic()
    busy = predict(url, {"instances": [image(8, 8).tolist()]})
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1" and "max_concurrent" in busy.text
    assert time.monotonic() - start < 2
    long_work.join(30)
    assert predict(url, {"instances": [image(8, 8).tolist()], "parameters": {"tile": 8}}).status_code == 200


# ---- in process: what the server computes after a timeout, and the connection cap -----------


class CountingGenerator:
    """The real tiny generator, counted and slowed so that a request outlives its deadline."""

    def __init__(self, generator, delay: float):
        self.generator, self.delay, self.calls = generator, delay, 0
        self.scale_factor = 4

    def __call__(self, x, training=False):
        self.calls += 1
        time.sleep(self.delay)
        return self.generator(x, training=training)


@pytest.fixture
def in_process(keras_model):
    servers = []

    def start(generator, **limits) -> tuple[str, UpscaleServer]:
        srv = UpscaleServer(("127.0.0.1", 0), generator, NAME, ServerLimits(**limits))
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}", srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_a_timed_out_request_stops_computing_before_it_is_answered(in_process, keras_model):
    counting = CountingGenerator(load_generator(str(keras_model)), delay=0.05)
    url, _ = in_process(counting, serving=ServingLimits(min_tile=8, max_seconds=0.5))
    start = time.monotonic()
    r = predict(url, {"instances": [image(64, 64).tolist()], "parameters": {"tile": 8}})  # 64 tiles, ~3 s
    elapsed = time.monotonic() - start
    assert r.status_code == 504 and "max_seconds=0.5" in r.json()["error"]
    assert elapsed < 2.0
    calls = counting.calls
    assert 0 < calls < 64
    time.sleep(0.5)
    assert counting.calls == calls, "the generator kept running after the answer"


def test_connections_beyond_the_cap_are_refused_at_accept(in_process, keras_model):
    url, srv = in_process(load_generator(str(keras_model)), max_concurrent=1, header_timeout=3.0)
    idle = [socket.create_connection(srv.server_address, timeout=10) for _ in range(srv.limits.max_connections)]
    time.sleep(0.3)
    extra = socket.create_connection(srv.server_address, timeout=10)
    status, body = read_status(extra)
    assert status == 503 and "too many connections" in body
    for sock in idle:
        sock.close()
    time.sleep(0.3)
    assert requests.get(f"{url}/v1/models/{NAME}", timeout=10).status_code == 200


def test_loads_a_version_folder_or_its_base(exported):
    for path in (exported, exported / "3"):
        model = load_model(str(path))
        assert model.scale_factor == 4
        out = upscale_array(model, image(6, 5), tile=0)
        assert out.shape == (24, 20, 3)


def test_headers_dribbled_a_byte_at_a_time_lose_the_connection(in_process, keras_model):
    _, srv = in_process(load_generator(str(keras_model)), header_timeout=0.5)
    sock = socket.create_connection(srv.server_address, timeout=10)
    start = time.monotonic()
    sock.sendall(b"POST /v1/models/x:predict HTTP/1.1\r\n")
    closed = False
    for _ in range(40):  # a header byte every 0.1 s: each read is quick, the whole never ends
        try:
            sock.sendall(b"X")
        except OSError:
            closed = True
            break
        time.sleep(0.1)
    if not closed:
        sock.settimeout(2)
        closed = sock.recv(1024) == b""
    assert closed and time.monotonic() - start < 3.0


def test_srgan_serve_reaches_the_server_through_the_step_table():
    from srcore import steps

    # no input may shadow run()'s own parameters (an input `name` once made `srgan serve` a TypeError)
    assert not {i.name for step in steps.STEPS.values() for i in step.inputs} & {"name", "cfg"}
    with pytest.raises(ValueError, match="invalid input port='abc'"):
        steps.run("serve", build_config("smoke"), model="unused", model_name="m", port="abc")


def test_b64_images_follow_the_ingest_colour_rule_and_size_bound():
    """A 16-bit grey PNG is scaled to 8 bits (PIL's convert clipped it to white), alpha is
    composited on black as in ingest, and a header over max_pixels is a 400 before decoding."""
    import struct
    import zlib

    from srcore.server import HttpError, as_image

    def b64(img: Image.Image) -> dict:
        buffer = io.BytesIO()
        img.save(buffer, "PNG")
        return {"b64": base64.b64encode(buffer.getvalue()).decode()}

    assert as_image(b64(Image.fromarray(np.full((8, 8), 32768, np.uint16))), "image 0", 10**6)[0, 0].tolist() == [128] * 3
    red = np.zeros((8, 8, 4), np.uint8)
    red[..., 0] = 255  # fully transparent
    assert as_image(b64(Image.fromarray(red)), "image 0", 10**6)[0, 0].tolist() == [0, 0, 0]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    huge = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))  # 80 bytes, 3.6 Gpx
    with pytest.raises(HttpError, match="image 0: .*max_pixels=262144"):
        as_image({"b64": base64.b64encode(huge).decode()}, "image 0", 262144)


def test_a_bad_port_or_a_busy_address_is_one_line(keras_model):
    from srcore.server import make_server

    for port in (99999, -1, True):  # refused before the model loads: the path need not exist
        with pytest.raises(ValueError, match="port=.*0..65535"):
            make_server("/no/such/model", NAME, "127.0.0.1", port)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ValueError, match=f"cannot listen on 127.0.0.1:{port}: Address already in use"):
            make_server(str(keras_model), NAME, "127.0.0.1", port)
