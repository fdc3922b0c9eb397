"""KFP component of step `ingest` (srcore.steps.ingest_step), the pipeline's first step:
it resolves the Config once and hands it on as `config_json`."""

from typing import NamedTuple

from kfp.dsl import Dataset, Output

from components._common import component


@component
def ingest(
    dataset: Output[Dataset],
    preset: str = "",
    config_overrides: str = "",
    # the pipeline's named Config parameters: KFP needs them spelled out here and in
    # pipeline/dag.py (srcore.kfp_glue.PIPELINE_CONFIG_PARAMS; a test keeps them equal)
    source: str = "",
    limit: str = "",
    test_count: str = "",
    epochs: str = "",
    pretrain_epochs: str = "",
    batch_size: str = "",
    content_loss: str = "",
    registered_model_name: str = "",
    experiment_name: str = "",
    require_gpu: str = "",
    mlflow_tracking_uri: str = "",
    pipeline_run_id: str = "",
    volume_root: str = "",
    checkpoint_dir: str = "",
    run_key: str = "",
) -> NamedTuple("IngestOutputs", [("config_json", str), ("data_dir", str), ("content_hash", str),
                                  ("parent_run_id", str)]):
    """Select, crop and split the faces into `<volume_root>/data/...` (train shards, test
    PNGs, manifest.json); `dataset` is a small pointer to it (path and content hash in
    its metadata). Opens the MLflow parent run of this KFP run (the exit task ends it),
    tagged with the run key (`run_key`, else the KFP run id: srcore.kfp_glue.run_key)
    that also names the run's folder on the volume."""
    from collections import namedtuple

    from srcore import kfp_glue, steps

    key = kfp_glue.run_key(run_key, pipeline_run_id)
    cfg = kfp_glue.pipeline_config(
        preset, config_overrides, volume_root, key, checkpoint_dir, source=source, limit=limit,
        test_count=test_count, epochs=epochs, pretrain_epochs=pretrain_epochs, batch_size=batch_size,
        content_loss=content_loss, registered_model_name=registered_model_name, experiment_name=experiment_name,
        require_gpu=require_gpu,
    )
    kfp_glue.check_volume(cfg, "ingest")  # before the MLflow parent run: a root-owned volume fails here
    parent = kfp_glue.connect(cfg, mlflow_tracking_uri, pipeline_run_id=key, first=True)
    out = steps.run("ingest", cfg)
    dataset.metadata.update(kfp_glue.artifact_metadata(out["data_dir"], out["content_hash"], **out["counts"]))
    kfp_glue.write_pointer(dataset.path, dataset.metadata)
    return namedtuple("IngestOutputs", ["config_json", "data_dir", "content_hash", "parent_run_id"])(
        out["config_json"], out["data_dir"], out["content_hash"], parent)
