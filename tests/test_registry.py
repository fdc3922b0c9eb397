"""Registration, aliases and the champion gate (srcore.registry), on SQLite and on a real
`mlflow server`."""

from __future__ import annotations

import json
import uuid

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from srcore.config import Config
from srcore.registry import register


class _Identity(mlflow.pyfunc.PythonModel):
    """Stands in for the upscaler: the gate never loads the model, and this logs in ms."""

    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture(params=["tracking", "server_tracking"])
def backend(request, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a SQLite store's default artifact root is ./mlruns
    return request.getfixturevalue(request.param)


@pytest.fixture
def sqlite(tracking, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tracking


def log_stub_model() -> str:
    with mlflow.start_run():
        return mlflow.pyfunc.log_model(name="model", python_model=_Identity(), pip_requirements=["mlflow"]).model_uri


def unique_cfg(**overrides) -> Config:
    # the real server is shared by the whole session: one registered model per test
    return Config(registered_model_name=f"srgan-test-{uuid.uuid4().hex[:8]}", **overrides)


def alias_version(name: str, alias: str) -> str:
    return str(MlflowClient().get_model_version_by_alias(name, alias).version)  # int on SQLite


def test_first_is_champion_worse_stays_candidate_better_takes_over(backend):
    cfg, uri = unique_cfg(), log_stub_model()

    first = register(cfg, uri, {"test_psnr_y": 25.0, "test_ssim": 0.8}, manifest_hash="abc123")
    assert (first.version, first.champion) == ("1", True)
    assert "first champion" in first.reason

    worse = register(cfg, uri, {"metrics": {"test_psnr_y": 24.5}})
    assert (worse.version, worse.champion) == ("2", False)
    assert "24.5" in worse.reason and "25" in worse.reason and "stays version 1" in worse.reason
    assert alias_version(cfg.registered_model_name, "candidate") == "2"
    assert alias_version(cfg.registered_model_name, "champion") == "1"

    better = register(cfg, uri, {"test_psnr_y": {"mean": 26.25, "std": 1.5}})
    assert (better.version, better.champion) == ("3", True)
    assert alias_version(cfg.registered_model_name, "champion") == "3"
    assert alias_version(cfg.registered_model_name, "candidate") == "3"

    v1 = MlflowClient().get_model_version(cfg.registered_model_name, "1")
    assert v1.tags["metric.test_psnr_y"] == "25.0" and v1.tags["metric.test_ssim"] == "0.8"
    assert v1.tags["data.manifest_hash"] == "abc123"
    assert "test_psnr_y: 25" in v1.description and "abc123" in v1.description


def test_gate_mode_min_and_ties_keep_the_champion(sqlite):
    cfg, uri = unique_cfg(gate_metric="test_lpips", gate_mode="min"), log_stub_model()
    assert register(cfg, uri, {"test_lpips": 0.30}).champion
    worse = register(cfg, uri, {"test_lpips": 0.35})
    assert not worse.champion and "gate_mode min" in worse.reason
    assert not register(cfg, uri, {"test_lpips": 0.30}).champion  # a tie is not better
    assert register(cfg, uri, {"test_lpips": 0.25}).champion
    assert alias_version(cfg.registered_model_name, "champion") == "4"


def test_evaluate_metrics_json_path(sqlite, tmp_path):
    # the shape srcore.evaluate writes: top-level numbers are metrics, the rest is context
    how = {"crop_border": 4, "psnr_y": "Y of BT.601 on [16, 235]"}
    metrics = {
        "test_psnr_y": 27.1, "test_lpips": None, "model": "runs:/abc/upscaler", "data_dir": "data",
        "data_manifest_hash": "12e45", "counts": {"images": 500}, "how": how, "timing": {"seconds": 3.0},
    }
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    cfg = unique_cfg()
    result = register(cfg, log_stub_model(), str(path))
    version = MlflowClient().get_model_version(cfg.registered_model_name, result.version)
    assert "crop_border: 4" in version.description and "BT.601" in version.description
    metric_tags = {k: v for k, v in version.tags.items() if k.startswith("metric.")}
    assert metric_tags == {"metric.test_psnr_y": "27.1"}  # no strings, None or blocks
    assert version.tags["data.manifest_hash"] == "12e45"


def test_missing_gate_metric_fails_before_registering(sqlite):
    cfg = unique_cfg()
    with pytest.raises(ValueError, match=r"gate_metric='test_psnr_y'.*available: test_ssim"):
        register(cfg, log_stub_model(), {"test_ssim": 0.9})
    assert MlflowClient().search_registered_models(f"name = '{cfg.registered_model_name}'") == []


def test_champion_without_the_metric_is_replaced(sqlite):
    cfg, uri = unique_cfg(), log_stub_model()
    legacy = mlflow.register_model(uri, cfg.registered_model_name)  # no metric tags
    MlflowClient().set_registered_model_alias(cfg.registered_model_name, "champion", legacy.version)
    result = register(cfg, uri, {"test_psnr_y": 20.0})
    assert result.champion and "has no test_psnr_y tag" in result.reason


def test_result_is_tagged_on_the_active_run(sqlite):
    cfg, uri = unique_cfg(), log_stub_model()
    with mlflow.start_run() as run:
        register(cfg, uri, {"test_psnr_y": 20.0})
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["registered_model_version"] == "1" and tags["champion"] == "true"
