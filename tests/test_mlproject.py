"""`mlflow run . --env-manager local` end to end against a real `mlflow server`."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mlflow_run_main_smoke_creates_parent_with_child_per_step(tmp_path, server_tracking):
    env = {**os.environ, "MLFLOW_TRACKING_URI": server_tracking, "MLFLOW_EXPERIMENT_NAME": "mlproject-e2e"}
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):  # set_experiment() exports the latter
        env.pop(var, None)
    cmd = [
        sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local",
        "--experiment-name", "mlproject-e2e",
        "-P", "preset=smoke", "-P", "data=demo", "-P", "registered_model_name=mlproject-e2e",
        "-P", f"work_dir={tmp_path / 'work'}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    client = mlflow.MlflowClient(server_tracking)
    exp = client.get_experiment_by_name("mlproject-e2e")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = {r.data.tags["srgan.step"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"ingest", "train", "evaluate", "register"}
    assert all(r.info.status == "FINISHED" for r in runs)

    train_run = children["train"]
    assert len(client.get_metric_history(train_run.info.run_id, "g_loss")) == 3  # 1 pretrain + 2 GAN epochs
    assert {a.path for a in client.list_artifacts(train_run.info.run_id)} >= {"images"}
    assert "test_psnr" in children["evaluate"].data.metrics
    version = client.get_model_version_by_alias("mlproject-e2e", "champion")
    assert version.version == "1"
