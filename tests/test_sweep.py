"""Sweeps (srcore.sweep): trial parsing and naming, best-trial selection, and a local
2-trial smoke sweep with its MLflow structure (parent -> trial runs -> train/evaluate,
one registered version, the comparison table on the parent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from srcore.config import ConfigError, build_config
from srcore.sweep import TrialResult, comparison_rows, load_trials, pick_best, trial_name

TRIALS = [{"learning_rate": 2e-4, "content_loss": "mse"}, {"learning_rate": 5e-5, "content_loss": "mse"}]


def test_trial_names_read_at_a_glance():
    assert trial_name({"learning_rate": 2e-4, "content_loss": "vgg19_54"}) == "lr=2e-4,loss=vgg19_54"
    assert trial_name({"batch_size": 16, "adv_weight": 0.001}) == "bs=16,adv=1e-3"
    assert trial_name({"gen_init_scale": 0.1}) == "init=0.1"


def test_load_trials_from_file_and_refusals(tmp_path):
    path = tmp_path / "trials.json"
    path.write_text(json.dumps(TRIALS))
    assert load_trials(str(path)) == TRIALS
    assert load_trials(json.dumps(TRIALS)) == TRIALS
    with pytest.raises(ConfigError, match="trial 1: unknown parameter 'lerning_rate'"):
        load_trials([{"learning_rate": 1e-4}, {"lerning_rate": 1e-4}])
    with pytest.raises(ConfigError, match="trial 0 sets source"):
        load_trials([{"source": "demo"}])
    with pytest.raises(ConfigError, match="same parameters"):
        load_trials([{"epochs": 1}, {"epochs": 1}])
    with pytest.raises(ConfigError, match="non-empty JSON list"):
        load_trials("[]")
    with pytest.raises(ConfigError, match="not a file"):
        load_trials(str(tmp_path / "missing.json"))


def _result(i, value, uri="runs:/x/m"):
    return TrialResult(i, f"t{i}", f"r{i}", {"learning_rate": i}, uri, {"test_psnr_y": value, "model": "x"})


def test_pick_best_by_metric_and_mode():
    results = [_result(0, 20.0), _result(1, 22.5), _result(2, float("nan")), _result(3, 30.0, uri="")]
    assert pick_best(results, "test_psnr_y", "max").index == 1  # nan and untrained never win
    assert pick_best(results, "test_psnr_y", "min").index == 0
    with pytest.raises(ValueError, match="sweep_metric"):
        pick_best(results, "test_lpips")
    rows = comparison_rows(results)
    assert [r["trial"] for r in rows] == [0, 1, 2, 3] and rows[1]["test_psnr_y"] == 22.5
    assert rows[2]["test_psnr_y"] is None and "model" not in rows[0]


@pytest.mark.slow
def test_local_sweep_mlflow_structure(smoke_data, tracking, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from srcore.sweep import sweep

    cfg = build_config("smoke", overrides={
        "source": str(smoke_data), "epochs": 1, "pretrain_epochs": 0, "eval_every": 0, "steps_per_epoch": 2,
        "model_dir": str(tmp_path / "model"), "eval_dir": str(tmp_path / "eval"),
        "registered_model_name": "srgan-sweep-test", "experiment_name": "sweep-test",
    })
    summary = sweep(cfg, TRIALS)

    client = MlflowClient()
    exp = client.get_experiment_by_name("sweep-test")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    (parent,) = [r for r in runs if r.data.tags.get("srgan.step") == "sweep"]
    assert parent.info.run_id == summary["parent_run_id"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
              and r.data.tags.get("srgan.step") == "trial"]
    assert sorted(r.info.run_name for r in trials) == ["lr=2e-4,loss=mse", "lr=5e-5,loss=mse"]
    for trial in trials:
        assert trial.info.status == "FINISHED"
        assert trial.data.tags["trial.learning_rate"] in ("0.0002", "5e-05")
        assert trial.data.params["learning_rate"] == trial.data.tags["trial.learning_rate"]
        assert "test_psnr_y" in trial.data.metrics
        steps = {r.data.tags.get("srgan.step") for r in runs
                 if r.data.tags.get("mlflow.parentRunId") == trial.info.run_id}
        assert steps == {"train", "evaluate"}

    assert parent.data.tags["srgan.sweep.best_trial_run_id"] == summary["best_trial_run_id"]
    best = max(trials, key=lambda r: r.data.metrics["test_psnr_y"])
    assert summary["best_trial_run_id"] == best.info.run_id
    local = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="sweep/comparison.json",
                                                dst_path=str(tmp_path / "dl"))
    table = json.loads(Path(local).read_text())
    assert {r["name"] for r in table["trials"]} == {"lr=2e-4,loss=mse", "lr=5e-5,loss=mse"}
    assert "test_psnr_y" in table["trials"][0]
    assert "sweep/comparison.csv" in {f.path for f in client.list_artifacts(parent.info.run_id, "sweep")}

    versions = client.search_model_versions("name = 'srgan-sweep-test'")
    assert len(versions) == 1 and str(versions[0].version) == summary["registered_version"]
    register_runs = [r for r in runs if r.data.tags.get("srgan.step") == "register"]
    assert len(register_runs) == 1
    assert register_runs[0].data.tags["mlflow.parentRunId"] == parent.info.run_id
