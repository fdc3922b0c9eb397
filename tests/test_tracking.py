"""Fast checks of what MLflow shows (srcore.tracking, metric_names, model_card); the
end-to-end checks on a real smoke job and sweep are in test_mlproject.py / test_sweep.py
(tests/helpers_tracking.py)."""

from __future__ import annotations

import json
from dataclasses import fields

import mlflow
import pytest

from srcore import metric_names as N
from srcore.config import SECTIONS, Config, build_config
from srcore.tracking import HPARAMS, config_params, experiment_id, headline_metrics, where_to_look


def test_hyper_parameters_are_one_short_list_of_config_fields():
    names = {f.name for f in fields(Config)}
    assert set(HPARAMS) <= names and len(HPARAMS) == len(set(HPARAMS)) <= 30
    not_hparams = {*SECTIONS["serve"], *SECTIONS["deploy"], *SECTIONS["tracking"], *SECTIONS["export"],
                   "data_dir", "model_dir", "eval_dir", "cache_dir", "source", "vgg_weights", "partition_file"}
    assert not set(HPARAMS) & not_hparams
    assert set(config_params(build_config("smoke"))) == set(HPARAMS)


@pytest.mark.parametrize("old,new", [
    ("test_psnr_y", "test/psnr_y"), ("bicubic_psnr_y", "test/bicubic/psnr_y"), ("gain_lpips_alex", "test/gain_lpips_alex"),
    ("val_psnr", "val/psnr"), ("step_g_loss", "train/g_loss"), ("g_loss", "train/epoch_g_loss"),
    ("epoch_seconds", "train/epoch_seconds"), ("test/psnr_y", "test/psnr_y"),
])
def test_old_metric_names_migrate_and_back(old, new):
    assert N.canonical(old) == new
    if old != new:
        assert N.legacy(new) == old


def test_migrate_keeps_non_metrics_and_prefers_grouped_names():
    values = {"test_psnr_y": 20.0, "test/psnr_y": 21.0, "test_split_hash": "abc", "bicubic_ssim": {"mean": 0.5}}
    assert N.migrate(values) == {"test/psnr_y": 21.0, "test_split_hash": "abc", "test/bicubic/ssim": {"mean": 0.5}}
    assert (N.baseline("test_psnr_y"), N.gain("test/lpips_alex")) == ("test/bicubic/psnr_y", "test/gain_lpips_alex")
    # the baseline's first grouped spelling (metrics.json files, version tags) reads as its own section
    assert N.migrate({"test/bicubic_psnr_y": 20.0}) == {"test/bicubic/psnr_y": 20.0}
    assert N.legacy("test/bicubic_psnr_y") == "bicubic_psnr_y"
    assert Config(gate_metric="test_psnr_y", sweep_metric="val_psnr_y").gate_metric == "test/psnr_y"
    assert (Config().gate_metric, Config().sweep_metric) == ("test/psnr_y", "val/psnr_y")
    assert headline_metrics({"test_psnr_y": 24.0, "test/ssim_y": 0.7, "test/lpips_alex": float("nan")}) == {
        "test/psnr_y": 24.0, "test/ssim_y": 0.7}


def test_experiment_opens_on_the_runs_table_and_the_closing_line_says_where(tracking):
    cfg = build_config("smoke", overrides={"experiment_name": "kind-test"})
    exp_id = experiment_id(cfg)
    assert mlflow.MlflowClient().get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment_id(cfg) == exp_id
    view = json.loads(mlflow.MlflowClient().get_experiment(exp_id).tags["mlflow.sharedViewState.srgan-compare"])
    assert "metrics.`test/psnr_y`" in view["selectedColumns"]
    assert f"mlflow ui --backend-store-uri {tracking}" in where_to_look(exp_id)
    mlflow.set_tracking_uri("http://127.0.0.1:5000")
    try:
        assert where_to_look("7") == ("http://127.0.0.1:5000/#/experiments/7/runs"
                                      "?workflowType=machine_learning&viewStateShareKey=srgan-compare")
    finally:
        mlflow.set_tracking_uri(tracking)


def test_model_card_is_readable_markdown_without_runs(tracking):
    from srcore.model_card import SECTIONS as CARD, render

    metrics = {"test/psnr_y": 25.0, "test/bicubic/psnr_y": 24.0, "test/gain_psnr_y": 1.0, "test/ssim_y": 0.8}
    card = render("srgan-celeba", "3", "models:/m-1", metrics, "champion", "beats bicubic", None, None,
                  "f" * 64, "abc", {"images": 8})
    assert all(section in card for section in CARD)
    assert "| **this model** | 25.00 | 0.8000 | - |" in card and "| bicubic | 24.00 |" in card
    assert "8 faces, hash `ffffffffffff`" in card and "**champion**: beats bicubic" in card


def test_model_card_gain_that_rounds_to_zero_has_no_minus_sign(tracking):
    from srcore.model_card import render

    metrics = {"test/psnr_y": 26.71, "test/bicubic/psnr_y": 26.71, "test/gain_psnr_y": 0.0001,
               "test/ssim_y": 0.71224, "test/bicubic/ssim_y": 0.71228, "test/gain_ssim_y": -4e-05}
    card = render("srgan-celeba", "1", "models:/m-1", metrics, "candidate", "stays candidate", None, None,
                  "f" * 64, "abc", {"images": 8})
    assert "| gain over bicubic | +0.0001 | +0.0000 |" in card and "-0.0000" not in card


def test_tensorflow_info_lines_show_only_at_debug():
    import logging

    from srcore.tracking import configure_logging

    tf_log, root = logging.getLogger("tensorflow"), logging.getLogger()
    before, root_before = tf_log.level, root.level
    try:
        configure_logging("INFO")
        assert not tf_log.isEnabledFor(logging.INFO) and tf_log.isEnabledFor(logging.WARNING)
        configure_logging("DEBUG")
        assert tf_log.isEnabledFor(logging.INFO)
    finally:
        tf_log.setLevel(before)
        root.setLevel(root_before)
