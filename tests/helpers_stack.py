"""The MLflow stack's checks shared by tests/test_stack.py and tests/test_pipeline_local.py:
a client's environment per artifact mode, and what a finished job must have left in the
registry and in the S3 bucket (fixtures: conftest.py's mlflow_stack)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import s3_keys, without_s3_env


def client_env(stack: dict, tmp: Path) -> dict:
    """A client process of `stack`: S3 credentials only in direct mode."""
    env = without_s3_env(os.environ)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "SRGAN_PARENT_RUN_ID"):
        env.pop(var, None)
    if stack["mode"] == "direct":
        env.update(stack["s3"]["env"])
    env.update({"MLFLOW_TRACKING_URI": stack["uri"], "TMPDIR": str(tmp), "TF_CPP_MIN_LOG_LEVEL": "2",
                "CUDA_VISIBLE_DEVICES": ""})
    return env


def run_cmd(cmd: list[str], env: dict, cwd: Path, timeout: float = 1500) -> subprocess.CompletedProcess:
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    print(f"{' '.join(cmd[2:5])}: {time.monotonic() - start:.0f}s")
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def check_stack_outcome(stack: dict, experiment: str, model_name: str, version: str, tmp: Path,
                        upscale: bool = True) -> None:
    """Artifacts in the bucket under this server's prefix, with the location scheme of its
    mode; the version registered from a LoggedModel; its alias resolves; and (`upscale`)
    the candidate loads back through S3 into `srgan upscale`."""
    client = MlflowClient(stack["uri"])
    exp = client.get_experiment_by_name(experiment)
    scheme = {"proxied": "mlflow-artifacts:", "direct": "s3://"}[stack["mode"]]
    assert exp.artifact_location.startswith(scheme), exp.artifact_location

    keys = s3_keys(stack["s3"], f"{stack['prefix']}/{exp.experiment_id}/")
    assert any(k.endswith("/data/manifest.json") for k in keys), keys[:20]  # ingest's artifact
    assert any("/images/" in k and k.endswith(".png") for k in keys), keys[:20]  # evaluate's showcase image card
    model_files = [k for k in keys if "/models/m-" in k]
    assert any(k.endswith("/MLmodel") for k in model_files), keys[:20]  # the LoggedModel itself

    mv = client.get_model_version(model_name, version)
    assert mv.source.startswith("models:/m-")  # registered from the LoggedModel
    model_id = mv.source.removeprefix("models:/")
    logged = client.get_logged_model(model_id)
    assert logged.artifact_location.startswith(scheme)
    assert any(f"/models/{model_id}/" in k for k in model_files)
    assert str(client.get_model_version_by_alias(model_name, "candidate").version) == str(version)
    if mv.tags.get("gate.decision") == "champion":
        assert str(client.get_model_version_by_alias(model_name, "champion").version) == str(version)

    if not upscale:
        return
    # the candidate back through the artifact store (S3 directly, or the server's proxy)
    face = tmp / "in" / "face.png"
    face.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 12), (120, 80, 200)).save(face)
    out = tmp / "up"
    run_cmd([sys.executable, "-m", "srcore", "upscale", "--model", f"models:/{model_name}@candidate", str(face),
          "--out", str(out)], client_env(stack, tmp), tmp, timeout=600)
    (produced,) = [p for p in out.iterdir() if p.suffix == ".png"]
    assert Image.open(produced).size == (80, 48)
