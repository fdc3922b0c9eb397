"""Serve a registered model on the cluster: a KServe InferenceService whose predictor is
the project's own image running srcore.server (a bounded KServe-v1 server) over the
version's exported SavedModel, created or updated through the Kubernetes Python client
(CustomObjectsApi, the KFP convention for custom resources from a component), then
waited on until Ready.

Why a custom predictor and not KServe's `tensorflow` runtime (TF Serving): the
runtime's default image is TF Serving 2.6 (2021), which is not known to load a
TensorFlow 2.21 SavedModel, and proving any TF Serving release loads it would need that
release in CI; the project's image has the very TensorFlow that wrote the export, and
tests/test_server.py runs the same server on loopback. The server also bounds what TF
Serving cannot (body size before reading, concurrency, one deadline that stops the
work, uint8-only pixels): see srcore/server.py.

The manifest (serving.kserve.io/v1beta1, checked against the vendored CRD excerpt in
tests/data/; supported KServe 0.12 to 0.16, see pipeline/README.md):
- predictor.containers[0] named `kserve-container` (the name KServe looks for), the
  project's image, `python -m srcore.server --model /mnt/models ...` with the serve_*
  limits as flags, port 8080, a readiness probe on `GET /v1/models/<name>`;
- env STORAGE_URI = the version's SavedModel folder (`pvc://<claim>/serving/<name>/<version>`
  or `s3://...`): for a custom container KServe's storage initializer reads the URI from
  this variable and puts the files in /mnt/models (pkg/apis/serving/v1beta1/
  predictor_custom.go GetStorageUri, constants.CustomSpecStorageUriEnvVarKey);
- serviceAccountName = deploy_service_account: for s3:// a service account whose Secret
  carries KServe's serving.kserve.io/s3-endpoint (and -usehttps, -region) annotations;
- resources: requests = limits = deploy_cpu / deploy_memory (Guaranteed QoS); with
  deploy_gpus > 0 a `nvidia.com/gpu` limit and a toleration of the usual GPU taint;
- containerConcurrency (deploy_concurrency): Knative's queue-proxy holds further
  requests in its queue instead of passing them on; `timeout` a little over
  serve_max_seconds, so the server's own 504 answers first.

Create or update: GET the InferenceService; 404 -> POST, else a JSON merge PATCH of
labels, annotations and spec (fields this module manages but no longer sets are
patched to null, so turning GPUs off really removes the GPU limit). Ready: the Ready
condition is True *for the new generation* (status.observedGeneration >=
metadata.generation), so a patch is not reported Ready on the strength of the previous
revision's status. Deadline: deploy_wait_seconds bounds the whole deploy, and every API
call carries a `_request_timeout` within it (srcore.api_deadline), so an API server that
accepts the connection and never answers fails the step in one line naming it. RBAC the
deploy pod needs: get, create, patch on inferenceservices.serving.kserve.io in the
namespace (nothing else).
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from srcore import api_deadline
from srcore.api_deadline import Deadline
from srcore.config import Config

log = logging.getLogger(__name__)

# KServe releases the manifest is written for (pipeline/README.md, "Deploy on KServe", cites
# the sources): v1beta1 InferenceService with an inline PodSpec predictor (containers,
# serviceAccountName), STORAGE_URI for a custom container, Knative containerConcurrency/timeout
SUPPORTED_KSERVE = ("0.12", "0.13", "0.14", "0.15", "0.16")
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
            "deploy_storage_uri to the base the export writes <name>/<version>/ under, e.g. pvc://<claim>/serving "
            "or s3://bucket/prefix"
        )
    return uri


CONTAINER_NAME = "kserve-container"  # constants.InferenceServiceContainerName
STORAGE_URI_ENV = "STORAGE_URI"  # constants.CustomSpecStorageUriEnvVarKey
MODEL_MOUNT = "/mnt/models"  # constants.DefaultModelLocalMountPath
PORT = 8080  # Knative's default user port
API_CALL_MAX_S = 60.0  # one API call (retries included) within deploy's total deadline
RBAC_VERBS = ("get", "create", "patch")  # what apply() and wait_ready() call, on inferenceservices


def server_args(cfg: Config, name: str) -> list[str]:
    """srcore.server's command line in the predictor: the Config's serving limits as flags."""
    args = ["--model", MODEL_MOUNT, "--name", name, "--host", "0.0.0.0", "--port", str(PORT)]
    for field in ("serve_max_pixels", "serve_max_batch", "serve_min_tile", "serve_max_tile", "serve_max_seconds",
                  "serve_max_body_bytes", "serve_max_concurrent", "serve_max_response_bytes"):
        args += [f"--{field.replace('_', '-')}", str(getattr(cfg, field))]
    return args


def build_manifest(cfg: Config, storage_uri: str, namespace: str,
                   model: Mapping[str, str] | None = None, image: str = "") -> dict[str, Any]:
    """The InferenceService for `storage_uri` (the version's SavedModel folder), served by
    `image` (default cfg.deploy_image). `model`: {"name", "version"} of the registered
    model, recorded as labels."""
    name = check_service_name(cfg.deploy_service_name)
    check_storage_uri(storage_uri)
    image = image or cfg.deploy_image
    if not image:
        raise ValueError("invalid parameter deploy_image='': the predictor runs the project's image; set "
                         "deploy_image to the image you pushed (the pipeline passes its own)")
    timeout_s = max(1, math.ceil(cfg.serve_max_seconds)) + 5  # the server's own 504 comes first
    resources: dict[str, dict[str, Any]] = {
        "requests": {"cpu": cfg.deploy_cpu, "memory": cfg.deploy_memory},
        "limits": {"cpu": cfg.deploy_cpu, "memory": cfg.deploy_memory},
    }
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "command": ["python", "-m", "srcore.server"],
        "args": server_args(cfg, name),
        "env": [{"name": STORAGE_URI_ENV, "value": storage_uri}],
        "ports": [{"containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": f"/v1/models/{name}"}},
        "resources": resources,
    }
    predictor: dict[str, Any] = {"containers": [container], "timeout": timeout_s}
    if cfg.deploy_service_account:
        predictor["serviceAccountName"] = cfg.deploy_service_account
    if cfg.deploy_concurrency:
        predictor["containerConcurrency"] = int(cfg.deploy_concurrency)
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
    manage: optional ones we do not set are nulled (merge patch keeps absent keys; a list
    such as `containers` is replaced whole). `model` is nulled: an InferenceService made by
    an older version of this module served TF Serving through it."""
    predictor = dict(manifest["spec"]["predictor"])
    for key in ("tolerations", "containerConcurrency", "serviceAccountName", "model"):
        predictor.setdefault(key, None)
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


def api_server(api: Any) -> str:
    """The API server `api` talks to, as it may be logged (credentials redacted)."""
    from srcore.data.sources import redact_url

    conf = getattr(getattr(api, "api_client", None), "configuration", None)
    return redact_url(str(getattr(conf, "host", "") or "<unknown API server>"))


def _call(api: Any, deadline: Deadline, what: str, method: str, *args: Any) -> Any:
    """One API call bounded by `deadline` (srcore.api_deadline: retries included); no
    answer in time is a DeployError naming the API server."""
    import urllib3

    if deadline.expired():
        raise DeployError(f"{what}: deploy's deadline of {deadline.seconds:.0f}s (deploy_wait_seconds) passed "
                          f"before the call to the Kubernetes API server {api_server(api)}")
    retries = getattr(getattr(api.api_client, "configuration", None), "retries", None)
    try:
        return getattr(api, method)(*args, _request_timeout=deadline.timeout(retries, API_CALL_MAX_S))
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise DeployError(f"{what}: no answer from the Kubernetes API server {api_server(api)} "
                          f"({api_deadline.failure(e)}, deploy_wait_seconds={deadline.seconds:.0f})") from e


def apply(api: Any, manifest: Mapping[str, Any], deadline: Deadline | None = None) -> tuple[str, dict[str, Any]]:
    """Create the InferenceService or patch the existing one; returns (action, object).
    Every call ends by `deadline` (default: API_CALL_MAX_S from now)."""
    from kubernetes.client.exceptions import ApiException

    deadline = deadline or Deadline(API_CALL_MAX_S)
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        _call(api, deadline, f"reading InferenceService {ns}/{name}", "get_namespaced_custom_object",
              GROUP, VERSION, ns, PLURAL, name)
    except ApiException as e:
        if e.status != 404:
            raise DeployError(f"reading InferenceService {ns}/{name} failed: HTTP {e.status} {e.reason}") from e
        try:
            return "created", _call(api, deadline, f"creating InferenceService {ns}/{name}",
                                    "create_namespaced_custom_object", GROUP, VERSION, ns, PLURAL, dict(manifest))
        except ApiException as e2:
            raise DeployError(f"creating InferenceService {ns}/{name} failed: HTTP {e2.status} {e2.body}") from e2
    try:
        return "patched", _call(api, deadline, f"patching InferenceService {ns}/{name}",
                                "patch_namespaced_custom_object", GROUP, VERSION, ns, PLURAL, name,
                                _patch_body(manifest))
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
               poll_s: float = 5.0, clock: Callable[[], float] = time.monotonic,
               deadline: Deadline | None = None) -> dict[str, Any]:
    """Poll until Ready for `generation`; the object, or DeployError after `timeout_s`
    (or at `deadline`, when given: deploy's total). Each poll ends by the deadline too;
    one that gets no answer is retried, like an API error, until then."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    deadline = deadline or Deadline(timeout_s, clock)
    retries = getattr(getattr(api.api_client, "configuration", None), "retries", None)
    last = "not polled"
    while True:
        try:
            obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                   _request_timeout=deadline.timeout(retries, API_CALL_MAX_S))
            ok, last = _ready(obj, generation)
            if ok:
                return obj
        except ApiException as e:  # a transient API error is a reason to keep waiting, not to fail
            last = f"HTTP {e.status} {e.reason}"
        except (urllib3.exceptions.HTTPError, OSError) as e:
            last = f"no answer from the Kubernetes API server {api_server(api)} ({api_deadline.failure(e)})"
        if deadline.expired():
            raise DeployError(
                f"InferenceService {namespace}/{name} not Ready after {deadline.seconds:.0f}s: {last}. "
                f"Inspect it with: kubectl -n {namespace} describe inferenceservice {name}"
            )
        log.info("waiting for InferenceService %s/%s: %s", namespace, name, last)
        time.sleep(min(poll_s, deadline.remaining()))


def deploy(cfg: Config, storage_uri: str, model: Mapping[str, str] | None = None, api_client: Any = None,
           poll_s: float = 5.0, image: str = "") -> DeployResult:
    """Create or update the InferenceService serving `storage_uri` and wait until Ready."""
    namespace = resolve_namespace(cfg)
    manifest = build_manifest(cfg, storage_uri, namespace, model, image)
    api = custom_objects_api(api_client)
    deadline = Deadline(cfg.deploy_wait_seconds)  # the whole deploy: create/patch and the wait
    action, obj = apply(api, manifest, deadline)
    generation = int((obj.get("metadata") or {}).get("generation") or 1)
    log.info("%s InferenceService %s/%s (generation %d) for %s", action, namespace, manifest["metadata"]["name"],
             generation, storage_uri)
    ready = wait_ready(api, namespace, manifest["metadata"]["name"], generation, cfg.deploy_wait_seconds, poll_s,
                       deadline=deadline)
    url = ready["status"]["url"]
    log.info("InferenceService %s/%s is Ready at %s", namespace, manifest["metadata"]["name"], url)
    return DeployResult(url=url, namespace=namespace, name=manifest["metadata"]["name"], action=action,
                        storage_uri=storage_uri, generation=generation)


# ---- MLflow ---------------------------------------------------------------------------


def resolve_version(cfg: Config, model_version: str = "") -> tuple[str, str]:
    """(name, version) of the registered model to serve: `model_version` (a number) or
    the `champion` alias when empty."""
    from srcore.registry import CHAMPION_ALIAS

    name = cfg.registered_model_name
    if model_version:
        return name, str(model_version)
    from srcore.model_uri import version_by_alias  # a missing champion: one line listing the aliases

    return name, str(version_by_alias(name, CHAMPION_ALIAS).version)


def storage_uri_for(cfg: Config, name: str, version: str) -> str:
    """The version's SavedModel folder: `<deploy_storage_uri>/<name>/<version>` (where the
    pipeline's export task writes it), else the `savedmodel/` artifact of the run that
    logged the version (srcore.export.log_savedmodel)."""
    if cfg.deploy_storage_uri:
        return check_storage_uri(f"{cfg.deploy_storage_uri.rstrip('/')}/{name}/{version}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    mv = client.get_model_version(name, version)
    if not mv.run_id:
        raise ValueError(f"registered model {name} version {version} has no run; set deploy_storage_uri")
    if not client.list_artifacts(mv.run_id, SAVEDMODEL_ARTIFACT):
        raise ValueError(
            f"run {mv.run_id} of {name} version {version} has no '{SAVEDMODEL_ARTIFACT}/' artifact: export the "
            f"version (`srgan export --model models:/{name}/{version} --model-version {version} --out DIR`, or "
            "to deploy_storage_uri) and set deploy_storage_uri to where <name>/<version> lies"
        )
    artifact_root = client.get_run(mv.run_id).info.artifact_uri.rstrip("/")
    return check_storage_uri(f"{artifact_root}/{SAVEDMODEL_ARTIFACT}")


def tag_version(name: str, version: str, result: DeployResult) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.set_model_version_tag(name, version, ENDPOINT_TAG, result.url)
    client.set_model_version_tag(name, version, SERVICE_TAG, f"{result.namespace}/{result.name}")
    client.set_model_version_tag(name, version, STORAGE_TAG, result.storage_uri)


def deploy_step(cfg: Config, model_version: str = "", storage_uri: str = "", namespace: str = "",
                service_name: str = "", image: str = "", gpu_image: str = "", api_client: Any = None,
                poll_s: float = 5.0) -> dict[str, Any]:
    """The `deploy` step: serve registered version `model_version` (default: the
    champion) from `storage_uri` (default: storage_uri_for) on KServe, tag the version
    with the endpoint, tracked in MLflow. The predictor image: cfg.deploy_image when the
    operator set it, else `gpu_image` (when deploy_gpus > 0 and given), else `image`.
    `namespace` / `service_name` override cfg.deploy_namespace / deploy_service_name."""
    import mlflow

    from srcore import tracking
    from srcore.config import apply_overrides

    chosen = cfg.deploy_image or (gpu_image if cfg.deploy_gpus and gpu_image else image)
    cfg = apply_overrides(cfg, {"deploy_namespace": namespace, "deploy_service_name": service_name,
                                "deploy_image": chosen})

    name, version = resolve_version(cfg, model_version)
    storage_uri = check_storage_uri(storage_uri) if storage_uri else storage_uri_for(cfg, name, version)
    with tracking.step_run(cfg, "deploy"):
        result = deploy(cfg, storage_uri, {"name": name, "version": version}, api_client, poll_s)
        tag_version(name, version, result)
        mlflow.set_tags({ENDPOINT_TAG: result.url, SERVICE_TAG: f"{result.namespace}/{result.name}",
                         "registered_model_version": version})
    return {**result.to_dict(), "registered_model_name": name, "registered_model_version": version}
