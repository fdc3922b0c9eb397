"""KFP component: train the SRGAN on a Dataset artifact into a Model artifact (srcore.train.train)."""

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Model, Output

from components._common import component


@component
def train(
    dataset: Input[Dataset],
    model: Output[Model],
    preset: str = "",
    config_overrides: str = "",
    source: str = "",
    limit: str = "",
    test_count: str = "",
    epochs: str = "",
    pretrain_epochs: str = "",
    batch_size: str = "",
    content_loss: str = "",
    registered_model_name: str = "",
    experiment_name: str = "",
    mlflow_tracking_uri: str = "",
    parent_run_id: str = "",
    pipeline_run_id: str = "",
) -> NamedTuple("TrainOutputs", [("model_uri", str), ("run_id", str), ("parent_run_id", str)]):
    """`model` is the training folder (checkpoints/, generator.keras, mlflow_run_id).

    Returns the MLflow model URI of the logged upscaler, the training run, and the
    parent run the later steps use (a new one when ingest came from the cache).
    """
    from collections import namedtuple

    from srcore import steps_env
    from srcore.train import train as train_step

    cfg = steps_env.step_config(
        preset, config_overrides, source=source, limit=limit, test_count=test_count, epochs=epochs,
        pretrain_epochs=pretrain_epochs, batch_size=batch_size, content_loss=content_loss,
        registered_model_name=registered_model_name, experiment_name=experiment_name,
    )
    parent = steps_env.prepare_step(cfg, mlflow_tracking_uri, parent_run_id, pipeline_run_id)
    result = train_step(cfg, data_dir=dataset.path, model_dir=model.path)
    model.metadata.update({"framework": "keras", "mlflow_model_uri": result.model_uri,
                           "mlflow_run_id": result.run_id, "epochs_done": result.epochs_done})
    return namedtuple("TrainOutputs", ["model_uri", "run_id", "parent_run_id"])(result.model_uri, result.run_id, parent)
