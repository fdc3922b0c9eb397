"""Sweeps (srcore.sweep): trial parsing and naming, best-trial selection, and a local
2-trial smoke sweep with its MLflow structure (parent -> trial runs -> train/evaluate,
one registered version, the comparison table on the parent)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

import helpers_tracking as expect
from srcore.config import ConfigError, build_config
from srcore.sweep import TrialResult, comparison_rows, load_trials, pick_best, trial_name

TRIALS = [{"learning_rate": 2e-4, "content_loss": "mse"}, {"learning_rate": 5e-5, "content_loss": "mse"}]


def test_trial_names_read_at_a_glance():
    assert trial_name({"learning_rate": 2e-4, "content_loss": "vgg19_54"}) == "lr=2e-4,loss=vgg19_54"
    assert trial_name({"batch_size": 16, "adv_weight": 0.001}) == "bs=16,adv=1e-3"
    assert trial_name({"gen_init_scale": 0.1}) == "init=0.1"


@pytest.mark.parametrize("content, named", [
    (b"\xff[", "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'[{"epochs": 1' + b"0" * 5000 + b"}]", "not valid JSON"),
    (b'[{"epochs": 2, "epochs": 3}]', "'epochs' more than once"),
])
def test_a_hostile_trials_file_is_one_line_naming_it(tmp_path, content, named):
    path = tmp_path / "trials.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=named) as caught:
        load_trials(str(path))
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


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
    return TrialResult(i, f"t{i}", f"r{i}", {"learning_rate": i}, uri, {"val/psnr_y": value, "model": "x"})


def test_pick_best_by_metric_and_mode():
    results = [_result(0, 20.0), _result(1, 22.5), _result(2, float("nan")), _result(3, 30.0, uri="")]
    assert build_config("smoke").sweep_metric == "val/psnr_y"  # validation faces pick, never the test split
    assert pick_best(results, "val/psnr_y", "max").index == 1  # nan and untrained never win
    assert pick_best(results, "val/psnr_y", "min").index == 0
    with pytest.raises(ValueError, match="sweep_metric"):
        pick_best(results, "test/lpips")
    rows = comparison_rows(results)
    assert [r["trial"] for r in rows] == [0, 1, 2, 3] and rows[1]["val/psnr_y"] == 22.5
    assert rows[2]["val/psnr_y"] is None and "model" not in rows[0]


@pytest.mark.slow
def test_local_sweep_mlflow_structure(smoke_data, tracking, tmp_path, caplog):
    import mlflow
    from mlflow.tracking import MlflowClient

    from srcore.sweep import sweep

    cfg = build_config("smoke", overrides={
        "source": str(smoke_data), "epochs": 1, "pretrain_epochs": 0, "eval_every": 0, "steps_per_epoch": 2,
        "model_dir": str(tmp_path / "model"), "eval_dir": str(tmp_path / "eval"),
        "registered_model_name": "srgan-sweep-test", "experiment_name": "sweep-test",
    })
    with caplog.at_level(logging.INFO, logger="srcore.sweep"):
        summary = sweep(cfg, TRIALS)
    # it ends like the main job: where the runs are and which models:/ URI to upscale with
    alias = "champion" if summary["champion"] else "candidate"
    assert any(r.getMessage() == f"model: srgan-sweep-test version {summary['registered_version']}, alias {alias} "
               f"-> models:/srgan-sweep-test@{alias}" for r in caplog.records)

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
        assert {"test/psnr_y", "val/psnr_y"} <= set(trial.data.metrics)
        children = {r.data.tags.get("srgan.step"): r for r in runs
                    if r.data.tags.get("mlflow.parentRunId") == trial.info.run_id}
        assert set(children) == {"train", "evaluate"}
        assert children["train"].info.run_name == f"train {trial.info.run_name}"  # told apart in the table

    assert parent.data.tags["srgan.sweep.best_trial_run_id"] == summary["best_trial_run_id"]
    best = max(trials, key=lambda r: r.data.metrics["val/psnr_y"])  # picked on validation faces
    assert summary["best_trial_run_id"] == best.info.run_id and summary["metric"] == "val/psnr_y"
    local = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="sweep/comparison.json",
                                                dst_path=str(tmp_path / "dl"))
    table = json.loads(Path(local).read_text())
    assert {r["name"] for r in table["trials"]} == {"lr=2e-4,loss=mse", "lr=5e-5,loss=mse"}
    assert {"test/psnr_y", "val/psnr_y"} <= set(table["trials"][0])
    assert "sweep/comparison.csv" in {f.path for f in client.list_artifacts(parent.info.run_id, "sweep")}

    versions = client.search_model_versions("name = 'srgan-sweep-test'")
    assert len(versions) == 1 and str(versions[0].version) == summary["registered_version"]
    register_runs = [r for r in runs if r.data.tags.get("srgan.step") == "register"]
    assert len(register_runs) == 1
    assert register_runs[0].data.tags["mlflow.parentRunId"] == parent.info.run_id

    # what a person comparing runs sees (issue 17), on this one sweep
    expect.check_experiment_opens_on_runs(client, exp)
    expect.check_parent(client, parent, extra=("val/psnr_y",))
    assert parent.data.metrics["val/psnr_y"] == best.data.metrics["val/psnr_y"]
    assert parent.data.metrics["test/psnr_y"] == best.data.metrics["test/psnr_y"]  # the best trial's numbers
    assert parent.data.tags["registered_model_version"] == summary["registered_version"]
    expect.check_params(runs)
    assert {r.data.tags.get("srgan.step") for r in runs if r.data.params} == {"sweep", "trial", "train"}
    expect.check_config_artifacts(client, runs)
    expect.check_names_distinct(runs)
    expect.check_metric_groups(runs)
    expect.check_model_card(versions[0])


# ---- the KFP sweep pipeline ----------------------------------------------------------------


def _tasks(spec: dict, dag: dict, prefix: str = "") -> dict:
    """Every task of the IR, nested DAGs (exit handler, for-loop) flattened."""
    out = {}
    for name, task in dag["tasks"].items():
        out[name] = task
        comp = spec["components"][task["componentRef"]["name"]]
        if "dag" in comp:
            out.update(_tasks(spec, comp["dag"]))
    return out


def test_sweep_pipeline_compiles_with_parallel_for_and_a_pick_that_survives_failed_trials(tmp_path):
    import yaml

    from pipeline.__main__ import main

    out = tmp_path / "sweep.yaml"
    assert main(["compile", "--pipeline", "sweep", "--image", "example.org/srgan:abc", "--out", str(out)]) == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    tasks = _tasks(spec, spec["root"]["dag"])
    loop = next(t for n, t in tasks.items() if n.startswith("for-loop"))
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("trials")
    assert loop["iteratorPolicy"] == {"parallelismLimit": 2}
    block_name, block = next((n, t) for n, t in tasks.items() if "sweep-trials" in n)  # ingest once, before every trial
    assert "ingest" in block["dependentTasks"]
    loop_tasks = set(spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"])
    assert loop_tasks == {"start-trial", "train", "evaluate"}
    # pick_best runs after the trials whatever their fate and reads them from MLflow: no
    # dsl.Collected (KFP 2.14), no input from the loop (a failed trial produces none)
    pick = tasks["pick-best"]
    assert pick["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert block_name in pick["dependentTasks"]
    producers = {v.get("taskOutputParameter", v.get("taskOutputArtifact", {})).get("producerTask")
                 for kind in ("parameters", "artifacts") for v in pick["inputs"].get(kind, {}).values()}
    assert producers - {None} == {"ingest"}
    trials = spec["root"]["inputDefinitions"]["parameters"]["trials"]
    assert trials["parameterType"] == "LIST" and len(trials["defaultValue"]) == 4
    assert "finish" in tasks  # the exit task ends the MLflow parent run
    # train trains on a GPU node and gets the trial's overrides
    train_inputs = spec["components"]["comp-train"]["inputDefinitions"]["parameters"]
    assert "overrides" in train_inputs


def test_pick_best_chooses_among_the_trials_that_succeeded(tracking):
    """A KFP sweep with one failed trial (its train run FAILED, its evaluate never ran, a
    killed pod's run left RUNNING): pick_best's glue reads the trials from MLflow, picks
    the trial that succeeded, registers it, and leaves no run RUNNING."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from srcore import kfp_glue, sweep
    from srcore import tracking as tr

    cfg = build_config("smoke", overrides={"experiment_name": "kfp-sweep-glue", "sweep_metric": "test_psnr_y",
                                           "registered_model_name": "kfp-sweep-glue"})
    client = MlflowClient()
    parent = kfp_glue.connect(cfg, tracking, pipeline_run_id="sweep-run-1", first=True)
    try:
        good, _ = sweep.start_trial(cfg, parent, 0, TRIALS[0], folder="")
        bad, _ = sweep.start_trial(cfg, parent, 1, TRIALS[1], folder="")
        exp = client.get_run(parent).info.experiment_id
        # the good trial: a model logged by its train run, metrics by its evaluate run
        with mlflow.start_run(experiment_id=exp, tags={tr.PARENT_TAG: good, tr.STEP_TAG: "train"}) as train_run:
            info = mlflow.pyfunc.log_model(name="model", python_model=_identity_model())
            mlflow.set_tag("model_uri", info.model_uri)
        with mlflow.start_run(experiment_id=exp, tags={tr.PARENT_TAG: good, tr.STEP_TAG: "evaluate"}):
            mlflow.log_dict({"test_psnr_y": 24.0, "bicubic_psnr_y": 23.0}, "evaluation/metrics.json")
        # the failed trial: train failed on one attempt, a killed pod left the next RUNNING
        failed = client.create_run(exp, tags={tr.PARENT_TAG: bad, tr.STEP_TAG: "train"})
        client.set_terminated(failed.info.run_id, "FAILED")
        killed = client.create_run(exp, tags={tr.PARENT_TAG: bad, tr.STEP_TAG: "train"})

        assert sweep.trial_run_ids(parent) == [good, bad]
        results = [sweep.collect_trial(r) for r in sweep.trial_run_ids(parent)]
        out = sweep.finish_sweep(cfg, parent, results)
        assert out["best_trial_run_id"] == good and out["registered_version"] == "1"
        assert client.get_run(good).info.status == "FINISHED"
        assert client.get_run(bad).info.status == "FAILED"
        assert client.get_run(killed.info.run_id).info.status == "FAILED"
        # the sweep's verdict: a failed trial is tolerated, the pick (register) finished
        (ended,) = kfp_glue.finish(tracking, "sweep-run-1")
        assert ended["failed"] is False, ended
        runs = client.search_runs([exp], max_results=100)
        assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]
        assert client.get_model_version("kfp-sweep-glue", "1").run_id == train_run.info.run_id
    finally:
        tr.join_parent("")


