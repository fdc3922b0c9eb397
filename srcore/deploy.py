"""Serve a registered model on the cluster: a KServe InferenceService over the exported
TensorFlow SavedModel (srcore/export.py), created or updated through the Kubernetes
Python client (CustomObjectsApi, the KFP convention for custom resources from a
component), then waited on until Ready.

The manifest (serving.kserve.io/v1beta1):
- predictor.model.modelFormat.name = tensorflow, so KServe picks its TF Serving runtime;
  storageUri = the SavedModel's model base path (the folder holding `<version>/saved_model.pb`):
  `cfg.deploy_storage_uri` when the operator set one (e.g. `pvc://<claim>/<path>` on the
  pipeline volume), else the registered version's MLflow artifact `savedmodel/` (train
  logs it there, see srcore.export.log_savedmodel); that must be a location KServe's
  storage initializer can read (s3://, gs://, https://, ...), not MLflow's proxied
  `mlflow-artifacts:/`.
- resources: requests = limits = deploy_cpu / deploy_memory (Guaranteed QoS); with
  deploy_gpus > 0 a `nvidia.com/gpu` limit and a toleration of the usual GPU taint.
- request size, in the places that honour it: the SavedModel itself refuses requests
  over serve_max_batch images or serve_max_pixels LR pixels per image (HTTP 400; an
  InferenceService and TF Serving's REST API have no body-size setting); Knative's
  `containerConcurrency` (deploy_concurrency) caps the requests one replica works on
  at once, so memory per replica is bounded by concurrency x the largest request;
  `predictor.timeout` and TF Serving's `--rest_api_timeout_in_ms` end a request after
  serve_max_seconds. The limits are also written as annotations for the operator.

Create or update: GET the InferenceService; 404 -> POST, else a JSON merge PATCH of
labels, annotations and spec (fields this module manages but no longer sets are
patched to null, so turning GPUs off really removes the GPU limit). Ready: the Ready
condition is True *for the new generation* (status.observedGeneration >=
metadata.generation), so a patch is not reported Ready on the strength of the previous
revision's status.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from srcore.config import Config

log = logging.getLogger(__name__)

GROUP = "serving.kserve.io"
VERSION = "v1beta1"
PLURAL = "inferenceservices"
KIND = "InferenceService"
GPU_RESOURCE = "nvidia.com/gpu"
SAVEDMODEL_ARTIFACT = "savedmodel"  # srcore.export.ARTIFACT_PATH (kept import-free: no TensorFlow here)
# schemes KServe's storage initializer downloads from
STORAGE_SCHEMES = ("s3", "gs", "pvc", "https", "http", "hdfs", "webhdfs", "oci", "hf")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
ENDPOINT_TAG = "deploy.endpoint"
SERVICE_TAG = "deploy.inference_service"
STORAGE_TAG = "deploy.storage_uri"

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


class DeployError(RuntimeError):
    """The InferenceService could not be created, updated, or did not become Ready."""


@dataclass(frozen=True)
class DeployResult:
    url: str
    namespace: str
    name: str
    action: str  # "created" | "patched"
    storage_uri: str
    generation: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- manifest ------------------------------------------------------------------------


def check_service_name(name: str) -> str:
    if not _DNS_LABEL.match(name or ""):
        raise ValueError(
            f"invalid parameter deploy_service_name={name!r}: an InferenceService name must be a DNS label "
            "(lowercase letters, digits and '-', starting with a letter, at most 63 characters)"
        )
    return name


def check_storage_uri(uri: str) -> str:
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme not in STORAGE_SCHEMES:
        raise ValueError(
            f"storageUri {uri!r} is not a location KServe can download from (schemes: "
            f"{', '.join(s + '://' for s in STORAGE_SCHEMES)}). Point MLflow's artifact store at object storage "
            "(mlflow server --default-artifact-root s3://... with --no-serve-artifacts) or set "
            "deploy_storage_uri, e.g. pvc://<claim>/<path to the folder holding 1/saved_model.pb>"
        )
    return uri


def build_manifest(cfg: Config, storage_uri: str, namespace: str,
                   model: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The InferenceService for `storage_uri` (the SavedModel's model base path).
    `model`: {"name", "version"} of the registered model, recorded as labels."""
    name = check_service_name(cfg.deploy_service_name)
    check_storage_uri(storage_uri)
    timeout_s = max(1, math.ceil(cfg.serve_max_seconds))
    resources: dict[str, dict[str, Any]] = {
        "requests": {"cpu": cfg.deploy_cpu, "memory": cfg.deploy_memory},
        "limits": {"cpu": cfg.deploy_cpu, "memory": cfg.deploy_memory},
    }
    predictor: dict[str, Any] = {
        "model": {
            "modelFormat": {"name": "tensorflow"},
            "storageUri": storage_uri,
            "args": [f"--rest_api_timeout_in_ms={timeout_s * 1000}"],
            "resources": resources,
        },
        "timeout": timeout_s,
    }
    if cfg.deploy_concurrency:
        predictor["containerConcurrency"] = int(cfg.deploy_concurrency)
    if cfg.deploy_runtime_version:
        predictor["model"]["runtimeVersion"] = cfg.deploy_runtime_version
    if cfg.deploy_gpus:
        resources["limits"][GPU_RESOURCE] = str(int(cfg.deploy_gpus))
        predictor["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "srgan-celeba"}
    if model:
        labels["srgan.registered-model-version"] = str(model.get("version", ""))
    annotations = {
        "srgan/registered-model": f"{model['name']}/{model['version']}" if model else "",
        "srgan/serve-max-batch": str(cfg.serve_max_batch),
        "srgan/serve-max-pixels": str(cfg.serve_max_pixels),
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "annotations": {k: v for k, v in annotations.items() if v}},
        "spec": {"predictor": predictor},
    }


