"""KFP component of step `export` (srcore.export.export_step): the serving SavedModel of a
trained generator, one folder per registered version (`<name>/<version>/`), where KServe's
storage initializer reads it: the shared volume (pvc://<claim>/serving/...) or
deploy_storage_uri s3:// / gs://. The pipeline runs it in the deploy branch, before deploy."""

from typing import NamedTuple

from kfp.dsl import Input, Model, Output

from components._common import component


@component
def export(
    model: Input[Model],
    savedmodel: Output[Model],
    config_json: str,
    out: str = "",
    model_name: str = "",
    model_version: str = "",
    volume_root: str = "",
    volume_claim: str = "",
    mlflow_tracking_uri: str = "",
    parent_run_id: str = "",
) -> NamedTuple("ExportOutputs", [("storage_uri", str), ("savedmodel_dir", str)]):
    """Writes the SavedModel of `model` for registered version `model_version`; returns
    `storage_uri` (what deploy's InferenceService names). `savedmodel` is a small pointer."""
    from collections import namedtuple

    from srcore import kfp_glue, steps

    cfg = kfp_glue.step_config(config_json)
    kfp_glue.connect(cfg, mlflow_tracking_uri, parent_run_id)
    result = steps.run("export", cfg, model=model.metadata.get("generator") or model.path, out=out,
                       model_name=model_name, model_version=model_version, volume_root=volume_root,
                       volume_claim=volume_claim)
    savedmodel.metadata.update(kfp_glue.artifact_metadata(
        result["savedmodel_dir"], framework="tensorflow-savedmodel", signature=result["signature"],
        version=result["version"], storage_uri=result["storage_uri"], max_pixels=result["max_pixels"],
        max_batch=result["max_batch"]))
    kfp_glue.write_pointer(savedmodel.path, savedmodel.metadata)
    return namedtuple("ExportOutputs", ["storage_uri", "savedmodel_dir"])(result["storage_uri"],
                                                                           result["savedmodel_dir"])
