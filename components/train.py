"""KFP component of step `train` (srcore.steps.train_step)."""

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Model, Output

from components._common import component


@component
def train(
    dataset: Input[Dataset],
    model: Output[Model],
    config_json: str,
    overrides: str = "",
    mlflow_tracking_uri: str = "",
    parent_run_id: str = "",
) -> NamedTuple("TrainOutputs", [("config_json", str), ("model_uri", str), ("run_id", str)]):
    """Train on the ingest output named in `config_json` into its `model_dir` on the volume
    (checkpoints there: a retried pod resumes into the same MLflow run). `overrides`: a
    JSON object of Config fields on top (sweep trials). `model` is a small pointer
    (volume path, MLflow model URI); `config_json` out is the resolved Config incl. overrides."""
    from collections import namedtuple

    from srcore import kfp_glue, steps

    cfg = kfp_glue.step_config(config_json)
    kfp_glue.check_volume(kfp_glue.step_config(config_json, overrides), "train")
    kfp_glue.connect(cfg, mlflow_tracking_uri, parent_run_id)
    out = steps.run("train", cfg, overrides=overrides)
    model.metadata.update(kfp_glue.artifact_metadata(
        out["model_dir"], framework="keras", generator=out["generator"], mlflow_model_uri=out["model_uri"],
        mlflow_run_id=out["run_id"], epochs_done=out["epochs_done"]))
    kfp_glue.write_pointer(model.path, model.metadata)
    return namedtuple("TrainOutputs", ["config_json", "model_uri", "run_id"])(
        out["config_json"], out["model_uri"], out["run_id"])
