"""KFP component: register the trained model with its metrics (srcore.workflow.register_step)."""

from typing import NamedTuple

from kfp.dsl import Input, Metrics

from components._common import component


@component
def register(
    metrics: Input[Metrics],
    model_uri: str,
    manifest_hash: str = "",
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
) -> NamedTuple("RegisterOutputs", [("version", str), ("champion", bool), ("reason", str)]):
    """A new version of `registered_model_name` from `model_uri`; the champion gate
    decides the `champion` alias. Returns the version, whether it became champion, and why."""
    from collections import namedtuple

    from srcore import steps_env
    from srcore.workflow import register_step

    cfg = steps_env.step_config(
        preset, config_overrides, source=source, limit=limit, test_count=test_count, epochs=epochs,
        pretrain_epochs=pretrain_epochs, batch_size=batch_size, content_loss=content_loss,
        registered_model_name=registered_model_name, experiment_name=experiment_name,
    )
    steps_env.prepare_step(cfg, mlflow_tracking_uri, parent_run_id, pipeline_run_id)
    result = register_step(cfg, model_uri, steps_env.read_metrics(metrics.path, metrics.metadata),
                           manifest_hash or None)
    return namedtuple("RegisterOutputs", ["version", "champion", "reason"])(
        str(result.version), bool(result.champion), str(result.reason))
