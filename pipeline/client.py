"""A `kfp.Client` for a real (possibly multi-user) Kubeflow, and versioned uploads.

Credentials, first found wins:
1. `--token-file` / `Auth.token_file`: a token file read at every request (a projected
   service-account token rotates), via `kfp.client.ServiceAccountTokenVolumeCredentials`;
2. `--token` / `$KFP_TOKEN`: a bearer token;
3. in a pod, the projected KFP service-account token
   (`$KF_PIPELINES_SA_TOKEN_PATH`, default /var/run/secrets/kubeflow/pipelines/token);
4. none (a port-forwarded single-user API).
An auth cookie for Dex / oauth2-proxy installs (`--cookie` / `$KFP_COOKIE`, e.g.
`oauth2_proxy_kubeflow=...`, the oauth2-proxy session of Kubeflow 1.9+) is sent on every request.

Namespace (multi-user Kubeflow: the profile namespace): `--namespace`, else
`$KFP_NAMESPACE`, else this pod's namespace, else the active kube context's namespace.
A multi-user API without any of them is refused; a single-user API gets none.

Timeouts: every request to the API (kfp.Client's own healthz call in its constructor,
each later call, the server-version preflight) ends within `timeout_s` (`--timeout`,
default 60 s), urllib3's retries included. kfp.Client takes no timeout and its methods
do not pass one on, and the generated client under it sends `timeout=None` (urllib3:
wait forever, whatever timeout the pool has), so `BoundedClient` gives the one
ApiClient all its APIs share a default `_request_timeout` (the generated code's own
per-call parameter; srcore.api_deadline explains its traps) and replaces
`get_kfp_healthz`, the only call made inside the constructor, whose five retries with
sleeps would multiply the wait.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

TOKEN_ENV = "KFP_TOKEN"
COOKIE_ENV = "KFP_COOKIE"
NAMESPACE_ENV = "KFP_NAMESPACE"
POD_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Auth:
    token: str | None = None
    token_file: str | None = None
    cookie: str | None = None


def client_kwargs(auth: Auth | None = None) -> dict:
    """kfp.Client keyword arguments for the credentials (see module doc)."""
    from kfp import client as kfp_client

    auth = auth or Auth()
    kwargs: dict = {}
    if auth.token_file:
        if not Path(auth.token_file).is_file():
            raise ValueError(f"--token-file {auth.token_file} does not exist")
        kwargs["credentials"] = kfp_client.ServiceAccountTokenVolumeCredentials(path=auth.token_file)
        how = f"token file {auth.token_file}"
    elif auth.token or os.environ.get(TOKEN_ENV):
        kwargs["existing_token"] = auth.token or os.environ[TOKEN_ENV]
        how = "bearer token" + ("" if auth.token else f" from ${TOKEN_ENV}")
    else:
        sa_path = os.environ.get(kfp_client.KF_PIPELINES_SA_TOKEN_ENV) or kfp_client.KF_PIPELINES_SA_TOKEN_PATH
        if Path(sa_path).is_file():
            kwargs["credentials"] = kfp_client.ServiceAccountTokenVolumeCredentials(path=sa_path)
            how = f"in-cluster service-account token {sa_path}"
        else:
            how = "no token"
    cookie = auth.cookie or os.environ.get(COOKIE_ENV)
    if cookie:
        kwargs["cookies"] = cookie
        how += " + auth cookie"
    log.info("KFP credentials: %s", how)
    return kwargs


def default_namespace() -> str | None:
    """$KFP_NAMESPACE, else this pod's namespace, else the active kube context's."""
    if os.environ.get(NAMESPACE_ENV):
        return os.environ[NAMESPACE_ENV]
    pod_file = Path(POD_NAMESPACE_FILE)
    if pod_file.is_file():
        return pod_file.read_text().strip() or None
    return kube_context_namespace()


def kube_context_namespace() -> str | None:
    try:
        from kubernetes import config as kube_config

        _, active = kube_config.list_kube_config_contexts(config_file=os.environ.get("KUBECONFIG") or None)
    except Exception as e:  # no kubeconfig, or a broken one: not an error here
        log.debug("no kube context namespace: %s", e)
        return None
    return ((active or {}).get("context") or {}).get("namespace") or None


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """kfp.Client prints its links; keep stdout for our result line and log them."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            yield
    finally:
        for line in printed.getvalue().splitlines():
            if line.strip():
                log.info("kfp: %s", line.strip())


def bound_requests(api_client, timeout_s: float) -> None:
    """Give every request of `api_client` (a kfp_server_api.ApiClient) that sets no
    `_request_timeout` one that ends it within `timeout_s`, retries included."""
    if getattr(api_client, "_srgan_timeout_s", None) is not None:
        return
    from srcore.api_deadline import request_timeout

    send = api_client.request  # ApiClient.__call_api sends every call through it
    default = request_timeout(timeout_s, api_client.configuration.retries)

    def request(*args, _request_timeout=None, **kwargs):
        return send(*args, _request_timeout=_request_timeout or default, **kwargs)

    api_client.request = request
    api_client._srgan_timeout_s = timeout_s


_BOUNDED_CLIENT = None


