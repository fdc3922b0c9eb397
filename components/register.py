"""KFP component of step `register` (srcore.steps.register_step)."""

from typing import NamedTuple

from kfp.dsl import Input, Metrics

from components._common import component


@component
def register(
    metrics: Input[Metrics],
    config_json: str,
    model_uri: str,
    manifest_hash: str = "",
    mlflow_tracking_uri: str = "",
    parent_run_id: str = "",
) -> NamedTuple("RegisterOutputs", [("version", str), ("champion", bool), ("reason", str)]):
    """A version of `registered_model_name` from `model_uri`; the champion gate decides the
    `champion` alias. Returns the version, whether it became champion, and why."""
    from collections import namedtuple

    from srcore import kfp_glue, steps

    cfg = kfp_glue.step_config(config_json)
    kfp_glue.connect(cfg, mlflow_tracking_uri, parent_run_id)
    out = steps.run("register", cfg, model_uri=model_uri, metrics=kfp_glue.read_metrics(metrics.path, metrics.metadata),
                    manifest_hash=manifest_hash)
    return namedtuple("RegisterOutputs", ["version", "champion", "reason"])(out["version"], out["champion"], out["reason"])
