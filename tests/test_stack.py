"""MLflow as it runs in a cluster, for real: `mlflow server` on a PostgreSQL backend store
with an S3 artifact store (moto's S3 server), all on 127.0.0.1 (fixtures in conftest.py),
in both artifact modes:

- proxied: `--artifacts-destination s3://...`; clients see `mlflow-artifacts:` URIs and
  have no S3 credentials at all (they are removed from their environment);
- direct: `--default-artifact-root s3://... --no-serve-artifacts`; clients write to the
  bucket with their own credentials and endpoint (what the pipeline maps from a Secret).

Against each: the README's smoke job and the kfp.local DAG (artifacts land in the bucket,
the version registers, its alias resolves, `srgan upscale --model models:/...@candidate`
loads it back through S3); concurrent registrations; and the fail-fast preflight
(srcore.tracking_server) for an unreachable or too old server and an unusable bucket.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from conftest import free_port, without_s3_env
from helpers_stack import check_stack_outcome, client_env, run_cmd
from srcore import tracking_server
from srcore.config import Config

REPO = Path(__file__).resolve().parents[1]


# ---- the README smoke job and the kfp.local DAG, in both modes ------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("mode", ["direct", "proxied"])
def test_smoke_job_against_postgres_and_s3(mlflow_stack, mode, tmp_path):
    """The README's job (`srgan main --preset smoke --source demo`, what `mlflow run . -P
    preset=smoke -P source=demo` runs) against the stack."""
    stack = mlflow_stack(mode)
    tag = uuid.uuid4().hex[:8]
    experiment, model_name = f"stack-smoke-{mode}-{tag}", f"srgan-stack-smoke-{mode}-{tag}"
    work = tmp_path / "work"
    run_cmd([sys.executable, "-m", "srcore", "main", "--preset", "smoke", "--source", "demo",
          "--experiment-name", experiment, "--registered-model-name", model_name,
          "--data-dir", str(work / "data"), "--model-dir", str(work / "model"), "--eval-dir", str(work / "eval")],
         client_env(stack, tmp_path), tmp_path)
    (version,) = MlflowClient(stack["uri"]).search_model_versions(f"name = '{model_name}'")
    check_stack_outcome(stack, experiment, model_name, version.version, tmp_path)


@pytest.mark.slow
def test_kfp_local_dag_against_postgres_and_direct_s3(mlflow_stack, tmp_path):
    """`python -m pipeline run-local` (kfp.local SubprocessRunner) with the tracking URI as
    a pipeline parameter, as on a cluster; the components get the S3 credentials from
    their environment (on a cluster: the Secret SRGAN_S3_SECRET). The proxied mode's DAG
    run is tests/test_pipeline_local.py's (its `mlflow_server` is the proxied stack), which
    checks the same. The candidate's upscale through S3 is the smoke job's, per mode."""
    mode = "direct"
    stack = mlflow_stack(mode)
    tag = uuid.uuid4().hex[:8]
    experiment, model_name = f"stack-kfp-{mode}-{tag}", f"srgan-stack-kfp-{mode}-{tag}"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = client_env(stack, tmp)
    del env["MLFLOW_TRACKING_URI"]  # the pipeline parameter carries it, as on a cluster
    proc = run_cmd([sys.executable, "-m", "pipeline", "run-local", "--preset", "smoke", "--root", str(tmp_path / "run"),
                 "-p", "source=demo", "-p", f"mlflow_tracking_uri={stack['uri']}", "-p", f"experiment_name={experiment}",
                 "-p", f"registered_model_name={model_name}"], env, REPO, timeout=2400)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["model_uri"].startswith("models:/m-")
    client = MlflowClient(stack["uri"])
    (parent,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                                   "tags.`srgan.step` = 'pipeline'")
    assert parent.info.status == "FINISHED"
    check_stack_outcome(stack, experiment, model_name, result["model_version"], tmp_path, upscale=False)


# ---- concurrent registrations (sweep trials) -------------------------------------------------

class _Identity(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def test_concurrent_registrations_one_version_per_model_and_one_champion(proxied_stack):
    """Sweep trials finishing together: 12 registrations at once (three model URIs, each
    registered four times, as retried tasks would) against the PostgreSQL-backed server
    (unlike SQLite, PostgreSQL really runs the writes concurrently). Exactly one version
    per model URI, every caller gets that version, and one champion among them."""
    from srcore.registry import register

    with mlflow.start_run():
        uris = [mlflow.pyfunc.log_model(name=f"trial{i}", python_model=_Identity(), pip_requirements=["mlflow"]).model_uri
                for i in range(3)]
    scores = {uris[0]: 25.0, uris[1]: 27.0, uris[2]: 26.0}  # all beat bicubic (20); uris[1] is the best
    cfg = Config(registered_model_name=f"srgan-stack-sweep-{uuid.uuid4().hex[:8]}")
    jobs = [u for u in uris for _ in range(4)]
    barrier = threading.Barrier(len(jobs))

    def one(uri: str):
        barrier.wait(30)
        return register(cfg, uri, {"test/psnr_y": scores[uri], "test/bicubic/psnr_y": 20.0,
                                   "data_manifest_hash": "split-a"})

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(one, jobs))

    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{cfg.registered_model_name}'")
    by_uri: dict[str, list[str]] = {}
    for v in versions:
        by_uri.setdefault(v.tags.get("srgan.model_uri") or v.source, []).append(str(v.version))
    assert {u: len(vs) for u, vs in by_uri.items()} == {u: 1 for u in uris}, by_uri
    for uri, result in zip(jobs, results):
        assert result.version == by_uri[uri][0]  # every caller got the one version of its URI
    # one champion: the alias names one version (search results carry no aliases in MLflow 3.17)
    holder = str(client.get_model_version_by_alias(cfg.registered_model_name, "champion").version)
    assert holder in {vs[0] for vs in by_uri.values()}
    assert any(r.champion and r.version == holder for r in results)


# ---- fail fast: unreachable or old server, unusable bucket -------------------------------------

def test_unreachable_tracking_server_fails_in_seconds_naming_the_uri(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**without_s3_env(os.environ), "MLFLOW_TRACKING_URI": uri}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "srcore", "main", "--preset", "smoke", "--source", "demo",
                           "--data-dir", str(tmp_path / "data")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=240)
    took = time.monotonic() - start
    assert proc.returncode != 0
    assert took < 60, f"took {took:.0f}s"  # MLflow's own retries take ~4 minutes
    assert f"MLflow tracking server {uri} is unreachable" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing was ingested first


class _OldServer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        body = b"2.22.1" if self.path == "/version" else b"{}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_server_version_checked_at_connect(mlflow_server, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    assert tracking_server.check_server(mlflow_server) == mlflow.__version__  # the real server says its version

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OldServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{httpd.server_address[1]}"
        with pytest.raises(tracking_server.TrackingServerError) as err:
            tracking_server.check_server(uri)
    finally:
        httpd.shutdown()
    message = str(err.value)
    assert uri in message and "2.22.1" in message and f">= {tracking_server.MIN_SERVER_VERSION}" in message
    assert "\n" not in message


def test_direct_s3_without_credentials_or_bucket_fails_before_work(direct_stack, monkeypatch, tmp_path):
    client = MlflowClient()
    exp = client.get_experiment(client.create_experiment(f"stack-preflight-{uuid.uuid4().hex[:8]}"))
    assert exp.artifact_location.startswith("s3://")
    tracking_server.check_artifact_store(exp.artifact_location)  # credentials and endpoint set: fine

    missing = f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/x"
    with pytest.raises(tracking_server.TrackingServerError, match="no-such-bucket.*does not exist"):
        tracking_server.check_artifact_store(missing)

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup off loopback
    with pytest.raises(tracking_server.TrackingServerError, match="no S3 credentials.*AWS_ACCESS_KEY_ID"):
        tracking_server.check_artifact_store(exp.artifact_location)

    # the whole step: ingest refuses in seconds, before it reads or writes anything (it used
    # to fail at its first log_artifact, after the whole ingest)
    env = {**without_s3_env(os.environ), "MLFLOW_TRACKING_URI": direct_stack["uri"],
           "MLFLOW_S3_ENDPOINT_URL": direct_stack["s3"]["endpoint"], "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
           "AWS_CONFIG_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "srcore", "ingest", "--source", "demo", "--experiment-name",
                           exp.name, "--data-dir", str(tmp_path / "data")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and time.monotonic() - start < 60
    assert "no S3 credentials" in proc.stderr and exp.artifact_location in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "data").exists()


# ---- the pipeline maps the S3 credentials from a Secret with configurable key names ---------

def test_compiled_pipelines_map_s3_secret_with_configured_keys(tmp_path, monkeypatch):
    import yaml

    from pipeline.run import compile_pipeline
    from pipeline.sweep import compile_sweep

    monkeypatch.setenv("SRGAN_S3_SECRET", "minio-creds")
    monkeypatch.setenv("SRGAN_S3_SECRET_KEYS",
                       "AWS_ACCESS_KEY_ID=accesskey,AWS_SECRET_ACCESS_KEY=secretkey,MLFLOW_S3_ENDPOINT_URL=endpoint")
    monkeypatch.setenv("SRGAN_MLFLOW_SECRET_KEYS", "MLFLOW_TRACKING_USERNAME=user,MLFLOW_TRACKING_PASSWORD=pass")
    for compile_fn, name in ((compile_pipeline, "main"), (compile_sweep, "sweep")):
        path = compile_fn(tmp_path / f"{name}.yaml", image="registry.example/srgan:test")
        docs = list(yaml.safe_load_all(path.read_text()))
        executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        assert executors
        for executor, platform in executors.items():
            if "createpvc" in executor or "deletepvc" in executor:
                continue
            secrets = {s["secretName"]: {(m["secretKey"], m["envVar"]) for m in s["keyToEnv"]}
                       for s in platform["secretAsEnv"]}
            assert secrets["minio-creds"] == {("accesskey", "AWS_ACCESS_KEY_ID"),
                                              ("secretkey", "AWS_SECRET_ACCESS_KEY"),
                                              ("endpoint", "MLFLOW_S3_ENDPOINT_URL")}, (name, executor)
            assert secrets["mlflow-credentials"] == {("user", "MLFLOW_TRACKING_USERNAME"),
                                                     ("pass", "MLFLOW_TRACKING_PASSWORD")}
        assert "secretkey" not in docs[0].get("root", {}).get("inputDefinitions", {}).get("parameters", {})


def test_bad_secret_keys_setting_is_refused_in_one_line(monkeypatch):
    from pipeline.dag import ClusterSettings

    monkeypatch.setenv("SRGAN_S3_SECRET_KEYS", "AWS_ACCESS_KEY_ID")
    with pytest.raises(ValueError, match="SRGAN_S3_SECRET_KEYS.*ENV_VAR=secret-key"):
        ClusterSettings.from_env()
