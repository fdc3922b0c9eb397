"""KFP component of step `deploy` (srcore.deploy.deploy_step): serve a registered model
version on KServe with the project's image (srcore.server). The pipeline runs it only when
register made a new champion and the `deploy` parameter is true, after the export task
wrote that version's SavedModel; the pod's service account needs get, create and patch on
inferenceservices.serving.kserve.io in `namespace` (pipeline/k8s/)."""

from typing import NamedTuple

from components._common import component


@component
def deploy(
    config_json: str,
    model_version: str = "",
    storage_uri: str = "",
    namespace: str = "",
    service_name: str = "",
    image: str = "",
    gpu_image: str = "",
    mlflow_tracking_uri: str = "",
    parent_run_id: str = "",
) -> NamedTuple("DeployOutputs", [("url", str), ("inference_service", str)]):
    """Create or update InferenceService `service_name` in `namespace` (defaults: the
    Config's deploy_* fields) serving `storage_uri` for registered version `model_version`
    (default: the champion) with `image` (`gpu_image` when deploy_gpus > 0; the Config's
    deploy_image wins over both), wait until Ready, tag the version with the
    endpoint; returns the URL."""
    from collections import namedtuple

    from srcore import kfp_glue, steps

    cfg = kfp_glue.step_config(config_json)
    kfp_glue.connect(cfg, mlflow_tracking_uri, parent_run_id)
    out = steps.run("deploy", cfg, model_version=model_version, storage_uri=storage_uri, namespace=namespace,
                    service_name=service_name, image=image, gpu_image=gpu_image)
    return namedtuple("DeployOutputs", ["url", "inference_service"])(out["url"], f"{out['namespace']}/{out['name']}")