def _patch_body(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch that makes the live object match `manifest` in the fields we
    manage: optional ones we do not set are nulled (merge patch keeps absent keys)."""
    predictor = dict(manifest["spec"]["predictor"])
    model = dict(predictor["model"])
    limits = dict(model["resources"]["limits"])
    limits.setdefault(GPU_RESOURCE, None)
    model["resources"] = {**model["resources"], "limits": limits}
    model.setdefault("runtimeVersion", None)
    predictor["model"] = model
    predictor.setdefault("tolerations", None)
    predictor.setdefault("containerConcurrency", None)
    meta = manifest["metadata"]
    return {"metadata": {"labels": meta["labels"], "annotations": meta["annotations"]},
            "spec": {"predictor": predictor}}


# ---- Kubernetes ------------------------------------------------------------------------


def resolve_namespace(cfg: Config) -> str:
    """cfg.deploy_namespace, else the pod's own namespace, else the kube context's, else 'default'."""
    if cfg.deploy_namespace:
        return cfg.deploy_namespace
    if SERVICE_ACCOUNT_NAMESPACE.is_file():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    try:
        from kubernetes import config as kube_config

        _, current = kube_config.list_kube_config_contexts()
        return current.get("context", {}).get("namespace") or "default"
    except Exception:  # noqa: BLE001 - no kube config at all: the Kubernetes default
        return "default"


def custom_objects_api(api_client: Any = None) -> Any:
    """CustomObjectsApi over `api_client`, else in-cluster credentials, else ~/.kube/config."""
    from kubernetes import client, config as kube_config

    if api_client is None:
        try:
            kube_config.load_incluster_config()
        except kube_config.ConfigException:
            try:
                kube_config.load_kube_config()
            except (kube_config.ConfigException, FileNotFoundError, OSError) as e:
                raise DeployError(f"no Kubernetes credentials: not in a pod and no usable kube config ({e})") from e
        api_client = client.ApiClient()
    return client.CustomObjectsApi(api_client)


def apply(api: Any, manifest: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Create the InferenceService or patch the existing one; returns (action, object)."""
    from kubernetes.client.exceptions import ApiException

    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    except ApiException as e:
        if e.status != 404:
            raise DeployError(f"reading InferenceService {ns}/{name} failed: HTTP {e.status} {e.reason}") from e
        try:
            return "created", api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, dict(manifest))
        except ApiException as e2:
            raise DeployError(f"creating InferenceService {ns}/{name} failed: HTTP {e2.status} {e2.body}") from e2
    try:
        return "patched", api.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, _patch_body(manifest))
    except ApiException as e:
        raise DeployError(f"patching InferenceService {ns}/{name} failed: HTTP {e.status} {e.body}") from e


def _ready(obj: Mapping[str, Any], generation: int) -> tuple[bool, str]:
    status = obj.get("status") or {}
    observed = status.get("observedGeneration")
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = conditions.get("Ready", {})
    if observed is not None and int(observed) < generation:
        return False, f"controller has not seen generation {generation} yet (observed {observed})"
    if ready.get("status") == "True" and status.get("url"):
        return True, "Ready"
    waiting = [f"{t}: {c.get('reason') or c.get('status')} {c.get('message') or ''}".strip()
               for t, c in conditions.items() if c.get("status") != "True"]
    return False, "; ".join(waiting) or "no status yet"


