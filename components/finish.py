"""KFP exit task (pipeline glue, not a step): end the pipeline's MLflow parent run."""

from components._common import component


@component
def finish(mlflow_tracking_uri: str = "", pipeline_run_id: str = "", run_key: str = "", final_step: str = "register"):
    """End this run's MLflow parent run FAILED or FINISHED as the steps' own MLflow runs
    say (srcore.kfp_glue.finish): no PipelineTaskFinalStatus, which KFP backends before
    2.14 refuse. Fails itself when a step failed, so that the KFP run is FAILED also on
    backends before 2.5, which report a run by its exit task (pipeline/support.py)."""
    from srcore import kfp_glue

    ended = kfp_glue.finish(mlflow_tracking_uri, pipeline_run_id, run_key, final_step)
    failed = [e for e in ended if e["failed"]]
    if failed:
        raise SystemExit(f"the pipeline failed: {failed[0]['why']} (MLflow parent run {failed[0]['run_id']} ended "
                         "FAILED)")
