"""Fail fast on the MLflow tracking server and its artifact store, before any work.

MLflow's client retries an unreachable server for about four minutes per request
(MLFLOW_HTTP_REQUEST_MAX_RETRIES=7 with exponential backoff), and a direct S3 artifact
store without boto3 or credentials fails only at the first `log_artifact`, after the
work it was meant to record. `preflight(cfg)` runs first, in a few seconds at most:

1. `check_server(uri)`: one request to the server's `GET /version` with a bounded
   timeout and no retries. Unreachable, refused credentials, or a server older than
   `MIN_SERVER_VERSION`: one line naming the URI and what to do.
2. `check_artifact_store(location)` for the experiment the runs go to:
   - `s3://bucket/prefix` (a server started with `--default-artifact-root s3://...
     --no-serve-artifacts`; the client writes to S3 itself): boto3 importable,
     credentials present, and the bucket reachable with them (`HeadBucket` on
     `MLFLOW_S3_ENDPOINT_URL` or AWS);
   - `mlflow-artifacts:/...` (proxied: `--artifacts-destination s3://...`, the server
     holds the credentials): the server lists the experiment's folder without a 5xx.

Server versions: the client (MLflow 3.17) logs models as MLflow 3 LoggedModels
(`/api/2.0/mlflow/logged-models`, model ids in metrics and `models:/m-...` registration),
which exist in MLflow servers from 3.0.0 on (MLflow 3.0.0 release notes, "LoggedModel";
mlflow/protos/service.proto `createLoggedModel`). Tested against `TESTED_SERVER_VERSION`
(tests/test_stack.py runs it with PostgreSQL and an S3 store); the oldest 3.x was tried
once by hand: an MLflow 3.0.1 server (SQLite, proxied local artifacts) ran the smoke job
(`srgan main --preset smoke --source demo`: runs, LoggedModel, registration, aliases) and
served `srgan upscale --model models:/NAME@candidate`.

Only http(s) tracking URIs are checked: a local store (sqlite, a folder) has nothing to
reach. Each check runs once per process and URI.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import urlparse

log = logging.getLogger(__name__)

MIN_SERVER_VERSION = "3.0.0"  # MLflow 3 LoggedModels (module doc)
TESTED_SERVER_VERSION = "3.17.2"
TIMEOUT_ENV = "SRGAN_MLFLOW_PREFLIGHT_TIMEOUT"
DEFAULT_TIMEOUT_S = 10.0

_checked: set = set()  # URIs and (URI, artifact location) pairs already checked


class TrackingServerError(RuntimeError):
    """The tracking server or its artifact store cannot be used; the message is one line."""


def _timeout() -> float:
    try:
        value = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        value = DEFAULT_TIMEOUT_S
    return value if 0 < value < 3600 else DEFAULT_TIMEOUT_S


def tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def is_remote(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def _redact(uri: str) -> str:
    from srcore.data.sources import redact_url  # the one redaction rule of recorded URLs

    return redact_url(uri)


def _reason(exc: BaseException) -> str:
    """The root cause of a request error in a few words (urllib3 nests it deep inside)."""
    text = str(exc)
    found = re.findall(r"\[Errno -?\d+\][^'\")]*|Read timed out[^'\")]*|Name or service not known|SSLError[^'\")]*", text)
    return (found[-1] if found else (text.splitlines()[0] if text else type(exc).__name__))[:200].strip()


def _version_tuple(text: str):
    from packaging.version import InvalidVersion, Version

    try:
        return Version(text.strip())
    except InvalidVersion:
        return None


def check_server(uri: str | None = None, timeout: float | None = None) -> str | None:
    """The server's MLflow version (None when it does not say); raises TrackingServerError
    in one line when it is unreachable, refuses the credentials, or is older than
    MIN_SERVER_VERSION. No-op (None) for a local store."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    uri = uri or tracking_uri()
    if not is_remote(uri):
        return None
    timeout = timeout or _timeout()
    shown = _redact(uri)
    try:
        resp = http_request(get_default_host_creds(uri), "/version", "GET", max_retries=0, timeout=timeout,
                            raise_on_status=False)
    except Exception as e:  # connection refused, DNS, TLS, timeout: MLflow wraps them variously
        raise TrackingServerError(
            f"MLflow tracking server {shown} is unreachable within {timeout:g}s ({_reason(e)}); check the URI "
            "(MLFLOW_TRACKING_URI / mlflow_tracking_uri) and that the server runs and is reachable from here"
        ) from None
    if resp.status_code in (401, 403):
        raise TrackingServerError(
            f"MLflow tracking server {shown} refused the credentials (HTTP {resp.status_code}); set "
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN (on Kubeflow: the "
            "MLflow Secret, see pipeline/README.md)")
    if resp.status_code >= 500:
        raise TrackingServerError(f"MLflow tracking server {shown} answered HTTP {resp.status_code} to GET /version: "
                                  "the server is up but failing; see its log")
    found = resp.text.strip()[:40] if resp.status_code == 200 else ""
    version = _version_tuple(found) if found else None
    if version is None:
        # e.g. a proxy that forwards /api only: nothing to compare, the API calls will tell
        log.warning("MLflow tracking server %s does not report its version (GET /version: HTTP %s); "
                    "this client needs MLflow server >= %s", shown, resp.status_code, MIN_SERVER_VERSION)
        return None
    if version < _version_tuple(MIN_SERVER_VERSION):
        raise TrackingServerError(
            f"MLflow tracking server {shown} runs MLflow {found}, but this client logs MLflow 3 LoggedModels: "
            f"it needs an MLflow server >= {MIN_SERVER_VERSION} (tested: {TESTED_SERVER_VERSION}); upgrade the server")
    log.info("MLflow tracking server %s: MLflow %s", shown, found)
    return found


def check_artifact_store(location: str, uri: str | None = None, timeout: float | None = None) -> None:
    """Raise TrackingServerError (one line) when the artifact `location` of an experiment
    or run cannot be written from here (module doc); other schemes are not checked."""
    scheme = urlparse(location).scheme
    if scheme == "s3":
        _check_s3(location, timeout or _timeout())
    elif scheme == "mlflow-artifacts":
        _check_proxied(location, uri or tracking_uri(), timeout or _timeout())


def _check_s3(location: str, timeout: float) -> None:
    bucket = urlparse(location).netloc
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
    where = f"bucket {bucket!r} at {endpoint or 'AWS S3'}"
    try:
        import boto3
        from botocore.config import Config as BotoConfig
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise TrackingServerError(
            f"MLflow stores artifacts directly in {location}, which needs boto3: pip install boto3 "
            "(it is in requirements.lock; an image without it is outdated)") from None
    session = boto3.session.Session()
    if session.get_credentials() is None:
        raise TrackingServerError(
            f"MLflow stores artifacts directly in {location} but no S3 credentials are set: set AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY (and MLFLOW_S3_ENDPOINT_URL for MinIO); on Kubeflow map them from a Secret "
            "(SRGAN_S3_SECRET, see pipeline/README.md)")
    verify = os.environ.get("MLFLOW_S3_IGNORE_TLS", "").lower() not in ("1", "true")
    client = session.client("s3", endpoint_url=endpoint, verify=verify, config=BotoConfig(
        connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1}))
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "?")
        hint = {"404": "the bucket does not exist", "NoSuchBucket": "the bucket does not exist",
                "403": "the credentials are refused or lack access"}.get(str(code), "see the S3 service's log")
        raise TrackingServerError(f"MLflow artifact store {location}: {where} answered {code} ({hint}); check "
                                  "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / MLFLOW_S3_ENDPOINT_URL") from None
    except BotoCoreError as e:
        raise TrackingServerError(f"MLflow artifact store {location}: {where} is unreachable within {timeout:g}s "
                                  f"({e}); check MLFLOW_S3_ENDPOINT_URL") from None
    log.info("MLflow artifact store %s: %s reachable with the given credentials", location, where)


