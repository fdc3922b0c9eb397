"""KServe deploy (srcore.deploy): the manifest against KServe's published CRD schema
(vendored excerpt), its container command line against srcore.server's own parser, the
per-version export the pipeline's deploy branch writes, and the create / patch /
wait-for-Ready calls of the real Kubernetes client against a loopback API server that
records them."""

from __future__ import annotations

import copy
import json
import math
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
import yaml

from srcore import deploy
from srcore.config import build_config

SCHEMA_FILE = Path(__file__).parent / "data" / "kserve_inferenceservice_v1beta1_schema.yaml"
NS, NAME = "kubeflow-user", "srgan-test"
ISVC_PATH = f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices"


def _strict(schema: dict) -> dict:
    """The excerpt with additionalProperties: false wherever the CRD lists properties:
    a field the API server would prune silently is an error here."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@pytest.fixture(scope="module")
def validator():
    schema = _strict(yaml.safe_load(SCHEMA_FILE.read_text()))
    return jsonschema.Draft7Validator(schema)


IMAGE = "registry.example.com/srgan-celeba:abc123"


def _cfg(**kw):
    return build_config("smoke", overrides={"deploy_namespace": NS, "deploy_service_name": NAME,
                                            "deploy_image": IMAGE, **kw})


def _container(manifest: dict) -> dict:
    [container] = manifest["spec"]["predictor"]["containers"]
    return container


@pytest.mark.parametrize("overrides", [{}, {"deploy_gpus": 1, "deploy_service_account": "kserve-s3"},
                                       {"deploy_concurrency": 0}])
def test_manifest_passes_the_crd_schema(validator, overrides):
    uri = "s3://bucket/serving/srgan-celeba/3"
    manifest = deploy.build_manifest(_cfg(**overrides), uri, NS, {"name": "srgan-celeba", "version": "3"})
    errors = [e.message for e in validator.iter_errors(manifest)]
    assert not errors, errors
    predictor = manifest["spec"]["predictor"]
    container = _container(manifest)
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    # KServe's storage initializer reads a custom container's model location from STORAGE_URI
    assert container["name"] == "kserve-container" and container["image"] == IMAGE
    assert {"name": "STORAGE_URI", "value": uri} in container["env"]
    assert container["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{NAME}"
    assert "model" not in predictor
    seconds = math.ceil(_cfg().serve_max_seconds)  # the server's own deadline answers first
    assert predictor["timeout"] > seconds
    assert predictor.get("serviceAccountName") == overrides.get("deploy_service_account")
    gpus = overrides.get("deploy_gpus", 0)
    assert container["resources"]["limits"].get("nvidia.com/gpu") == (str(gpus) if gpus else None)
    assert ("containerConcurrency" in predictor) == (overrides.get("deploy_concurrency", 2) > 0)
    patch = deploy._patch_body(manifest)
    assert patch["spec"]["predictor"]["model"] is None  # an older TF Serving predictor is removed
    assert patch["spec"]["predictor"]["containers"] == predictor["containers"]


def test_the_container_runs_srcore_server_with_the_configs_limits():
    from srcore.server import build_parser

    cfg = _cfg(serve_max_seconds=12.5, serve_max_concurrent=3, serve_max_body_bytes=1234)
    container = _container(deploy.build_manifest(cfg, "pvc://srgan-data/serving/m/1", NS))
    assert container["command"] == ["python", "-m", "srcore.server"]
    args = build_parser().parse_args(container["args"])  # the real server's parser accepts them
    assert (args.model, args.name, args.host, args.port) == ("/mnt/models", NAME, "0.0.0.0", 8080)
    assert (args.serve_max_seconds, args.serve_max_concurrent, args.serve_max_body_bytes) == (12.5, 3, 1234)
    assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]


def test_schema_check_catches_misspelt_and_missing_fields(validator):
    manifest = deploy.build_manifest(_cfg(), "gs://b/savedmodel/m/1", NS)
    bad = copy.deepcopy(manifest)
    _container(bad)["enviroment"] = _container(bad).pop("env")
    assert any("enviroment" in e.message for e in validator.iter_errors(bad))
    bad = copy.deepcopy(manifest)
    del _container(bad)["name"]
    assert any("'name' is a required property" in e.message for e in validator.iter_errors(bad))
    bad = copy.deepcopy(manifest)
    bad["spec"]["predictor"]["containerConcurrency"] = "2"
    assert list(validator.iter_errors(bad))
    bad = copy.deepcopy(manifest)
    bad["spec"]["predictor"]["serviceAccount_name"] = "sa"
    assert list(validator.iter_errors(bad))


def test_bad_names_storage_uris_and_no_image_are_refused():
    with pytest.raises(ValueError, match="deploy_service_name"):
        deploy.build_manifest(_cfg(deploy_service_name="SRGAN_celeba"), "s3://b/m", NS)
    for uri in ("mlflow-artifacts:/1/abc/artifacts/savedmodel", "/local/path", "file:///tmp/m"):
        with pytest.raises(ValueError, match="deploy_storage_uri"):
            deploy.build_manifest(_cfg(), uri, NS)
    assert deploy.check_storage_uri("pvc://srgan-data/serving/srgan-celeba/3")
    with pytest.raises(ValueError, match="deploy_image"):
        deploy.build_manifest(_cfg(deploy_image=""), "s3://b/m", NS)


def test_export_writes_one_folder_per_version_where_kserve_reads_it(tmp_path):
    from srcore.export import export_step
    from srcore.models import build_generator
    from srcore.server import load_model

    gen = tmp_path / "g.keras"
    build_generator(4, 1, 4).save(gen)
    volume = tmp_path / "volume"
    uris = [export_step(_cfg(), str(gen), model_version=v, volume_root=str(volume), volume_claim="srgan-data")
            for v in ("3", "4")]
    assert [u["storage_uri"] for u in uris] == ["pvc://srgan-data/serving/srgan-celeba/3",
                                                "pvc://srgan-data/serving/srgan-celeba/4"]
    for version in ("3", "4"):  # what the storage initializer mounts at /mnt/models, loaded as the server does
        assert load_model(str(volume / "serving" / "srgan-celeba" / version)).scale_factor == 4
    custom = export_step(_cfg(deploy_storage_uri="pvc://srgan-data/models"), str(gen), model_version="5",
                         volume_root=str(volume), volume_claim="srgan-data")
    assert custom["storage_uri"] == "pvc://srgan-data/models/srgan-celeba/5"
    assert (volume / "models" / "srgan-celeba" / "5" / "saved_model.pb").is_file()
    with pytest.raises(ValueError, match="names claim 'other'"):
        export_step(_cfg(deploy_storage_uri="pvc://other/models"), str(gen), model_version="5",
                    volume_root=str(volume), volume_claim="srgan-data")


# ---- loopback Kubernetes API -----------------------------------------------------------


class FakeKServe:
    """Just enough of the API server + KServe controller for one InferenceService:
    GET/POST/PATCH (JSON merge patch); the controller reports Ready for a generation
    after `ready_after` polls of it (never, when None)."""

    def __init__(self, ready_after: int | None = 1):
        self.requests: list[dict] = []
        self.obj: dict | None = None
        self.ready_after = ready_after
        self.polls = 0
        self.lock = threading.Lock()

    def handle(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict]:
        data = json.loads(body) if body else None
        with self.lock:
            self.requests.append({"method": method, "path": path, "content_type": headers.get("Content-Type"),
                                  "body": data})
            item = f"{ISVC_PATH}/{NAME}"
            if method == "GET" and path == item:
                if self.obj is None:
                    return 404, {"kind": "Status", "code": 404, "reason": "NotFound"}
                self.polls += 1
                if self.ready_after is not None and self.polls > self.ready_after:
                    gen = self.obj["metadata"]["generation"]
                    self.obj["status"] = {"observedGeneration": gen, "url": f"http://{NAME}.{NS}.example.com",
                                          "conditions": [{"type": "Ready", "status": "True"}]}
                return 200, self.obj
            if method == "POST" and path == ISVC_PATH:
                self.obj = {**data, "metadata": {**data["metadata"], "generation": 1, "resourceVersion": "1"}}
                self.polls = 0
                return 201, self.obj
            if method == "PATCH" and path == item:
                old_spec = copy.deepcopy(self.obj["spec"])
                _merge(self.obj, data)
                if self.obj["spec"] != old_spec:
                    self.obj["metadata"]["generation"] += 1
                    self.polls = 0  # the controller reconciles the new generation
                return 200, self.obj
        return 405, {"kind": "Status", "code": 405}


def _merge(target: dict, patch: dict) -> None:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


@pytest.fixture
def kserve():
    fake = FakeKServe()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            length = int(self.headers.get("Content-Length") or 0)
            status, payload = fake.handle(self.command, self.path.split("?")[0], self.headers, self.rfile.read(length))
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_PATCH = _serve

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()


def _api_client(url: str):
    from kubernetes import client

    conf = client.Configuration()
    conf.host = url
    return client.ApiClient(conf)


def test_create_then_patch_and_wait_for_the_new_generation(kserve, validator):
    api = _api_client(kserve.url)
    first = deploy.deploy(_cfg(), "s3://bucket/run1/savedmodel", {"name": "m", "version": "1"}, api, poll_s=0.01)
    assert (first.action, first.generation) == ("created", 1)
    assert first.url == f"http://{NAME}.{NS}.example.com"
    methods = [(r["method"], r["path"]) for r in kserve.requests]
    assert methods[:2] == [("GET", f"{ISVC_PATH}/{NAME}"), ("POST", ISVC_PATH)]
    created = kserve.requests[1]["body"]
    assert not list(validator.iter_errors(created))
    assert {"name": "STORAGE_URI", "value": "s3://bucket/run1/savedmodel"} in _container(created)["env"]

    kserve.requests.clear()
    second = deploy.deploy(_cfg(deploy_gpus=1), "s3://bucket/run2/savedmodel", {"name": "m", "version": "2"}, api,
                           poll_s=0.01)
    assert (second.action, second.generation) == ("patched", 2)
    patch = next(r for r in kserve.requests if r["method"] == "PATCH")
    assert patch["content_type"] == "application/merge-patch+json"
    assert {"name": "STORAGE_URI", "value": "s3://bucket/run2/savedmodel"} in \
        patch["body"]["spec"]["predictor"]["containers"][0]["env"]
    # the stale Ready of generation 1 did not count: it polled until generation 2 was Ready
    assert kserve.polls >= 2 and kserve.obj["status"]["observedGeneration"] == 2
    assert _container(kserve.obj)["resources"]["limits"]["nvidia.com/gpu"] == "1"

    deploy.deploy(_cfg(), "s3://bucket/run2/savedmodel", {"name": "m", "version": "2"}, api, poll_s=0.01)
    live = kserve.obj["spec"]["predictor"]
    assert "nvidia.com/gpu" not in _container(kserve.obj)["resources"]["limits"] and "tolerations" not in live


def test_not_ready_times_out_with_a_reason(kserve):
    kserve.ready_after = None
    cfg = _cfg(deploy_wait_seconds=1)
    with pytest.raises(deploy.DeployError, match="not Ready after 1s.*kubectl -n kubeflow-user describe"):
        deploy.deploy(cfg, "s3://bucket/savedmodel", None, _api_client(kserve.url), poll_s=0.05)


def test_deploy_step_tags_the_registered_version(kserve, tracking):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.create_registered_model("srgan-deploy-test")
    mv = client.create_model_version("srgan-deploy-test", "s3://bucket/some/model")
    client.set_registered_model_alias("srgan-deploy-test", "champion", mv.version)
    cfg = _cfg(registered_model_name="srgan-deploy-test", deploy_storage_uri="pvc://srgan-data/serving")

    out = deploy.deploy_step(cfg, api_client=_api_client(kserve.url), poll_s=0.01)
    assert out["registered_model_version"] == str(mv.version) and out["url"].startswith("http://")
    tags = client.get_model_version("srgan-deploy-test", mv.version).tags
    assert tags["deploy.endpoint"] == out["url"]
    assert tags["deploy.inference_service"] == f"{NS}/{NAME}"
    assert tags["deploy.storage_uri"] == f"pvc://srgan-data/serving/srgan-deploy-test/{mv.version}"
    assert kserve.requests[1]["body"]["metadata"]["labels"]["srgan.registered-model-version"] == str(mv.version)
    assert _container(kserve.requests[1]["body"])["image"] == IMAGE  # the operator's deploy_image wins

    # the pipeline passes its CPU image and train's CUDA image: a GPU predictor gets the CUDA one
    for gpus, expected in ((1, "example.org/srgan:cuda"), (0, "example.org/srgan:cpu")):
        kserve.requests.clear()
        deploy.deploy_step(_cfg(registered_model_name="srgan-deploy-test", deploy_storage_uri="pvc://srgan-data/serving",
                                deploy_image="", deploy_gpus=gpus),
                           image="example.org/srgan:cpu", gpu_image="example.org/srgan:cuda",
                           api_client=_api_client(kserve.url), poll_s=0.01)
        patch = next(r for r in kserve.requests if r["method"] == "PATCH")
        assert patch["body"]["spec"]["predictor"]["containers"][0]["image"] == expected


def test_main_pipeline_deploys_only_a_new_champion_when_asked(tmp_path):
    from kfp import compiler

    from pipeline.dag import build_pipeline

    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(build_pipeline(image="example.org/srgan:abc", cluster=True), str(out))
    spec = next(yaml.safe_load_all(out.read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["deploy"]["defaultValue"] == "false"  # off by default: clusters without KServe
    assert {"deploy_namespace", "deploy_service_name"} <= set(params)

    chain = []  # the conditions from the root down to the deploy task

    def find(dag, conditions):
        for name, task in dag["tasks"].items():
            cond = task.get("triggerPolicy", {}).get("condition")
            comp = spec["components"][task["componentRef"]["name"]]
            if name == "deploy":
                chain.extend(conditions)
                return task
            if "dag" in comp:
                found = find(comp["dag"], conditions + ([cond] if cond else []))
                if found:
                    return found
        return None

    task = find(spec["root"]["dag"], [])
    assert task is not None
    assert any("pipelinechannel--deploy'] == 'true'" in c for c in chain)
    assert any("pipelinechannel--register-champion'] == true" in c for c in chain)
    inputs = task["inputs"]["parameters"]
    assert inputs["model_version"]["componentInputParameter"].endswith("register-version")
    assert inputs["namespace"]["componentInputParameter"].endswith("deploy_namespace")
    # the version's SavedModel comes from the export task beside it, the predictor image is the pipeline's
    assert inputs["storage_uri"]["taskOutputParameter"] == {"outputParameterKey": "storage_uri",
                                                            "producerTask": "export"}
    assert inputs["image"]["runtimeValue"]["constant"] == "example.org/srgan:abc"
    assert inputs["gpu_image"]["runtimeValue"]["constant"] == "example.org/srgan:abc"
    branch = next(c["dag"] for c in spec["components"].values()
                  if "dag" in c and {"deploy", "export"} <= set(c["dag"]["tasks"]))
    export = branch["tasks"]["export"]["inputs"]
    assert export["parameters"]["model_version"]["componentInputParameter"].endswith("register-version")
    assert export["parameters"]["volume_claim"]["componentInputParameter"].endswith("pvc_name")
    assert export["artifacts"]["model"]["componentInputArtifact"].endswith("train-model")


def test_storage_uri_comes_from_the_versions_run_and_must_be_readable_by_kserve(tracking):
    import mlflow
    from mlflow.tracking import MlflowClient

    from srcore.export import log_savedmodel
    from srcore.models import build_generator

    client = MlflowClient()
    client.create_registered_model("srgan-storage-test")
    with mlflow.start_run() as bare:
        pass
    mv = client.create_model_version("srgan-storage-test", "s3://bucket/m", run_id=bare.info.run_id)
    cfg = _cfg(registered_model_name="srgan-storage-test")
    with pytest.raises(ValueError, match="no 'savedmodel/' artifact"):
        deploy.storage_uri_for(cfg, "srgan-storage-test", str(mv.version))

    with mlflow.start_run() as run:
        log_savedmodel(build_generator(4, 1, 4))
    mv = client.create_model_version("srgan-storage-test", "s3://bucket/m", run_id=run.info.run_id)
    # a local file store is no place KServe can download from: the error says what to configure
    with pytest.raises(ValueError, match="deploy_storage_uri"):
        deploy.storage_uri_for(cfg, "srgan-storage-test", str(mv.version))
    assert deploy.storage_uri_for(_cfg(deploy_storage_uri="gs://b/sm/"), "srgan-storage-test", "1") == \
        "gs://b/sm/srgan-storage-test/1"  # one folder per version


def test_export_uploads_one_folder_per_version_to_s3(tmp_path, monkeypatch, s3_server):
    """deploy_storage_uri s3://: the export goes through MLflow's artifact client (boto3) to a
    real S3 protocol server on loopback (moto's server mode), one folder per version, and
    what the storage initializer would download loads as the server loads it."""
    from conftest import s3_keys
    from srcore.export import export_step
    from srcore.models import build_generator
    from srcore.server import load_model

    for key, value in s3_server["env"].items():
        monkeypatch.setenv(key, value)
    s3, bucket = s3_server["client"], s3_server["bucket"]
    prefix = f"deploy-{uuid.uuid4().hex[:8]}/serving"  # the session's bucket is shared: a prefix of its own
    gen = tmp_path / "g.keras"
    build_generator(4, 1, 4).save(gen)
    cfg = _cfg(deploy_storage_uri=f"s3://{bucket}/{prefix}")
    out = export_step(cfg, str(gen), model_version="7")
    assert out["storage_uri"] == f"s3://{bucket}/{prefix}/srgan-celeba/7"
    keys = s3_keys(s3_server, f"{prefix}/")
    assert f"{prefix}/srgan-celeba/7/saved_model.pb" in keys and all(k.startswith(f"{prefix}/srgan-celeba/7/")
                                                                     for k in keys)
    local = tmp_path / "mnt-models"  # what the storage initializer leaves in /mnt/models
    for key in keys:
        target = local / key.removeprefix(f"{prefix}/srgan-celeba/7/")
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(target))
    assert load_model(str(local)).scale_factor == 4
    assert deploy.storage_uri_for(cfg, "srgan-celeba", "7") == out["storage_uri"]  # deploy finds the same


@pytest.fixture
def silent_api_server():
    """A TCP server that accepts every connection and never answers (a hung API server
    or a proxy that holds the request): what a call without a timeout waits on forever."""
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
    yield listener.getsockname()[1], held
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_an_api_server_that_never_answers_fails_within_the_deadline(silent_api_server):
    import time

    port, held = silent_api_server
    api = _api_client(f"http://alice:hunter2@127.0.0.1:{port}")  # credentials in the URL are never printed
    start = time.monotonic()
    with pytest.raises(deploy.DeployError) as err:
        deploy.deploy(_cfg(deploy_wait_seconds=1), "s3://bucket/savedmodel", None, api, poll_s=0.05)
    elapsed = time.monotonic() - start
    message = str(err.value)
    assert held and elapsed < 3, elapsed  # the deadline, urllib3's GET retries included; not forever
    assert "\n" not in message and f"Kubernetes API server http://***@127.0.0.1:{port}" in message, message
    assert "hunter2" not in message and "ReadTimeoutError" in message and "deploy_wait_seconds=1" in message

    # the wait for Ready: a poll that gets no answer is retried until the deadline, then named
    start = time.monotonic()
    with pytest.raises(deploy.DeployError, match=rf"not Ready after 1s: no answer from the Kubernetes API server "
                                                 rf"http://\*\*\*@127\.0\.0\.1:{port} \(ReadTimeoutError\)"):
        deploy.wait_ready(deploy.custom_objects_api(api), NS, NAME, 1, 1, poll_s=0.05)
    assert time.monotonic() - start < 3


def test_api_calls_carry_a_timeout_tuple_the_generated_client_honours():
    from srcore import api_deadline

    # kubernetes' rest.py ignores a bare float: always a (connect, read) pair, retries split the budget
    connect, read = api_deadline.request_timeout(8.0)  # urllib3's default: 1 + 3 tries of a GET
    assert isinstance(connect, float) and abs((connect + read) * 4 - 8.0) < 1e-9
    assert api_deadline.attempts(0) == 1 and api_deadline.attempts(False) == 1 and api_deadline.attempts(2) == 3
