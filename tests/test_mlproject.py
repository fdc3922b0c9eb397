"""`mlflow run . --env-manager local` end to end: the README's main-job command in a fresh
folder, and the refusal without a source."""

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

import helpers_tracking as expect

REPO = Path(__file__).resolve().parents[1]


def _env(tracking_uri: str) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(var, None)
    return env


def test_mlflow_run_without_source_stops_at_once_naming_source(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "-P", "epochs=1",
           "-P", f"data_dir={tmp_path / 'data'}"]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(uri), capture_output=True, text=True, timeout=300)
    print(f"refused after {time.monotonic() - start:.0f}s")
    assert proc.returncode != 0
    assert "source" in proc.stderr and "img_align_celeba.zip" in proc.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_readme_main_job_lands_in_srgan_celeba_with_resolved_params(tmp_path):
    """The README's quick-start command (`mlflow run . --env-manager local -P preset=smoke
    -P source=demo`) in a fresh folder, with the output folders in that folder too."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    work = tmp_path / "work"
    cmd = [
        sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local",
        "-P", "preset=smoke", "-P", "source=demo",
        "-P", f"data_dir={work / 'data'}", "-P", f"model_dir={work / 'model'}", "-P", f"eval_dir={work / 'eval'}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(uri), capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = proc.stderr
    # validation metrics are never called test metrics (nor the reverse), and the job ends with where to look
    assert "validation metrics" in log
    assert not [line for line in log.splitlines() if "epoch" in line and "test metrics" in line]
    assert "mlflow ui --backend-store-uri" in log and "#/experiments/" in log
    assert "alias candidate -> models:/srgan-celeba@candidate" in log or "alias champion" in log
    assert sum('"parent_run_id"' in line for line in (proc.stdout + log).splitlines()) == 1  # the JSON, once
    # a newcomer's console: no CUDA/absl start-up noise, no MLflow type-hint advice, no artifact progress
    # bars, no native grappler error from the GAN step, no TF INFO line naming a temporary folder
    for noise in ("cuInit", "absl::InitializeLog", "Add type hints", "Downloading artifacts", "remapper failed",
                  "Assets written to"):
        assert noise not in log, f"{noise!r} on the console"

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("srgan-celeba")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_name == "demo p1+e2 mse bs8"
    assert parent.data.params and all(v != "" for v in parent.data.params.values())
    assert parent.data.params["epochs"] == "2" and "source" not in parent.data.params  # paths are not params
    children = {r.data.tags["srgan.step"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"ingest", "train", "evaluate", "register"}
    assert {r.info.run_name for r in children.values()} == {f"{s} demo p1+e2 mse bs8" for s in children}
    assert all(r.info.status == "FINISHED" for r in runs)

    # the run `mlflow run` created (Default experiment) is only a launcher pointing at ours
    (launcher,) = client.search_runs(["0"])
    assert launcher.data.tags["srgan.run_id"] == parent.info.run_id
    assert parent.data.tags["srgan.launcher_run_id"] == launcher.info.run_id

    train_run = children["train"]
    assert len(client.get_metric_history(train_run.info.run_id, "train/epoch_g_loss")) == 3  # 1 pretrain + 2 GAN epochs
    assert {a.path for a in client.list_artifacts(train_run.info.run_id)} >= {"showcase"}  # per-epoch grids
    assert "test/psnr" in children["evaluate"].data.metrics
    # the smoke model (bicubic skip) looks like bicubic or better, not a grey smear (issue 17)
    scores = {k.replace("/", "_"): v for k, v in children["evaluate"].data.metrics.items()}
    model_psnr = scores.get("test_psnr_y")
    bicubic_psnr = scores.get("test_bicubic_psnr_y", scores.get("bicubic_psnr_y"))
    assert model_psnr is not None and bicubic_psnr is not None, sorted(scores)
    assert model_psnr > bicubic_psnr - 1.0, (model_psnr, bicubic_psnr)
    versions = client.search_model_versions("name='srgan-celeba'")
    assert len(versions) == 1
    # a demo model never becomes the champion CelebA models would be measured against
    assert set(client.get_registered_model("srgan-celeba").aliases) == {"candidate"}

    # what a person comparing runs sees (issue 17), on this one smoke job
    expect.check_experiment_opens_on_runs(client, exp)
    expect.check_parent(client, parent)
    assert parent.data.tags["registered_model_version"] == str(versions[0].version)
    expect.check_params(runs)
    def same(params):  # precision `auto` is resolved on the train run
        return {k: v for k, v in params.items() if k != "precision"}
    assert same(parent.data.params) == same(train_run.data.params)
    expect.check_config_artifacts(client, runs)
    expect.check_showcase_card(client, runs)
    expect.check_names_distinct(runs)
    expect.check_metric_groups(runs)
    assert {"val/psnr_y", "train/g_loss"} <= set(train_run.data.metrics)
    expect.check_model_card(client.get_model_version("srgan-celeba", versions[0].version))
    # evaluation metrics on the LoggedModel too: the Models tab compares models
    models = client.search_logged_models(experiment_ids=[exp.experiment_id])
    scored = [m for m in models if "test/psnr" in {x.key for x in m.metrics or []}]
    assert len(scored) == 1 and scored[0].source_run_id == train_run.info.run_id