def bounded_client_class():
    """kfp.Client whose every request is bounded (module doc); built on first use, so
    importing this module does not import kfp."""
    global _BOUNDED_CLIENT
    if _BOUNDED_CLIENT is None:
        import kfp

        class BoundedClient(kfp.Client):
            def __init__(self, *args, timeout_s: float = DEFAULT_TIMEOUT_S, **kwargs):
                self.timeout_s = timeout_s  # before the constructor's own healthz call
                super().__init__(*args, **kwargs)
                bound_requests(self._healthz_api.api_client, timeout_s)  # all the APIs share it

            def get_kfp_healthz(self, sleep_duration: int = 5):
                # one bounded call: kfp's retries five times with sleeps on any ApiException
                bound_requests(self._healthz_api.api_client, self.timeout_s)
                return self._healthz_api.healthz_service_get_healthz()

        _BOUNDED_CLIENT = BoundedClient
    return _BOUNDED_CLIENT


def describe_failure(host: str | None, exc: BaseException, timeout_s: float) -> str:
    """One line for a failed KFP API request, naming the host (credentials redacted)."""
    from srcore.api_deadline import failure
    from srcore.data.sources import redact_url

    where = redact_url(host or "?")
    why = failure(exc)
    if "Timeout" in why:
        return f"the KFP API at {where} did not answer within {timeout_s:g}s ({why}): check --host, or raise --timeout"
    return f"the KFP API at {where} failed: " + "; ".join(str(exc).strip().splitlines()[:3])


def connect(host: str, auth: Auth | None = None, namespace: str | None = None,
            timeout_s: float = DEFAULT_TIMEOUT_S):
    """(kfp.Client, the namespace to use: None on a single-user API). Every request of the
    client ends within `timeout_s`."""
    wanted = namespace or default_namespace()
    with quiet_stdout(), warnings.catch_warnings():
        # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later": known
        warnings.filterwarnings("ignore", message=".*only works with Kubeflow Pipeline", category=FutureWarning)
        client = bounded_client_class()(host=host, namespace=wanted or "kubeflow", timeout_s=timeout_s,
                                        **client_kwargs(auth))
        multi_user = bool(client.get_kfp_healthz().multi_user)
    if not multi_user:
        if namespace:
            log.warning("the KFP API at %s is single-user: --namespace %s is not used", host, namespace)
        return client, None
    if not wanted:
        raise ValueError(
            f"the KFP API at {host} is multi-user: pass --namespace <your profile namespace> (or set "
            f"${NAMESPACE_ENV}, or a namespace in the kube context)")
    log.info("multi-user KFP: namespace %s", wanted)
    return client, wanted


def server_tag(client) -> str | None:
    """The API server's version, `tag_name` of GET /apis/v2beta1/healthz (e.g. '2.5.0'),
    read raw: kfp_server_api's healthz model drops that field. None when absent."""
    with quiet_stdout():
        response = client._healthz_api.healthz_service_get_healthz(_preload_content=False)
    try:
        body = json.loads(response.data or b"{}")
    except ValueError:
        return None
    tag = body.get("tag_name") if isinstance(body, dict) else None
    return str(tag) if tag not in (None, "") else None


def _filter(name: str) -> str:
    # the same filter kfp.Client.get_pipeline_id sends (operation 1 = EQUALS)
    return json.dumps({"predicates": [{"operation": 1, "key": "display_name", "stringValue": name}]})


def version_name(commit: str | None) -> str:
    """The pipeline version's name: the git commit; a dirty tree or no git adds a UTC
    timestamp, since its content differs from every other upload."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if not commit:
        return f"nogit-{stamp}"
    return f"{commit}-{stamp}" if commit.endswith("-dirty") else commit


def upload(client, package: str | os.PathLike, pipeline_name: str, version: str,
           namespace: str | None = None, description: str | None = None) -> tuple[str, str]:
    """Upload `package` as version `version` of the pipeline `pipeline_name` (created when
    missing, in `namespace` on multi-user). An existing version of that name is reused.
    Returns (pipeline_id, pipeline_version_id)."""
    with quiet_stdout():
        found = client.list_pipelines(filter=_filter(pipeline_name), namespace=namespace, page_size=2)
        pipelines = found.pipelines or []
        if len(pipelines) > 1:
            raise ValueError(f"several pipelines are named {pipeline_name!r}; pass another --pipeline-name")
        if pipelines:
            pipeline_id = pipelines[0].pipeline_id
            versions = client.list_pipeline_versions(pipeline_id, filter=_filter(version), page_size=1)
            if versions.pipeline_versions:
                version_id = versions.pipeline_versions[0].pipeline_version_id
                log.info("pipeline %s version %s exists (%s): reusing it", pipeline_name, version, version_id)
                return pipeline_id, version_id
        else:
            pipeline_id = client.upload_pipeline(str(package), pipeline_name=pipeline_name, description=description,
                                                 namespace=namespace).pipeline_id
            log.info("created pipeline %s (%s)", pipeline_name, pipeline_id)
        created = client.upload_pipeline_version(str(package), pipeline_version_name=version, pipeline_id=pipeline_id,
                                                 description=description)
    log.info("uploaded pipeline %s version %s (%s)", pipeline_name, version, created.pipeline_version_id)
    return pipeline_id, created.pipeline_version_id
