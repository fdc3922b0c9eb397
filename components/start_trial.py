"""KFP component of the sweep pipeline (glue, not a step of srcore.steps): open one
trial's MLflow run under the sweep's parent run (srcore.sweep.start_kfp_trial)."""

from typing import NamedTuple

from components._common import component


@component
def start_trial(
    config_json: str,
    trial: dict,
    trials: list,
    mlflow_tracking_uri: str = "",
    parent_run_id: str = "",
) -> NamedTuple("TrialOutputs", [("trial_run_id", str), ("overrides", str), ("name", str)]):
    """`trial`: this iteration's Config overrides; `trials`: the whole list (the trial's
    place in it is its index). Returns the trial's run (train and evaluate log as its
    children), train's `overrides` (the trial plus folders of its own) and its name."""
    from collections import namedtuple

    from srcore import kfp_glue, sweep

    cfg = kfp_glue.step_config(config_json)
    kfp_glue.connect(cfg, mlflow_tracking_uri, parent_run_id)
    run_id, overrides, name = sweep.start_kfp_trial(cfg, parent_run_id, trials, trial)
    return namedtuple("TrialOutputs", ["trial_run_id", "overrides", "name"])(run_id, overrides, name)