def _check_proxied(location: str, uri: str, timeout: float) -> None:
    """The server proxies the artifacts: ask it to list the location's folder, which
    touches its own artifact store (a misconfigured store answers 5xx)."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    if not is_remote(uri):
        return
    path = urlparse(location).path.lstrip("/")
    try:
        resp = http_request(get_default_host_creds(uri), "/api/2.0/mlflow-artifacts/artifacts", "GET",
                            max_retries=0, timeout=timeout, raise_on_status=False, params={"path": path})
    except Exception as e:
        raise TrackingServerError(f"MLflow tracking server {_redact(uri)} did not list artifacts {location} within "
                                  f"{timeout:g}s ({_reason(e)})") from None
    if resp.status_code >= 500:
        raise TrackingServerError(
            f"MLflow tracking server {_redact(uri)} proxies artifacts ({location}) but its artifact store fails "
            f"(HTTP {resp.status_code}): check the server's --artifacts-destination and its S3 credentials")


def preflight(cfg=None, experiment_id: str | None = None, artifacts: bool = True) -> None:
    """Check the tracking server, then the artifact store of the runs' experiment
    (`experiment_id`, else $MLFLOW_RUN_ID's run (KFP's MLflow plugin), else
    `cfg.experiment_name`'s, created when missing). Once per process and URI/location."""
    uri = tracking_uri()
    if not is_remote(uri):
        return
    if uri not in _checked:
        check_server(uri)
        _checked.add(uri)
    if not artifacts:
        return
    location = _artifact_location(cfg, experiment_id)
    if location and (uri, location) not in _checked:
        check_artifact_store(location, uri)
        _checked.add((uri, location))


def _artifact_location(cfg, experiment_id: str | None) -> str:
    import mlflow

    client = mlflow.MlflowClient()
    if experiment_id:
        return client.get_experiment(experiment_id).artifact_location
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        try:
            return client.get_run(run_id).info.artifact_uri
        except mlflow.exceptions.MlflowException:
            pass  # an unknown run fails where it is used, with MLflow's own message
    if cfg is None:
        return ""
    from srcore import tracking

    return client.get_experiment(tracking.experiment_id(cfg)).artifact_location
