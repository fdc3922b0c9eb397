"""KFP component of the sweep pipeline (glue, not a step of srcore.steps): pick the best
trial by `sweep_metric` and register only it (srcore.sweep.finish_sweep)."""

from typing import NamedTuple

from components._common import component


@component
def pick_best(
    config_json: str = "",
    manifest_hash: str = "",
    mlflow_tracking_uri: str = "",
    parent_run_id: str = "",
) -> NamedTuple("PickBestOutputs", [("best_trial_run_id", str), ("best_model_uri", str), ("version", str),
                                    ("champion", bool), ("reason", str)]):
    """Runs after the trials whatever their fate. The trials are the trial runs under
    `parent_run_id` in MLflow (srcore.sweep.trial_run_ids), each read back with its model
    URI and metrics.json: a failed trial has none and never wins, and its runs are ended
    FAILED. Registers the best through the registry's champion gate and logs the
    comparison table on the parent run. (Defaults '' only because KFP requires them of a
    task that ignores upstream failures; without ingest's outputs there is nothing to pick.)"""
    from collections import namedtuple

    from srcore import kfp_glue, sweep

    if not (config_json and parent_run_id):
        raise SystemExit("no sweep to pick from: ingest did not finish (no config_json / parent_run_id)")
    cfg = kfp_glue.step_config(config_json)
    kfp_glue.connect(cfg, mlflow_tracking_uri, parent_run_id)
    results = [sweep.collect_trial(run_id) for run_id in sweep.trial_run_ids(parent_run_id)]
    out = sweep.finish_sweep(cfg, parent_run_id, results, manifest_hash)
    return namedtuple("PickBestOutputs", ["best_trial_run_id", "best_model_uri", "version", "champion", "reason"])(
        out["best_trial_run_id"], out["best_model_uri"], out["registered_version"], out["champion"], out["reason"])
