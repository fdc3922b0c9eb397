"""Cluster events at the level of the KFP glue (srcore.kfp_glue), against a real
`mlflow server`:

- Argo retries a failed ingest pod within the same KFP run: the retry joins the parent
  run its first attempt opened (found by the tag srgan.kfp_run_id) instead of opening
  another one.
- Argo does not retry a pod deleted by a node drain or preemption (it ends as Error):
  the operator resubmits with the same `checkpoint_dir`, and the new KFP run's train
  resumes from the checkpoints into the same MLflow training run.
"""

from __future__ import annotations

import json
import uuid

import pytest


@pytest.fixture
def glue(server_tracking):
    from srcore import tracking

    yield server_tracking
    tracking.join_parent("")  # the parent is process state: leave none to later tests


def _cfg(volume, run_id, experiment, checkpoint_dir="", **overrides):
    from srcore import kfp_glue

    return kfp_glue.pipeline_config("smoke", json.dumps(overrides), str(volume), run_id, checkpoint_dir,
                                    source="demo", experiment_name=experiment)


def _parents(client, run_id):
    from srcore.tracking import KFP_RUN_TAG, STEP_TAG

    return client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.`{KFP_RUN_TAG}` = '{run_id}' and tags.`{STEP_TAG}` = 'pipeline'")


def test_ingest_retry_reuses_its_parent_run(glue, tmp_path):
    from mlflow.tracking import MlflowClient

    from srcore import kfp_glue, tracking

    client = MlflowClient(glue)
    experiment, kfp_run = f"retry-{uuid.uuid4().hex[:8]}", f"kfp-{uuid.uuid4()}"
    cfg = _cfg(tmp_path, kfp_run, experiment)
    first = kfp_glue.connect(cfg, glue, pipeline_run_id=kfp_run, first=True)
    retry = kfp_glue.connect(cfg, glue, pipeline_run_id=kfp_run, first=True)  # ingest's retry, same KFP run
    assert retry == first
    assert [r.info.run_id for r in _parents(client, kfp_run)] == [first]

    # the exit task ends it (through tracking's protocol, whatever finish's signature)
    assert tracking.finish_parent(kfp_run, failed=False) == [first]
    assert client.get_run(first).info.status == "FINISHED"
    # an ended parent is never reopened: only a RUNNING one belongs to a retry
    again = kfp_glue.connect(cfg, glue, pipeline_run_id=kfp_run, first=True)
    assert again != first

    # KFP < 2.5 passes '{{$.pipeline_job_uuid}}' through literally: it names no run, so no reuse
    literal = "{{$.pipeline_job_uuid}}"
    a = kfp_glue.connect(cfg, glue, pipeline_run_id=literal, first=True)
    b = kfp_glue.connect(cfg, glue, pipeline_run_id=literal, first=True)
    assert a != b
    for run_id in (a, b, again):
        client.set_terminated(run_id, "KILLED")


def test_resubmission_with_the_same_checkpoint_dir_resumes_into_the_same_mlflow_run(glue, tmp_path, smoke_data,
                                                                                     monkeypatch):
    """Run A's train dies after epoch 1's checkpoint (like a pod deleted by a drain, which
    Argo does not retry); the exit task ends A's parent FAILED. Run B, submitted with the
    same checkpoint_dir, trains into the same folder and the same MLflow run, from epoch 1."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from srcore import kfp_glue, steps, tracking, train as train_mod

    client = MlflowClient(glue)
    experiment = f"resubmit-{uuid.uuid4().hex[:8]}"
    volume, checkpoints = tmp_path / "volume", tmp_path / "volume" / "checkpoints" / "srgan"
    knobs = dict(data_dir=str(smoke_data), pretrain_epochs=1, epochs=1, checkpoint_every=1, eval_every=0)

    cfg_a = _cfg(volume, "kfp-run-a", experiment, str(checkpoints), **knobs)
    cfg_b = _cfg(volume, "kfp-run-b", experiment, str(checkpoints), **knobs)
    assert cfg_a.model_dir == cfg_b.model_dir == str(checkpoints)  # the checkpoint location is the key
    # a relative checkpoint_dir is a folder on the volume, as `source` is (not the pod's home)
    assert _cfg(volume, "kfp-run-c", experiment, "checkpoints/srgan", **knobs).model_dir == str(checkpoints)

    parent_a = kfp_glue.connect(cfg_a, glue, pipeline_run_id="kfp-run-a", first=True)
    monkeypatch.setenv(train_mod.FAULT_ENV, "1")
    with pytest.raises(RuntimeError, match="injected failure after epoch 1"):
        steps.run("train", cfg_a)
    while mlflow.active_run():
        mlflow.end_run("FAILED")
    train_run = (checkpoints / train_mod.RUN_ID_FILE).read_text().strip()  # stored beside the checkpoints
    tracking.finish_parent("kfp-run-a", failed=True, detail="train: pod deleted")  # the exit task
    assert client.get_run(parent_a).info.status == "FAILED"

    parent_b = kfp_glue.connect(cfg_b, glue, pipeline_run_id="kfp-run-b", first=True)
    assert parent_b != parent_a
    out = steps.run("train", cfg_b)
    assert out["run_id"] == train_run and out["epochs_done"] == 2
    run = client.get_run(train_run)
    assert run.info.status == "FINISHED" and run.data.tags["resumed_from_epoch"] == "1"
    trains = client.search_runs([run.info.experiment_id], "tags.`srgan.step` = 'train'")
    assert [r.info.run_id for r in trains] == [train_run]  # one MLflow training run across both KFP runs
    tracking.finish_parent("kfp-run-b", failed=False)
