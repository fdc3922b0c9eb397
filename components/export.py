"""KFP component of step `export` (srcore.export.export_step): the serving SavedModel of a
trained generator, written in the TF Serving / KServe layout on the shared volume."""

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
    mlflow_tracking_uri: str = "",
    parent_run_id: str = "",
) -> NamedTuple("ExportOutputs", [("model_base_path", str), ("savedmodel_dir", str)]):
    """Writes `<out>/<model_name>/<export_version>/saved_model.pb` (`out` default: `<model_dir>/serving`
    on the volume). `model_base_path` is what KServe's storageUri names, e.g.
    pvc://<claim>/<model_base_path relative to the volume>. `savedmodel` is a small pointer."""
    from collections import namedtuple
    from pathlib import Path

    from srcore import kfp_glue, steps

    cfg = kfp_glue.step_config(config_json)
    kfp_glue.connect(cfg, mlflow_tracking_uri, parent_run_id)
    out = out or str(Path(cfg.model_dir) / "serving")
    result = steps.run("export", cfg, model=model.metadata.get("generator") or model.path, out=out, model_name=model_name)
    savedmodel.metadata.update(kfp_glue.artifact_metadata(
        result["model_base_path"], framework="tensorflow-savedmodel", signature=result["signature"],
        version=result["version"], max_pixels=result["max_pixels"], max_batch=result["max_batch"]))
    kfp_glue.write_pointer(savedmodel.path, savedmodel.metadata)
    return namedtuple("ExportOutputs", ["model_base_path", "savedmodel_dir"])(
        result["model_base_path"], result["savedmodel_dir"])
