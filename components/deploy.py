"""KFP component of step `deploy` (srcore.deploy.deploy_step): serve a registered model
version on KServe. The pipeline runs it only when register made a new champion and the
`deploy` parameter is true; the pod's service account needs create/get/patch on
inferenceservices.serving.kserve.io in `namespace`."""

from typing import NamedTuple

from components._common import component


@component
def deploy(
    config_json: str,
    model_version: str = "",
    namespace: str = "",
    service_name: str = "",
    mlflow_tracking_uri: str = "",
    parent_run_id: str = "",
) -> NamedTuple("DeployOutputs", [("url", str), ("inference_service", str)]):
    """Create or update InferenceService `service_name` in `namespace` (defaults: the
    Config's deploy_* fields) for registered version `model_version` (default: the
    champion), wait until Ready, tag the version with the endpoint; returns the URL."""
    from collections import namedtuple

    from srcore import kfp_glue, steps

    cfg = kfp_glue.step_config(config_json)
    kfp_glue.connect(cfg, mlflow_tracking_uri, parent_run_id)
    out = steps.run("deploy", cfg, model_version=model_version, namespace=namespace, service_name=service_name)
    return namedtuple("DeployOutputs", ["url", "inference_service"])(out["url"], f"{out['namespace']}/{out['name']}")
