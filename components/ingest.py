"""KFP component: ingest `source` into a Dataset artifact (srcore.workflow.ingest_step)."""

from typing import NamedTuple

from kfp.dsl import Dataset, Output

from components._common import component


@component
def ingest(
    dataset: Output[Dataset],
    preset: str = "",
    config_overrides: str = "",
    source: str = "",
    limit: str = "",
    test_count: str = "",
    experiment_name: str = "",
    mlflow_tracking_uri: str = "",
    parent_run_id: str = "",
) -> NamedTuple("IngestOutputs", [("parent_run_id", str), ("content_hash", str)]):
    """Select, crop and split the faces; `dataset` is the ingest output folder
    (manifest.json, train/*.tfrecord, test/*.png).

    Only the parameters that shape the data reach this step, so that changing training
    parameters keeps its cache. Returns the MLflow parent run it opened ('' under
    KFP's MLflow plugin) and the data's content hash.
    """
    from collections import namedtuple

    from srcore import steps_env
    from srcore.workflow import ingest_step

    cfg = steps_env.step_config(
        preset, config_overrides, source=source, limit=limit, test_count=test_count, experiment_name=experiment_name
    )
    parent = steps_env.prepare_step(cfg, mlflow_tracking_uri, parent_run_id)
    manifest = ingest_step(cfg, out_dir=dataset.path)
    dataset.metadata.update({"content_hash": manifest["content_hash"], **manifest["counts"]})
    return namedtuple("IngestOutputs", ["parent_run_id", "content_hash"])(parent, manifest["content_hash"])
