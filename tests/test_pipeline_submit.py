"""`python -m pipeline submit` against a recording stand-in for the KFP API: what the real
kfp.Client sends (experiment, run creation with the parameters and the pipeline spec)."""

from __future__ import annotations

import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


IMAGE = "registry.example/srgan:abc"
SMOKE = ["-p", "preset=smoke", "-p", "mlflow_tracking_uri=http://mlflow.mlflow:5000"]


class _KfpApi(BaseHTTPRequestHandler):
    """Minimal v2beta1 answers: healthz (single- or multi-user, the server's `tag_name`),
    experiments (list empty, create), runs (create), pipelines (list, upload,
    upload_version, list versions)."""

    requests: list[dict] = []
    multi_user = False
    tag_name: str | None = "2.14.0"
    pipelines: list[dict] = []
    versions: list[dict] = []

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
        try:
            body = json.loads(raw) if raw else None
        except ValueError:  # a multipart upload
            body = {"raw": raw.decode("utf-8", "replace")}
        url = urlsplit(self.path)
        entry = {"method": self.command, "path": url.path, "query": parse_qs(url.query),
                 "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
        self.requests.append(entry)
        return entry

    def do_GET(self) -> None:  # noqa: N802
        req = self._record()
        if req["path"] == "/apis/v2beta1/healthz":
            self._reply(200, {"multi_user": self.multi_user, "pipeline_store": "database",
                              **({"tag_name": self.tag_name} if self.tag_name is not None else {})})
        elif req["path"] == "/apis/v2beta1/experiments":
            self._reply(200, {"experiments": [], "total_size": 0})
        elif req["path"] == "/apis/v2beta1/pipelines":
            self._reply(200, {"pipelines": self.pipelines, "total_size": len(self.pipelines)})
        elif req["path"].startswith("/apis/v2beta1/pipelines/") and req["path"].endswith("/versions"):
            self._reply(200, {"pipeline_versions": self.versions, "total_size": len(self.versions)})
        else:
            self._reply(404, {"error": f"not found: {req['path']}"})

    def do_POST(self) -> None:  # noqa: N802
        req = self._record()
        if req["path"] == "/apis/v2beta1/experiments":
            self._reply(200, {"experiment_id": "exp-123", "display_name": req["body"]["display_name"],
                              "namespace": req["body"].get("namespace")})
        elif req["path"] == "/apis/v2beta1/runs":
            self._reply(200, {"run_id": "run-456", "display_name": req["body"]["display_name"],
                              "experiment_id": req["body"].get("experiment_id"), "state": "PENDING"})
        elif req["path"] == "/apis/v2beta1/pipelines/upload":
            self._reply(200, {"pipeline_id": "pl-1", "display_name": req["query"]["name"][0]})
        elif req["path"] == "/apis/v2beta1/pipelines/upload_version":
            self._reply(200, {"pipeline_id": req["query"]["pipelineid"][0], "pipeline_version_id": "pv-1",
                              "display_name": req["query"]["name"][0]})
        else:
            self._reply(404, {"error": f"not found: {req['path']}"})

    def log_message(self, *args) -> None:
        pass


def _serve(**attrs):
    handler = type("Handler", (_KfpApi,), {"requests": [], "pipelines": [], "versions": [], **attrs})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, handler


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No token, cookie, namespace or kube config of this machine leaks into a test."""
    for name in ("KFP_TOKEN", "KFP_COOKIE", "KFP_NAMESPACE", "KF_PIPELINES_ENDPOINT", "SRGAN_KFP_MLFLOW_PLUGIN",
                 "SRGAN_IMAGE", "SRGAN_IMAGE_REPOSITORY", "SRGAN_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kfp/context.json of the machine
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-sa-token"))
    return tmp_path


@pytest.fixture
def kfp_api(isolated):
    server, handler = _serve()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    server.shutdown()
    server.server_close()


@pytest.fixture
def multi_user_api(isolated):
    server, handler = _serve(multi_user=True)
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    server.shutdown()
    server.server_close()


def _posts(requests: list[dict], suffix: str) -> list[dict]:
    return [r for r in requests if r["method"] == "POST" and r["path"].endswith(suffix)]


def _task_names(spec: dict) -> set[str]:
    names = set(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        names |= set(comp.get("dag", {}).get("tasks", {}))
    return names


def test_submit_creates_run_with_parameters(kfp_api, monkeypatch, capsys):
    from pipeline.__main__ import main

    host, requests = kfp_api
    monkeypatch.setenv("KFP_TOKEN", "tok-123")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-must-not-be-sent")
    rc = main(["submit", "--host", host, "--image", IMAGE, "--experiment", "srgan-tests", "--run-name", "nightly",
               "-p", "epochs=3", "-p", "preset=smoke", "-p", "mlflow_tracking_uri=http://mlflow.mlflow:5000",
               "-p", 'config_overrides={"gen_blocks": 4}'])
    assert rc == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"{host}/#/runs/details/run-456"

    (create_exp,) = _posts(requests, "/experiments")
    assert create_exp["body"]["display_name"] == "srgan-tests"
    assert not create_exp["body"].get("namespace")  # single-user: no namespace
    (run,) = _posts(requests, "/runs")
    body = run["body"]
    assert body["display_name"] == "nightly"
    assert body["experiment_id"] == "exp-123"
    sent = dict(body["runtime_config"]["parameters"])
    # a run key unique to this run: its folders on the volume, its MLflow parent run
    assert re.fullmatch(r"nightly-[0-9a-f]{8}", sent.pop("run_key"))
    assert sent == {
        "epochs": "3", "preset": "smoke", "mlflow_tracking_uri": "http://mlflow.mlflow:5000",
        "config_overrides": '{"gen_blocks": 4}'}
    # with a platform config the client sends {"pipeline_spec": ..., "platform_spec": ...}
    spec = body["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "srgan-celeba"
    assert _task_names(spec) >= {"ingest", "train", "evaluate", "register"}
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {IMAGE}
    executors = body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-train"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert executors["exec-register"]["secretAsEnv"][0]["secretName"] == "mlflow-credentials"
    for r in requests:
        assert r["headers"].get("authorization") == "Bearer tok-123"
        assert "pw-must-not-be-sent" not in json.dumps(r["body"] or {})


def test_submit_rejects_unknown_parameter(kfp_api):
    from pipeline.__main__ import main

    host, requests = kfp_api
    assert main(["submit", "--host", host, "--image", IMAGE, "-p", "epoch=3"]) == 2
    assert not [r for r in requests if r["method"] == "POST"]


# ---- preflight: refused before anything is compiled or sent ----------------------------


@pytest.mark.parametrize("params, named", [
    (["-p", "preset=seed"], "source"),  # the check: no source, no synthetic fallback
    (["-p", "preset=seed", "-p", "source=/data/img_align_celeba.zip", "-p", "epochs=abc"], "epochs"),
    (["-p", "preset=smoke", "-p", 'config_overrides={"batch_size": "many"}'], "batch_size"),
    (["-p", "preset=seed", "-p", "source=/data/img_align_celeba.zip"], "mlflow_tracking_uri"),
])
def test_submit_preflight_refuses_before_any_request(kfp_api, caplog, params, named):
    from pipeline.__main__ import main

    host, requests = kfp_api
    assert main(["submit", "--host", host, "--image", IMAGE, *params]) == 2
    assert requests == []
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors and f"invalid parameter {named}=" in errors[-1]


def test_mlflow_plugin_flag_lifts_the_tracking_uri_requirement(kfp_api):
    from pipeline.__main__ import main

    host, requests = kfp_api
    assert main(["submit", "--host", host, "--image", IMAGE, "--mlflow-plugin", "-p", "preset=smoke"]) == 0
    (run,) = _posts(requests, "/runs")
    params = run["body"]["runtime_config"]["parameters"]
    assert params.pop("run_key") and params == {"preset": "smoke"}


def test_submit_without_an_image_is_refused(kfp_api, caplog):
    from pipeline.__main__ import main

    host, requests = kfp_api
    assert main(["submit", "--host", host, *SMOKE]) == 2
    assert requests == []
    assert "no component image" in caplog.text and "SRGAN_IMAGE" in caplog.text


# ---- multi-user Kubeflow: namespace, credentials ------------------------------------------


def test_multi_user_namespace_token_file_and_cookie(multi_user_api, isolated):
    from pipeline.__main__ import main

    host, requests = multi_user_api
    token = isolated / "token"
    token.write_text("file-token-1\n")
    rc = main(["submit", "--host", host, "--image", IMAGE, "--namespace", "team-a", "--experiment", "srgan",
               "--token-file", str(token), "--cookie", "authservice_session=s3ss10n", *SMOKE])
    assert rc == 0
    (exp,) = _posts(requests, "/experiments")
    assert exp["body"]["namespace"] == "team-a" and exp["body"]["display_name"] == "srgan"
    lookups = [r for r in requests if r["method"] == "GET" and r["path"] == "/apis/v2beta1/experiments"]
    assert lookups and all(r["query"].get("namespace") == ["team-a"] for r in lookups)
    (run,) = _posts(requests, "/runs")
    assert run["body"]["experiment_id"] == "exp-123"  # the run lives in the namespaced experiment
    for r in requests:
        assert r["headers"].get("authorization") == "Bearer file-token-1"
        assert "authservice_session=s3ss10n" in r["headers"].get("cookie", "")


def test_namespace_defaults_from_the_kube_context(multi_user_api, isolated, monkeypatch):
    from pipeline.__main__ import main

    host, requests = multi_user_api
    kubeconfig = isolated / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "x"}}],
        "contexts": [{"name": "dev", "context": {"cluster": "c", "user": "u", "namespace": "profile-dev"}},
                     {"name": "other", "context": {"cluster": "c", "user": "u", "namespace": "nope"}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert main(["submit", "--host", host, "--image", IMAGE, *SMOKE]) == 0
    (exp,) = _posts(requests, "/experiments")
    assert exp["body"]["namespace"] == "profile-dev"


def test_multi_user_without_a_namespace_is_refused(multi_user_api, caplog):
    from pipeline.__main__ import main

    host, requests = multi_user_api
    assert main(["submit", "--host", host, "--image", IMAGE, *SMOKE]) == 2
    assert not [r for r in requests if r["method"] == "POST"]
    assert "multi-user" in caplog.text and "--namespace" in caplog.text


def test_in_cluster_service_account_token(kfp_api, isolated, monkeypatch):
    from pipeline.__main__ import main

    host, requests = kfp_api
    sa_token = isolated / "sa-token"
    sa_token.write_text("projected-sa-token")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(sa_token))
    assert main(["submit", "--host", host, "--image", IMAGE, *SMOKE]) == 0
    assert requests and all(r["headers"].get("authorization") == "Bearer projected-sa-token" for r in requests)


# ---- upload: a named, versioned pipeline ----------------------------------------------------


def test_submit_upload_creates_a_versioned_pipeline_and_runs_it(multi_user_api):
    from components._common import checkout_commit
    from pipeline.__main__ import main

    host, requests = multi_user_api
    assert main(["submit", "--host", host, "--image", IMAGE, "--namespace", "team-a", "--upload", *SMOKE]) == 0
    (listing,) = [r for r in requests if r["method"] == "GET" and r["path"] == "/apis/v2beta1/pipelines"]
    assert listing["query"]["namespace"] == ["team-a"]
    (created,) = _posts(requests, "/pipelines/upload")
    assert created["query"]["name"] == ["srgan-celeba"] and created["query"]["namespace"] == ["team-a"]
    (version,) = _posts(requests, "/pipelines/upload_version")
    assert version["query"]["pipelineid"] == ["pl-1"]
    name = version["query"]["name"][0]
    commit = checkout_commit()
    assert commit and name.startswith(commit.removesuffix("-dirty"))
    assert "pipelineInfo" in version["body"]["raw"]  # the compiled YAML is the uploaded file
    (run,) = _posts(requests, "/runs")
    assert run["body"]["pipeline_version_reference"] == {"pipeline_id": "pl-1", "pipeline_version_id": "pv-1"}
    assert not run["body"].get("pipeline_spec")


def test_upload_reuses_an_existing_version(isolated, capsys):
    from pipeline.__main__ import main

    server, handler = _serve(pipelines=[{"pipeline_id": "pl-9", "display_name": "srgan-celeba"}],
                             versions=[{"pipeline_id": "pl-9", "pipeline_version_id": "pv-9", "display_name": "v1"}])
    host = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert main(["upload", "--host", host, "--image", IMAGE, "--version", "v1"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {
        "pipeline_id": "pl-9", "pipeline_version_id": "pv-9", "version": "v1"}
    assert not [r for r in handler.requests if r["method"] == "POST"]


def test_run_local_preflight_refuses_before_writing(isolated, caplog):
    from pipeline.__main__ import main

    root = isolated / "kfp-local"
    assert main(["run-local", "--preset", "seed", "--root", str(root)]) == 2
    assert not root.exists()
    assert "invalid parameter source=" in caplog.text


def test_submit_the_sweep_pipeline(kfp_api):
    from pipeline.__main__ import main

    host, requests = kfp_api
    assert main(["submit", "--host", host, "--image", IMAGE, "--pipeline", "sweep", *SMOKE]) == 0
    (run,) = _posts(requests, "/runs")
    assert run["body"]["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "srgan-celeba-sweep"


# ---- the support matrix: the API server's version before anything is created -------------


@pytest.fixture
def api_at(isolated):
    """A loopback KFP API answering healthz with the given tag_name."""
    servers = []

    def start(tag_name):
        server, handler = _serve(tag_name=tag_name)
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", handler.requests

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _created(requests: list[dict]) -> list[dict]:
    return [r for r in requests if r["method"] == "POST"]


@pytest.mark.parametrize("tag, pipeline, accepted", [
    ("2.3.0", "main", True), ("2.5.0", "main", True), ("2.14.0", "main", True),  # Kubeflow 1.9, 1.10, 1.11
    ("2.3.0", "sweep", False), ("2.5.0", "sweep", True), ("2.14.0", "sweep", True),
])
def test_submit_checks_the_backend_version(api_at, caplog, tag, pipeline, accepted):
    from pipeline.__main__ import main
    from pipeline.support import SUPPORT, fmt

    host, requests = api_at(tag)
    rc = main(["submit", "--host", host, "--image", IMAGE, "--pipeline", pipeline, *SMOKE])
    assert any(r["path"] == "/apis/v2beta1/healthz" for r in requests)
    if accepted:
        assert rc == 0
        (run,) = _posts(requests, "/runs")
        assert run["body"]["pipeline_spec"]["pipeline_spec"]["root"]["dag"]["tasks"]
        return
    assert rc == 2 and _created(requests) == []  # nothing created
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "\n" not in line and fmt(SUPPORT[pipeline].min_version) in line and tag in line, line


def test_old_backend_gets_a_warning_for_what_it_drops(api_at, caplog):
    from pipeline.__main__ import main

    host, requests = api_at("2.3.0")
    assert main(["submit", "--host", host, "--image", IMAGE, *SMOKE]) == 0
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "set_retry" in warnings and "2.5.0" in warnings  # retries exist only from 2.5


def test_unreadable_version_warns_for_main_and_refuses_the_sweep(api_at, caplog):
    from pipeline.__main__ import main

    host, requests = api_at(None)  # a server without tag_name
    assert main(["submit", "--host", host, "--image", IMAGE, *SMOKE]) == 0
    assert "no readable version" in caplog.text
    host, requests = api_at("dev")
    assert main(["submit", "--host", host, "--image", IMAGE, "--pipeline", "sweep", *SMOKE]) == 2
    assert _created(requests) == [] and "--skip-version-check" in caplog.text
    assert main(["submit", "--host", host, "--image", IMAGE, "--pipeline", "sweep", "--skip-version-check",
                 *SMOKE]) == 0


def test_upload_checks_the_backend_version_first(api_at, caplog):
    from pipeline.__main__ import main

    host, requests = api_at("2.3.0")
    assert main(["upload", "--host", host, "--image", IMAGE, "--pipeline", "sweep", "--version", "v1"]) == 2
    assert _created(requests) == [] and "needs KFP backend 2.5.0 or later, the API" in caplog.text
    host, requests = api_at("2.5.0")
    assert main(["upload", "--host", host, "--image", IMAGE, "--pipeline", "sweep", "--version", "v1"]) == 0
    assert _posts(requests, "/pipelines/upload")


def test_a_package_is_judged_by_its_own_ir(api_at, tmp_path, caplog):
    """An old compiled package (PipelineTaskFinalStatus) is refused by a 2.5 server."""
    from kfp import compiler

    from helpers_ir_pipelines import needs_kfp_2_14
    from pipeline.__main__ import main

    package = tmp_path / "old.yaml"
    compiler.Compiler().compile(needs_kfp_2_14, str(package))
    host, requests = api_at("2.5.0")
    assert main(["upload", "--host", host, "--package", str(package), "--version", "v1"]) == 2
    assert _created(requests) == [] and "needs KFP backend 2.14.0 or later, the API" in caplog.text


# ---- every request bounded: an API that accepts and never answers -----------------------


@pytest.fixture
def silent_api(isolated):
    """A TCP server that accepts every connection and never answers."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    held, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", held
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_an_api_that_never_answers_fails_submit_within_the_timeout(silent_api, caplog):
    import time

    from pipeline.__main__ import main

    host, held = silent_api
    start = time.monotonic()
    rc = main(["submit", "--host", host, "--image", IMAGE, "--timeout", "1", *SMOKE])
    elapsed = time.monotonic() - start
    assert rc == 1 and held and elapsed < 5, elapsed  # kfp.Client's own healthz would wait forever
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line == f"the KFP API at {host} did not answer within 1s (ReadTimeoutError): check --host, or raise --timeout"


class _HangingApi(_KfpApi):
    """Answers the first `answer` healthz requests, then holds every request unanswered
    until `release` is set."""

    answer = 2
    release: threading.Event

    def do_GET(self) -> None:  # noqa: N802
        healthz = [r for r in self.requests if r["path"] == "/apis/v2beta1/healthz"]
        if urlsplit(self.path).path == "/apis/v2beta1/healthz" and len(healthz) >= self.answer:
            self._record()
            self.release.wait(30)
            return
        super().do_GET()


def test_the_version_preflight_is_bounded_and_nothing_is_created(isolated, caplog):
    """kfp.Client's constructor and connect() read healthz (answered); the server-version
    preflight reads it raw a third time (never answered): submit stops there, in time."""
    import time

    from pipeline.__main__ import main

    release = threading.Event()
    handler = type("Handler", (_HangingApi,), {"requests": [], "pipelines": [], "versions": [], "release": release})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        start = time.monotonic()
        rc = main(["upload", "--host", host, "--image", IMAGE, "--version", "v1", "--timeout", "1"])
        elapsed = time.monotonic() - start
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    assert rc == 1 and elapsed < 5, elapsed
    assert [r["path"] for r in handler.requests].count("/apis/v2beta1/healthz") >= 3
    assert not [r for r in handler.requests if r["method"] == "POST"]
    assert any(f"the KFP API at {host} did not answer within 1s" in r.getMessage() for r in caplog.records)


def test_timeout_must_be_positive_seconds(isolated, capsys):
    from pipeline.__main__ import main

    for bad in ("0", "-1", "nan", "soon"):
        with pytest.raises(SystemExit):
            main(["submit", "--host", "http://127.0.0.1:9", "--timeout", bad])
        assert "--timeout: expected seconds in (0, 86400]" in capsys.readouterr().err
