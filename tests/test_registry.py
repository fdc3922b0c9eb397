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


def scored(value: float, bicubic: float = 20.0, metric: str = "psnr_y", split: str | None = "split-a", **more) -> dict:
    """evaluate's metrics.json shape: the model's and bicubic's score on one test split."""
    out = {f"test/{metric}": value, f"test/bicubic/{metric}": bicubic, **more}
    if split:
        out["data_manifest_hash"] = split
    return out


def test_first_is_champion_worse_stays_candidate_better_takes_over(backend):
    cfg, uri1, uri2, uri3 = unique_cfg(), log_stub_model(), log_stub_model(), log_stub_model()

    first = register(cfg, uri1, {**scored(25.0), "test/ssim": 0.8}, manifest_hash="abc123")
    assert (first.version, first.champion) == ("1", True)
    assert "first champion" in first.reason and "beats bicubic" in first.reason

    worse = register(cfg, uri2, {"metrics": scored(24.5)}, manifest_hash="abc123")
    assert (worse.version, worse.champion) == ("2", False)
    assert "24.5" in worse.reason and "25" in worse.reason and "stays version 1" in worse.reason
    assert alias_version(cfg.registered_model_name, "candidate") == "2"
    assert alias_version(cfg.registered_model_name, "champion") == "1"

    # old underscore names (metrics.json before the grouping) are migrated on read
    better = register(cfg, uri3, {"test_psnr_y": {"mean": 26.25, "std": 1.5}, "bicubic_psnr_y": 20.0,
                                  "data_manifest_hash": "abc123"})
    assert (better.version, better.champion) == ("3", True)
    assert alias_version(cfg.registered_model_name, "champion") == "3"
    assert alias_version(cfg.registered_model_name, "candidate") == "3"

    v1 = MlflowClient().get_model_version(cfg.registered_model_name, "1")
    assert v1.tags["metric.test/psnr_y"] == "25.0" and v1.tags["metric.test/ssim"] == "0.8"
    assert v1.tags["data.manifest_hash"] == "abc123" and v1.tags["eval.test_split_hash"] == "abc123"
    assert v1.tags["srgan.model_uri"] == uri1
    assert "| **this model** | 25.00 |" in v1.description and "abc123" in v1.description
    assert "## Gate" in v1.description and "**champion**" in v1.description
    v2 = MlflowClient().get_model_version(cfg.registered_model_name, "2")
    assert v2.tags["gate.decision"] == "candidate" and "stays version 1" in v2.tags["gate.reason"]


def test_gate_mode_min_and_ties_keep_the_champion(sqlite):
    cfg = unique_cfg(gate_metric="test_lpips", gate_mode="min")

    def lpips(value: float) -> dict:
        return scored(value, bicubic=0.40, metric="lpips")

    assert register(cfg, log_stub_model(), lpips(0.30)).champion
    worse = register(cfg, log_stub_model(), lpips(0.35))
    assert not worse.champion and "gate_mode min" in worse.reason
    assert not register(cfg, log_stub_model(), lpips(0.30)).champion  # a tie is not better
    assert register(cfg, log_stub_model(), lpips(0.25)).champion
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
    assert metric_tags == {"metric.test/psnr_y": "27.1"}  # no strings, None or blocks; old name migrated
    assert version.tags["data.manifest_hash"] == "12e45"


def test_missing_gate_metric_fails_before_registering(sqlite):
    cfg = unique_cfg()
    with pytest.raises(ValueError, match=r"gate_metric='test/psnr_y'.*available: test/ssim"):
        register(cfg, log_stub_model(), {"test/ssim": 0.9})
    assert MlflowClient().search_registered_models(f"name = '{cfg.registered_model_name}'") == []


def test_champion_without_metric_or_split_is_never_compared(sqlite):
    # behaviour change (issue 10): a champion registered before the gate existed has no
    # metric and no test-split tag, so the new version cannot be shown better: candidate
    cfg, uri = unique_cfg(), log_stub_model()
    legacy = mlflow.register_model(uri, cfg.registered_model_name)  # no tags at all
    MlflowClient().set_registered_model_alias(cfg.registered_model_name, "champion", legacy.version)
    result = register(cfg, log_stub_model(), scored(30.0))
    assert not result.champion and "another test split" in result.reason
    assert alias_version(cfg.registered_model_name, "champion") == "1"


