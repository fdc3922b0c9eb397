"""The whole pipeline on this machine: `python -m pipeline run-local` (kfp.local
SubprocessRunner, use_venv=False) on the offline demo images with the smoke preset,
tracked on a real MLflow server.

1. KFP without the MLflow plugin: one parent run (ended by the final task), four child
   runs, a registered version; data and model on the "volume" (a local folder here).
2. Simulating the plugin: MLFLOW_RUN_ID / MLFLOW_EXPERIMENT_ID / MLFLOW_TRACKING_URI set.
   The plugin gives every task its own run; the local runner can only pass one
   environment to all tasks, so here all four steps share that one run. What is checked
   is the contract: with MLFLOW_RUN_ID present a step logs into it and creates no run.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import pytest

import helpers_tracking as expect
from helpers_stack import check_stack_outcome

REPO = Path(__file__).resolve().parents[1]
STEPS = {"ingest", "train", "evaluate", "register"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.slow


def _run_local(tmp_path: Path, monkeypatch, env_extra: dict[str, str], params: dict[str, str],
               extra_args: tuple[str, ...] = (), expect_failure: bool = False) -> dict:
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "SRGAN_PARENT_RUN_ID", "MLFLOW_TRACKING_URI")}
    env.update({"TMPDIR": str(tmp), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", **env_extra})
    cmd = [sys.executable, "-m", "pipeline", "run-local", "--preset", "smoke", "--root", str(tmp_path / "run"),
           *extra_args]
    for k, v in params.items():
        cmd += ["-p", f"{k}={v}"]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    took = time.monotonic() - start
    (tmp_path / f"run-local-{int(time.time())}.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if expect_failure:
        assert proc.returncode != 0
        return {"stderr": proc.stderr}
    assert proc.returncode == 0, f"run-local failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    print(f"run-local took {took:.0f}s")
    # run-local points TMPDIR under its root: the components' sources (KFP's `mktemp -d`) are there
    assert any((tmp_path / "run" / "tmp").iterdir())
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["log"] = proc.stdout + proc.stderr
    for name in ("dataset", "model", "metrics", "report", "evaluation"):
        assert Path(result[name]).is_relative_to(tmp_path / "run" / "pipeline_root"), name
    return result


def _volume_path(artifact_file: str) -> Path:
    """The artifacts are small pointers: their file holds the volume path (and metadata)."""
    return Path(json.loads(Path(artifact_file).read_text())["volume_path"])


def _check_artifacts(result: dict, root: Path) -> None:
    data_dir = _volume_path(result["dataset"])
    assert data_dir.is_relative_to(root / "tmp" / "srgan-volume" / "data")  # the local stand-in of the volume
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert manifest["counts"]["test"] == 8 and manifest["counts"]["train"] + manifest["counts"].get("val", 0) == 40
    assert list((data_dir / "test").glob("*.png"))
    assert json.loads(Path(result["dataset"]).read_text())["content_hash"] == manifest["content_hash"]

    generator = _volume_path(result["model"]) / "generator.keras"
    assert generator.is_file() and zipfile.is_zipfile(generator)
    assert result["model_uri"].startswith("models:/")

    values = result["metrics_values"]
    for key in ("test/psnr", "test/ssim", "test/bicubic/psnr", "test/bicubic/ssim", "test/gain_psnr"):
        assert math.isfinite(values[key]), key
    assert 0 < values["test/ssim"] <= 1
    assert abs(values["test/gain_psnr"] - (values["test/psnr"] - values["test/bicubic/psnr"])) < 1e-3
    full = json.loads(Path(result["metrics"]).read_text())  # metrics.json behind the Metrics artifact
    assert full["test/psnr"] == pytest.approx(values["test/psnr"])

    page = Path(result["report"]).read_text()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert images and base64.b64decode(images[0]).startswith(PNG_MAGIC)
    assert "test/psnr" in page
    evaluation = Path(result["evaluation"])
    assert (evaluation / "grid.png").read_bytes().startswith(PNG_MAGIC)
    assert (evaluation / "metrics.json").is_file()


def test_pipeline_local_parent_and_children(mlflow_server, mlflow_stack, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    tag = uuid.uuid4().hex[:8]
    experiment, model_name = f"kfp-local-{tag}", f"srgan-kfp-local-{tag}"
    result = _run_local(tmp_path, monkeypatch, {}, {
        "source": "demo", "experiment_name": experiment, "registered_model_name": model_name,
        "mlflow_tracking_uri": mlflow_server,
    })
    _check_artifacts(result, tmp_path / "run")

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    (parent,) = [r for r in runs if r.data.tags.get("srgan.step") == "pipeline"]
    assert parent.data.tags.get("srgan.kfp_run_id")  # this KFP run's
    assert parent.info.status == "FINISHED"  # ended by the final task, not at creation
    assert parent.info.run_name == "demo p1+e2 mse bs8"
    assert parent.data.params["epochs"] == "2" and "registered_model_name" not in parent.data.params
    assert "" not in parent.data.params.values()
    assert "config.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}  # the whole Config
    expect.check_parent(client, parent)  # headline test metrics, version and gate decision
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.data.tags.get("srgan.step") for r in children} == STEPS
    assert len(children) == 4 and len(runs) == 5
    by_step = {r.data.tags["srgan.step"]: r for r in children}
    assert "test/psnr" in by_step["evaluate"].data.metrics

    version = client.get_model_version(model_name, result["model_version"])
    assert version.name == model_name
    assert version.run_id == by_step["train"].info.run_id
    if result["champion"]:
        assert client.get_model_version_by_alias(model_name, "champion").version == result["model_version"]
    # `mlflow_server` is the cluster-like stack (PostgreSQL, artifacts proxied into S3): the
    # artifacts are in the bucket, the version resolves by alias (tests/test_stack.py: direct S3)
    check_stack_outcome(mlflow_stack("proxied"), experiment, model_name, result["model_version"], tmp_path,
                        upscale=False)


def test_pipeline_local_under_mlflow_plugin_env(mlflow_server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    tag = uuid.uuid4().hex[:8]
    client = MlflowClient(mlflow_server)
    exp_id = client.create_experiment(f"kfp-plugin-{tag}")
    task_run = client.create_run(exp_id, run_name="kfp-plugin-task").info.run_id
    unused_experiment, model_name = f"kfp-plugin-unused-{tag}", f"srgan-kfp-plugin-{tag}"
    result = _run_local(
        tmp_path, monkeypatch,
        {"MLFLOW_RUN_ID": task_run, "MLFLOW_EXPERIMENT_ID": exp_id, "MLFLOW_TRACKING_URI": mlflow_server},
        # the plugin's environment wins over the parameters
        {"source": "demo", "experiment_name": unused_experiment, "registered_model_name": model_name,
         "mlflow_tracking_uri": "http://127.0.0.1:9"},
    )
    _check_artifacts(result, tmp_path / "run")

    runs = client.search_runs([exp_id], max_results=100)
    assert [r.info.run_id for r in runs] == [task_run]  # no parent, no child runs of our own
    assert client.get_experiment_by_name(unused_experiment) is None
    run = client.get_run(task_run)
    assert "test/psnr" in run.data.metrics and run.data.params["epochs"] == "2"
    version = client.get_model_version(model_name, result["model_version"])
    assert version.run_id == task_run


def test_pipeline_local_train_fails_after_epoch_1_then_retry_resumes(mlflow_server, tmp_path, monkeypatch):
    """Train dies once right after checkpointing epoch 1 (SRGAN_FAULT_AFTER_EPOCH, tests
    only), like a preempted pod. Its retry policy (honoured by kfp.local too) reruns it:
    it resumes at epoch 1, not 0, from the checkpoints in `checkpoint_dir`, into the same
    MLflow training run. A second pipeline run with the same `checkpoint_dir` reuses the
    data on the volume and the finished training."""
    from mlflow.tracking import MlflowClient

    tag = uuid.uuid4().hex[:8]
    experiment, model_name = f"kfp-resume-{tag}", f"srgan-kfp-resume-{tag}"
    params = {"source": "demo", "experiment_name": experiment, "registered_model_name": model_name,
              "mlflow_tracking_uri": mlflow_server, "checkpoint_dir": str(tmp_path / "checkpoints")}
    first = _run_local(tmp_path, monkeypatch, {"SRGAN_FAULT_AFTER_EPOCH": "1"}, params)
    assert "injected failure after epoch 1" in first["log"]
    _check_artifacts(first, tmp_path / "run")
    assert _volume_path(first["model"]) == tmp_path / "checkpoints"

    client = MlflowClient(mlflow_server)
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    (train,) = client.search_runs([exp_id], "tags.`srgan.step` = 'train'")  # one MLflow training run
    assert train.data.tags["resumed_from_epoch"] == "1"
    assert [m.step for m in client.get_metric_history(train.info.run_id, "train/epoch_g_loss")] == [1, 2, 3]
    (parent,) = client.search_runs([exp_id], "tags.`srgan.step` = 'pipeline'")
    assert parent.info.status == "FINISHED"
    assert client.get_model_version(model_name, first["model_version"]).run_id == train.info.run_id
