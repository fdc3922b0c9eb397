"""Shared fixtures: the MLflow stack as on a cluster (PostgreSQL, S3 from moto, `mlflow server`
in both artifact modes), the real CelebA faces when present, and isolation of MLflow state per test."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CELEBA = REPO.parent / "shared" / "data" / "celeba"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 240.0, proc: subprocess.Popen | None = None) -> None:
    import requests

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process serving {url} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


@contextlib.contextmanager
def models_serve(model: str, cwd: Path, env: dict | None = None):
    """A real `mlflow models serve` of `model` on 127.0.0.1 (one worker, this venv); yields
    (url, process). The server's log is printed when the block fails; the server always stops."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = cwd / "serve.log"
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model), "--env-manager", "local",
           "--host", "127.0.0.1", "-p", str(port), "-w", "1"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env or dict(os.environ))
    try:
        wait_http(f"{url}/ping", timeout=180, proc=proc)
        yield url, proc
    except BaseException:
        print(log_path.read_text()[-3000:])
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)


# ---- the MLflow stack as it runs in a cluster: PostgreSQL + S3 (moto) + `mlflow server` --------

S3_BUCKET = "srgan-mlflow"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "srgan-test", "AWS_SECRET_ACCESS_KEY": "srgan-test-secret",
                  "AWS_DEFAULT_REGION": "us-east-1"}
