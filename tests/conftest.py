"""Shared fixtures: a real `mlflow server` process, the real CelebA faces when present,
and isolation of MLflow state per test."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
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


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "w")
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--workers", "1",
        "--allowed-hosts", f"127.0.0.1:{port},localhost:{port},127.0.0.1,localhost",
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", proc=proc)
    except Exception:
        proc.kill()
        raise RuntimeError(f"mlflow server failed to start; log:\n{(root / 'server.log').read_text()[-3000:]}")
    yield uri
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


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