def test_worse_than_bicubic_never_becomes_the_first_champion(sqlite):
    cfg = unique_cfg()
    smoke = register(cfg, log_stub_model(), scored(19.5, bicubic=20.0))  # a smoke model
    assert (smoke.version, smoke.champion) == ("1", False)
    assert "does not beat bicubic" in smoke.reason
    assert alias_version(cfg.registered_model_name, "candidate") == "1"
    with pytest.raises(Exception):
        alias_version(cfg.registered_model_name, "champion")
    tags = MlflowClient().get_model_version(cfg.registered_model_name, "1").tags
    assert tags["gate.decision"] == "candidate" and "does not beat bicubic" in tags["gate.reason"]


def test_the_margin_over_bicubic_is_strict(sqlite):
    cfg = unique_cfg(gate_min_gain=0.5)
    assert not register(cfg, log_stub_model(), scored(20.5, bicubic=20.0)).champion  # gain == margin
    with pytest.raises(ValueError, match="test/bicubic/psnr_y=nan is not a finite number"):  # refused, not registered
        register(cfg, log_stub_model(), scored(21.0, split=None) | {"test/bicubic/psnr_y": float("nan")})
    result = register(cfg, log_stub_model(), scored(20.75, bicubic=20.0))
    assert result.champion and "> 0.5" in result.reason


def test_no_bicubic_baseline_stays_candidate(sqlite):
    result = register(unique_cfg(), log_stub_model(), {"test/psnr_y": 30.0, "data_manifest_hash": "x"})
    assert not result.champion and "no test/bicubic/psnr_y" in result.reason


def test_old_metric_names_in_config_and_champion_tags_still_count(sqlite):
    # a config saying gate_metric: test_psnr_y, and a champion tagged metric.test_psnr_y
    cfg = unique_cfg(gate_metric="test_psnr_y")
    assert cfg.gate_metric == "test/psnr_y"
    old = mlflow.register_model(log_stub_model(), cfg.registered_model_name,
                                tags={"metric.test_psnr_y": "25.0", "eval.test_split_hash": "split-a"})
    MlflowClient().set_registered_model_alias(cfg.registered_model_name, "champion", old.version)
    worse = register(cfg, log_stub_model(), scored(24.0))
    assert not worse.champion and "25" in worse.reason and "stays version 1" in worse.reason
    assert register(cfg, log_stub_model(), scored(26.0)).champion


def test_nan_gate_metric_never_registers(sqlite, tmp_path):
    cfg = unique_cfg()
    path = tmp_path / "metrics.json"
    path.write_text('{"test_psnr_y": NaN, "bicubic_psnr_y": 20.0}')  # what json.dumps writes for nan
    with pytest.raises(ValueError, match=f"metrics file {path}: test_psnr_y=nan is not a finite number"):
        register(cfg, log_stub_model(), path)
    assert MlflowClient().search_registered_models(f"name = '{cfg.registered_model_name}'") == []


def test_a_better_model_on_another_test_split_is_not_compared(sqlite):
    cfg = unique_cfg()
    assert register(cfg, log_stub_model(), scored(25.0, split="split-a")).champion
    other = register(cfg, log_stub_model(), scored(40.0, split="split-b"))
    assert not other.champion and "another test split" in other.reason
    assert alias_version(cfg.registered_model_name, "champion") == "1"
    assert alias_version(cfg.registered_model_name, "candidate") == "2"


def test_registering_the_same_uri_twice_yields_one_version(backend):
    cfg, uri = unique_cfg(), log_stub_model()
    first = register(cfg, uri, scored(25.0))
    again = register(cfg, uri, scored(25.0))  # e.g. a retried KFP register task
    assert (first.version, again.version) == ("1", "1")
    assert first.champion and again.champion and "already the champion" in again.reason
    versions = MlflowClient().search_model_versions(f"name = '{cfg.registered_model_name}'")
    assert [str(v.version) for v in versions] == ["1"]
    other = register(cfg, log_stub_model(), scored(24.0))
    assert other.version == "2" and not other.champion


def test_result_is_tagged_on_the_active_run(sqlite):
    cfg, uri = unique_cfg(), log_stub_model()
    with mlflow.start_run() as run:
        register(cfg, uri, scored(20.5))
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["registered_model_version"] == "1" and tags["champion"] == "true"