S3_ENV = (*S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def _stop(proc: subprocess.Popen, timeout: float = 20, group: bool = False, sig: int = signal.SIGTERM) -> None:
    """Stop `proc` (with `group`: its whole process group, e.g. `mlflow server` and its uvicorn)."""
    def send(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        except ProcessLookupError:
            pass

    send(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(timeout)


def _pg_bin() -> Path:
    """PostgreSQL's server binaries: Debian keeps them in /usr/lib/postgresql/<major>/bin."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError("PostgreSQL not found (no initdb): `apt-get install -y postgresql` (.ci/run does this)")


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 (data and socket in a temp folder);
    yields a function making a fresh database and returning its SQLAlchemy URI.
    initdb refuses root, so as root the server runs as the `postgres` user."""
    import psycopg  # psycopg 3: SQLAlchemy 2.1's driver for plain `postgresql://` URIs, as operators write them

    bindir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="srgan-pg-"))  # not under pytest's 0700 root: postgres must enter it
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
    log = open(root / "postgres.log", "w")
    os.chmod(root / "postgres.log", 0o666)
    proc = subprocess.Popen([*as_user, str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                             "-h", "127.0.0.1", "-k", str(root), "-c", "fsync=off", "-c", "full_page_writes=off"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    dsn = dict(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
    deadline = time.time() + 60
    while True:
        try:
            psycopg.connect(connect_timeout=2, **dsn).close()
            break
        except psycopg.OperationalError:
            if proc.poll() is not None or time.time() > deadline:
                _stop(proc, group=True)
                raise RuntimeError(f"PostgreSQL did not start; log:\n{(root / 'postgres.log').read_text()[-3000:]}")
            time.sleep(0.3)

    def database(name: str) -> str:
        with psycopg.connect(autocommit=True, **dsn) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{port}/{name}"

    with psycopg.connect(**dsn) as conn:
        database.version = conn.info.server_version  # e.g. 150014
    yield database
    _stop(proc, group=True, sig=signal.SIGINT)  # PostgreSQL's "fast" shutdown: no waiting for clients
    log.close()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server mode (a real HTTP S3 API) on 127.0.0.1 with bucket S3_BUCKET; yields
    {"endpoint", "bucket", "client" (boto3), "env" (what a client of the bucket sets)}."""
    import boto3

    root = tmp_path_factory.mktemp("moto")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(root / "moto.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        wait_http(f"{endpoint}/moto-api/", timeout=60, proc=proc)
    except Exception:
        _stop(proc)
        raise RuntimeError(f"moto server did not start; log:\n{(root / 'moto.log').read_text()[-3000:]}")
    env = {**S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": endpoint}
    client = boto3.client("s3", endpoint_url=endpoint, region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    client.create_bucket(Bucket=S3_BUCKET)
    yield {"endpoint": endpoint, "bucket": S3_BUCKET, "client": client, "env": env}
    _stop(proc)


def s3_keys(s3: dict, prefix: str) -> list[str]:
    """Every object key under `prefix` in the test bucket."""
    keys: list[str] = []
    for page in s3["client"].get_paginator("list_objects_v2").paginate(Bucket=s3["bucket"], Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def without_s3_env(env: dict) -> dict:
    """`env` without S3 credentials: a client of a proxying server needs none."""
    return {k: v for k, v in env.items() if k not in S3_ENV}


def _start_mlflow_server(root: Path, backend: str, artifact_args: list[str], env: dict) -> tuple[str, subprocess.Popen]:
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", backend, *artifact_args, "--workers", "1",
           "--allowed-hosts", f"127.0.0.1:{port},localhost:{port},127.0.0.1,localhost"]
    # no GenAI job runners: they are four more processes (~1 GB) per server that this project never uses
    env = {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(root / "server.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", proc=proc)
    except Exception:
        _stop(proc, group=True)
        raise RuntimeError(f"mlflow server failed to start; log:\n{(root / 'server.log').read_text()[-3000:]}")
    return uri, proc


@pytest.fixture(scope="session")
def mlflow_stack(tmp_path_factory, postgres, s3_server):
    """Start `mlflow server`s on the shared PostgreSQL and S3, one database each:
    `mlflow_stack("proxied")` serves artifacts itself (`--artifacts-destination s3://...`,
    clients see `mlflow-artifacts:` URIs and need no S3 credentials),
    `mlflow_stack("direct")` only hands out `s3://` locations (`--default-artifact-root
    s3://... --no-serve-artifacts`; clients write to S3 with their own credentials).
    Returns {"uri", "mode", "prefix" (of its artifacts in the bucket), "s3", "db"}; one
    server per mode per session."""
    servers: dict[str, dict] = {}
    procs: list[subprocess.Popen] = []

    def start(mode: str) -> dict:
        if mode in servers:
            return servers[mode]
        root = tmp_path_factory.mktemp(f"mlflow-{mode}")
        prefix = f"mlflow-{mode}"
        location = f"s3://{s3_server['bucket']}/{prefix}"
        artifact_args = {"proxied": ["--artifacts-destination", location],
                         "direct": ["--default-artifact-root", location, "--no-serve-artifacts"]}[mode]
        db = postgres(f"mlflow_{mode}")
        env = {**without_s3_env(os.environ), **s3_server["env"]}  # the server's own S3 access
        uri, proc = _start_mlflow_server(root, db, artifact_args, env)
        procs.append(proc)
        servers[mode] = {"uri": uri, "mode": mode, "prefix": prefix, "s3": s3_server, "db": db}
        return servers[mode]

    yield start
    for proc in procs:
        _stop(proc, 15, group=True)


@pytest.fixture(scope="session")
def mlflow_server(mlflow_stack):
    """The shared real `mlflow server` of most tests: PostgreSQL backend store, artifacts
    proxied by the server into S3 (moto), as on a cluster; yields its URI."""
    return mlflow_stack("proxied")["uri"]


@pytest.fixture
def proxied_stack(mlflow_stack, monkeypatch):
    """This process as a client of the proxying server, without S3 credentials."""
    stack = mlflow_stack("proxied")
    for var in S3_ENV:
        monkeypatch.delenv(var, raising=False)
    _use_tracking_store(stack["uri"], monkeypatch)
    yield stack
    _end_runs()


@pytest.fixture
def direct_stack(mlflow_stack, monkeypatch):
    """This process as a client of the direct-S3 server: S3 credentials and endpoint set."""
    stack = mlflow_stack("direct")
    for var in S3_ENV:
        monkeypatch.delenv(var, raising=False)
    for key, value in stack["s3"]["env"].items():
        monkeypatch.setenv(key, value)
    _use_tracking_store(stack["uri"], monkeypatch)
    yield stack
    _end_runs()


def _use_tracking_store(uri: str, monkeypatch):
    """Point MLflow (this process and subprocesses) at `uri`, with no run or experiment
    carried over from an earlier test."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    # set_experiment caches its choice across stores; the default experiment exists in all
    mlflow.set_experiment(experiment_id="0")
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "SRGAN_PARENT_RUN_ID"):
        monkeypatch.delenv(var, raising=False)  # set_experiment exports MLFLOW_EXPERIMENT_ID


def _end_runs():
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A fresh SQLite store for one test (no server)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _use_tracking_store(uri, monkeypatch)
    yield uri
    _end_runs()


@pytest.fixture
def server_tracking(mlflow_server, monkeypatch):
    """The shared real server for one test."""
    _use_tracking_store(mlflow_server, monkeypatch)
    yield mlflow_server
    _end_runs()


@pytest.fixture(autouse=True)
def _tracking_uri_restored_after_each_test():
    """`mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI: a test that calls it (or
    runs code that does) must not point every later test at its server."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != before:
        import mlflow

        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
            mlflow.set_tracking_uri(None)  # back to the default resolution
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            mlflow.set_tracking_uri(before)


@pytest.fixture(autouse=True)
def _float32_policy_after_each_test():
    """A test (or the code it runs) that leaves a mixed Keras dtype policy behind fails here,
    by name, instead of silently making every later test build bf16 models."""
    yield
    keras = sys.modules.get("keras")  # no Keras import for tests that never load it
    if keras is not None and keras.mixed_precision.global_policy().name != "float32":
        leaked = keras.mixed_precision.global_policy().name
        keras.mixed_precision.set_global_policy("float32")
        pytest.fail(f"the global Keras dtype policy was left at {leaked}: build models under "
                    "srcore.models.dtype_policy instead of setting it process-wide")


@pytest.fixture(scope="session")
def celeba_dir() -> Path:
    if not CELEBA.is_dir() or not any(CELEBA.glob("*.jpg")):
        pytest.skip(f"real CelebA faces not found at {CELEBA} (only on the team's machines)")
    return CELEBA


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory) -> Path:
    """An ingest output of the offline demo source with the smoke preset."""
    from srcore.config import build_config
    from srcore.data.ingest import ingest

    out = tmp_path_factory.mktemp("smoke-data") / "data"
    ingest(build_config("smoke", overrides={"data_dir": str(out)}))
    return out


@pytest.fixture(scope="session")
def tiny_generator(tmp_path_factory) -> Path:
    """A tiny untrained generator saved as .keras (for evaluate/upscale/registry tests)."""
    from srcore.models import build_generator

    path = tmp_path_factory.mktemp("tiny-gen") / "generator.keras"
    build_generator(filters=8, blocks=1, scale=4).save(path)
    return path