def wait_ready(api: Any, namespace: str, name: str, generation: int, timeout_s: float,
               poll_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Poll until Ready for `generation`; the object, or DeployError after `timeout_s`."""
    from kubernetes.client.exceptions import ApiException

    deadline = clock() + timeout_s
    last = "not polled"
    while True:
        try:
            obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            ok, last = _ready(obj, generation)
            if ok:
                return obj
        except ApiException as e:  # a transient API error is a reason to keep waiting, not to fail
            last = f"HTTP {e.status} {e.reason}"
        if clock() >= deadline:
            raise DeployError(
                f"InferenceService {namespace}/{name} not Ready after {timeout_s:.0f}s: {last}. "
                f"Inspect it with: kubectl -n {namespace} describe inferenceservice {name}"
            )
        log.info("waiting for InferenceService %s/%s: %s", namespace, name, last)
        time.sleep(poll_s)


def deploy(cfg: Config, storage_uri: str, model: Mapping[str, str] | None = None, api_client: Any = None,
           poll_s: float = 5.0) -> DeployResult:
    """Create or update the InferenceService serving `storage_uri` and wait until Ready."""
    namespace = resolve_namespace(cfg)
    manifest = build_manifest(cfg, storage_uri, namespace, model)
    api = custom_objects_api(api_client)
    action, obj = apply(api, manifest)
    generation = int((obj.get("metadata") or {}).get("generation") or 1)
    log.info("%s InferenceService %s/%s (generation %d) for %s", action, namespace, manifest["metadata"]["name"],
             generation, storage_uri)
    ready = wait_ready(api, namespace, manifest["metadata"]["name"], generation, cfg.deploy_wait_seconds, poll_s)
    url = ready["status"]["url"]
    log.info("InferenceService %s/%s is Ready at %s", namespace, manifest["metadata"]["name"], url)
    return DeployResult(url=url, namespace=namespace, name=manifest["metadata"]["name"], action=action,
                        storage_uri=storage_uri, generation=generation)


# ---- MLflow ---------------------------------------------------------------------------


def resolve_version(cfg: Config, model_version: str = "") -> tuple[str, str]:
    """(name, version) of the registered model to serve: `model_version` (a number) or
    the `champion` alias when empty."""
    from mlflow.tracking import MlflowClient

    from srcore.registry import CHAMPION_ALIAS

    name = cfg.registered_model_name
    if model_version:
        return name, str(model_version)
    return name, str(MlflowClient().get_model_version_by_alias(name, CHAMPION_ALIAS).version)


def storage_uri_for(cfg: Config, name: str, version: str) -> str:
    """cfg.deploy_storage_uri, else the `savedmodel/` artifact of the run that logged the version."""
    if cfg.deploy_storage_uri:
        return check_storage_uri(cfg.deploy_storage_uri)
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    mv = client.get_model_version(name, version)
    if not mv.run_id:
        raise ValueError(f"registered model {name} version {version} has no run; set deploy_storage_uri")
    if not client.list_artifacts(mv.run_id, SAVEDMODEL_ARTIFACT):
        raise ValueError(
            f"run {mv.run_id} of {name} version {version} has no '{SAVEDMODEL_ARTIFACT}/' artifact (train logs it "
            "with srcore.export.log_savedmodel); export one (`srgan export`) and set deploy_storage_uri to it"
        )
    artifact_root = client.get_run(mv.run_id).info.artifact_uri.rstrip("/")
    return check_storage_uri(f"{artifact_root}/{SAVEDMODEL_ARTIFACT}")


def tag_version(name: str, version: str, result: DeployResult) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.set_model_version_tag(name, version, ENDPOINT_TAG, result.url)
    client.set_model_version_tag(name, version, SERVICE_TAG, f"{result.namespace}/{result.name}")
    client.set_model_version_tag(name, version, STORAGE_TAG, result.storage_uri)


def deploy_step(cfg: Config, model_version: str = "", namespace: str = "", service_name: str = "",
                api_client: Any = None, poll_s: float = 5.0) -> dict[str, Any]:
    """The `deploy` step: serve registered version `model_version` (default: the
    champion) on KServe, tag the version with the endpoint, tracked in MLflow.
    `namespace` / `service_name` override cfg.deploy_namespace / deploy_service_name."""
    import mlflow

    from srcore import tracking
    from srcore.config import apply_overrides

    cfg = apply_overrides(cfg, {"deploy_namespace": namespace, "deploy_service_name": service_name})

    name, version = resolve_version(cfg, model_version)
    storage_uri = storage_uri_for(cfg, name, version)
    with tracking.step_run(cfg, "deploy"):
        result = deploy(cfg, storage_uri, {"name": name, "version": version}, api_client, poll_s)
        tag_version(name, version, result)
        mlflow.set_tags({ENDPOINT_TAG: result.url, SERVICE_TAG: f"{result.namespace}/{result.name}",
                         "registered_model_version": version})
    return {**result.to_dict(), "registered_model_name": name, "registered_model_version": version}
