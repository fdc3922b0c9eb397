"""KFP component of the sweep pipeline (glue, not a step of srcore.steps): pick the best
trial by `sweep_metric` and register only it (srcore.sweep.finish_sweep)."""

from typing import List, NamedTuple

from kfp.dsl import Input, Metrics

from components._common import component


@component
def pick_best(
    trial_run_ids: List[str],
    metrics: Input[List[Metrics]],
    config_json: str,
    manifest_hash: str = "",
    mlflow_tracking_uri: str = "",
    parent_run_id: str = "",
) -> NamedTuple("PickBestOutputs", [("best_trial_run_id", str), ("best_model_uri", str), ("version", str),
                                    ("champion", bool), ("reason", str)]):
    """`trial_run_ids` and `metrics` are collected from every ParallelFor iteration.
    Each trial's model URI and metrics.json are read back from its MLflow runs (the
    collected lists carry no promise of matching order; `metrics` makes this task wait
    for every evaluation). Registers the best through the registry's champion gate and
    logs the comparison table on the parent run."""
    from collections import namedtuple

    from srcore import kfp_glue, sweep

    cfg = kfp_glue.step_config(config_json)
    kfp_glue.connect(cfg, mlflow_tracking_uri, parent_run_id)
    results = [sweep.collect_trial(run_id) for run_id in trial_run_ids]
    out = sweep.finish_sweep(cfg, parent_run_id, results, manifest_hash)
    return namedtuple("PickBestOutputs", ["best_trial_run_id", "best_model_uri", "version", "champion", "reason"])(
        out["best_trial_run_id"], out["best_model_uri"], out["registered_version"], out["champion"], out["reason"])
