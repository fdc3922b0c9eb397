"""`python -m pipeline submit` against a recording stand-in for the KFP API: what the real
kfp.Client sends (experiment, run creation with the parameters and the pipeline spec)."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


class _KfpApi(BaseHTTPRequestHandler):
    """Minimal v2beta1 answers: healthz, experiments (list empty, create), runs (create)."""

    requests: list[dict] = []

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        entry = {"method": self.command, "path": urlsplit(self.path).path, "query": urlsplit(self.path).query,
                 "headers": dict(self.headers), "body": json.loads(raw) if raw else None}
        self.requests.append(entry)
        return entry

    def do_GET(self) -> None:  # noqa: N802
        req = self._record()
        if req["path"] == "/apis/v2beta1/healthz":
            self._reply(200, {"multi_user": False})
        elif req["path"] == "/apis/v2beta1/experiments":
            self._reply(200, {"experiments": [], "total_size": 0})
        else:
            self._reply(404, {"error": f"not found: {req['path']}"})

    def do_POST(self) -> None:  # noqa: N802
        req = self._record()
        if req["path"] == "/apis/v2beta1/experiments":
            self._reply(200, {"experiment_id": "exp-123", "display_name": req["body"]["display_name"]})
        elif req["path"] == "/apis/v2beta1/runs":
            self._reply(200, {"run_id": "run-456", "display_name": req["body"]["display_name"],
                              "experiment_id": req["body"].get("experiment_id"), "state": "PENDING"})
        else:
            self._reply(404, {"error": f"not found: {req['path']}"})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def kfp_api():
    handler = type("Handler", (_KfpApi,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    server.shutdown()
    server.server_close()


def test_submit_creates_run_with_parameters(kfp_api, monkeypatch, capsys, tmp_path):
    from pipeline.__main__ import main

    host, requests = kfp_api
    monkeypatch.setenv("KFP_TOKEN", "tok-123")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kfp/context.json of the machine
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-must-not-be-sent")
    rc = main(["submit", "--host", host, "--experiment", "srgan-tests", "--run-name", "nightly",
               "-p", "epochs=3", "-p", "preset=smoke", "-p", "mlflow_tracking_uri=http://mlflow.mlflow:5000",
               "-p", 'config_overrides={"gen_blocks": 4}'])
    assert rc == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"{host}/#/runs/details/run-456"

    (create_exp,) = [r for r in requests if r["method"] == "POST" and r["path"].endswith("/experiments")]
    assert create_exp["body"]["display_name"] == "srgan-tests"
    (run,) = [r for r in requests if r["method"] == "POST" and r["path"].endswith("/runs")]
    body = run["body"]
    assert body["display_name"] == "nightly"
    assert body["experiment_id"] == "exp-123"
    assert body["runtime_config"]["parameters"] == {
        "epochs": "3", "preset": "smoke", "mlflow_tracking_uri": "http://mlflow.mlflow:5000",
        "config_overrides": '{"gen_blocks": 4}'}
    # with a platform config the client sends {"pipeline_spec": ..., "platform_spec": ...}
    spec = body["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "srgan-celeba"
    assert set(spec["root"]["dag"]["tasks"]) == {"ingest", "train", "evaluate", "register"}
    executors = body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-train"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert executors["exec-register"]["secretAsEnv"][0]["secretName"] == "mlflow-credentials"
    for r in requests:
        assert r["headers"].get("authorization", r["headers"].get("Authorization")) == "Bearer tok-123"
        assert "pw-must-not-be-sent" not in json.dumps(r["body"] or {})


def test_submit_rejects_unknown_parameter(kfp_api, monkeypatch, tmp_path):
    from pipeline.__main__ import main

    host, requests = kfp_api
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["submit", "--host", host, "-p", "epoch=3"]) == 2
    assert not [r for r in requests if r["method"] == "POST"]
