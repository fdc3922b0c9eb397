"""KFP exit task (pipeline glue, not a step): end the pipeline's MLflow parent run."""

from kfp import dsl

from components._common import component


@component
def finish(status: dsl.PipelineTaskFinalStatus, mlflow_tracking_uri: str = "", pipeline_run_id: str = ""):
    """FAILED when any step failed, FINISHED when all succeeded; tags the KFP run's state."""
    from srcore import kfp_glue

    kfp_glue.finish(mlflow_tracking_uri, pipeline_run_id, status.state, status.error_message or "")