def _identity_model():
    """A tiny pyfunc model: what a registered version needs to exist."""
    import mlflow

    class Identity(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    return Identity()


SWEEP_SCRIPT = """
import json, os, sys, tempfile, warnings
tempfile.tempdir = os.environ["TMPDIR"]
from kfp import local
from pipeline.dag import ClusterSettings
from pipeline.sweep import build_sweep_pipeline
root = sys.argv[1]
# the failed trial fails the loop, so kfp.local reports the run failed: not raised, the
# test reads the outcome from MLflow; no train retries (kfp.local sleeps their backoff)
local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root + "/pipeline_root",
           workspace_root=root + "/workspace", raise_on_error=False)
warnings.filterwarnings("ignore")
build_sweep_pipeline(image="srgan-celeba:local", cluster=False, parallelism=2,
                     settings=ClusterSettings(train_retries=0))(**json.loads(sys.argv[2]))
"""


@pytest.mark.slow
def test_kfp_local_two_trial_sweep(tmp_path):
    """Two trials train and evaluate; a third fails in train (a batch larger than the
    data). pick_best still picks among the two, one version is registered, the failed
    trial's run ends FAILED and no run stays RUNNING (issue 16: cluster events)."""
    import os
    import subprocess
    import sys
    import uuid

    from mlflow.tracking import MlflowClient

    repo = Path(__file__).resolve().parents[1]
    tag = uuid.uuid4().hex[:8]
    experiment, model_name = f"kfp-sweep-{tag}", f"srgan-kfp-sweep-{tag}"
    # a SQLite store with the experiment's artifacts in tmp_path (no server to start on a busy machine)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    client.create_experiment(experiment, artifact_location=(tmp_path / "artifacts").as_uri())
    params = {
        "trials": [{"learning_rate": 2e-4}, {"learning_rate": 5e-5}, {"steps_per_epoch": 0, "batch_size": 4096}],
        "preset": "smoke", "source": "demo", "experiment_name": experiment, "registered_model_name": model_name,
        "mlflow_tracking_uri": store, "volume_root": str(tmp_path / "volume"),
        "config_overrides": json.dumps({"epochs": 1, "pretrain_epochs": 0, "eval_every": 0, "steps_per_epoch": 2}),
    }
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_TRACKING_URI")}
    env.update({"TMPDIR": str(tmp), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    proc = subprocess.run([sys.executable, "-c", SWEEP_SCRIPT, str(tmp_path / "run"), json.dumps(params)],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=3600)
    (tmp_path / "sweep.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"

    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    (parent,) = [r for r in runs if r.data.tags.get("srgan.step") == "pipeline"]
    assert parent.info.status == "FINISHED"  # ended by the exit task
    all_trials = [r for r in runs if r.data.tags.get("srgan.step") == "trial"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in all_trials)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    (failed,) = [r for r in all_trials if r.info.status == "FAILED"]
    assert failed.data.tags["trial.batch_size"] == "4096"
    trials = [r for r in all_trials if r is not failed]
    assert sorted(r.info.run_name for r in trials) == ["lr=2e-4", "lr=5e-5"]
    for trial in trials:
        assert trial.info.status == "FINISHED" and {"test/psnr_y", "val/psnr_y"} <= set(trial.data.metrics)
        children = {r.data.tags.get("srgan.step") for r in runs
                    if r.data.tags.get("mlflow.parentRunId") == trial.info.run_id}
        assert children == {"train", "evaluate"}
    assert parent.data.tags["srgan.sweep.best_trial_run_id"] in {t.info.run_id for t in trials}
    expect.check_parent(client, parent, extra=("val/psnr_y",))  # the KFP sweep's parent is a row to compare too
    expect.check_names_distinct(runs)
    expect.check_metric_groups(runs)
    assert {"sweep/comparison.csv", "sweep/comparison.json"} <= {
        f.path for f in client.list_artifacts(parent.info.run_id, "sweep")}
    versions = client.search_model_versions(f"name = '{model_name}'")
    assert len(versions) == 1
    best = client.get_run(parent.data.tags["srgan.sweep.best_trial_run_id"])
    train_run = next(r for r in runs if r.data.tags.get("srgan.step") == "train"
                     and r.data.tags.get("mlflow.parentRunId") == best.info.run_id)
    assert versions[0].run_id == train_run.info.run_id


def test_sweep_warns_that_create_pvc_is_the_main_pipelines_only(caplog):
    """SRGAN_CREATE_PVC=true changes nothing in the sweep (it mounts the existing RWX claim):
    the compile says so instead of silently leaving the operator without a claim."""
    import logging

    from pipeline.dag import ClusterSettings
    from pipeline.sweep import build_sweep_pipeline

    with caplog.at_level(logging.WARNING, logger="pipeline.sweep"):
        build_sweep_pipeline(image="example.org/srgan:abc", cluster=True, settings=ClusterSettings(create_pvc=True))
    assert any("SRGAN_CREATE_PVC=true is for the main pipeline only" in r.getMessage() for r in caplog.records)
