"""Compile, upload, submit, or run the pipeline on this machine.

- `compile_pipeline(out, image)`: the pipeline YAML for a cluster (refuses without a
  real image, see components._common.resolve_image).
- `submit(host, params, ...)`: preflight the parameters (pipeline.preflight), check the
  API server's version against the support matrix (pipeline.support), compile, and
  create a run in the user's namespace (pipeline.client: credentials, namespace);
  `upload=True` first uploads it as a named pipeline version (the git commit). Every run
  gets a `run_key` (its folders on the volume, its MLflow parent run) unless one is given.
- `upload(host, ...)`: only the version check and the named, versioned upload.
- `run_local(params, root)`: the whole DAG here with kfp.local.SubprocessRunner(use_venv=False);
  every output (pipeline_root, workspace, temp files) stays under `root`.
"""

import json
import logging
import os
import re
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

from components._common import LOCAL_IMAGE, checkout_commit, resolve_image
from pipeline import client as kfp_client
from pipeline import preflight, support
from pipeline.dag import PIPELINE_NAME, build_pipeline

log = logging.getLogger(__name__)

TOKEN_ENV = kfp_client.TOKEN_ENV


def pipeline_parameters(pipe=None) -> list[str]:
    pipe = pipe or build_pipeline()
    return list(pipe.component_spec.inputs or {})


def check_parameters(params: Mapping[str, Any], pipe=None) -> dict[str, str]:
    """Parameters as strings; unknown names fail before anything is submitted or run."""
    return preflight.check_parameters(params, preflight.parameter_defaults(pipe or build_pipeline()))


def compile_pipeline(out: str | os.PathLike, image: str | None = None, cluster: bool = True) -> Path:
    """Write the pipeline YAML for `image` (else $SRGAN_IMAGE, else
    $SRGAN_IMAGE_REPOSITORY:<git commit>); refuses the placeholder image."""
    from kfp import compiler

    image = resolve_image(image)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(image=image, cluster=cluster), str(out))
    support.legacy_package(out)  # readable by KFP 2.2-2.4 backends too (pipeline/support.py)
    log.info("compiled %s (image %s)", out, image)
    return out


PIPELINES = ("main", "sweep")


def pipeline_kind(kind: str) -> tuple[str, Callable, Callable]:
    """(name, builder, compile function) of the `main` or the `sweep` pipeline."""
    if kind == "sweep":
        from pipeline.sweep import SWEEP_PIPELINE_NAME, build_sweep_pipeline, compile_sweep

        return SWEEP_PIPELINE_NAME, build_sweep_pipeline, compile_sweep
    if kind != "main":
        raise ValueError(f"unknown pipeline {kind!r}; choose one of {', '.join(PIPELINES)}")
    return PIPELINE_NAME, build_pipeline, compile_pipeline


def new_run_key(run_name: str) -> str:
    """A run key unique to this submission: the run name made folder-safe plus a random
    suffix (two runs of one name never share checkpoints; pass -p run_key=<key> to resume
    an earlier run's training)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", run_name).strip("-._")[:80] or "run"
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def check_server(client, pipeline: str, host: str, package: Path | None = None) -> None:
    """Refuse, before anything is created, a pipeline this KFP API cannot run
    (pipeline.support.check_backend; a given package is judged by its own IR)."""
    import yaml

    features = None
    if package is not None:
        docs = list(yaml.safe_load_all(Path(package).read_text()))
        # a package compiled elsewhere may carry platform-spec fields KFP < 2.5 refuses
        features = support.ir_features(docs[0]) | (support.legacy_platform_spec(docs[1])[1] if len(docs) > 1 else set())
    tag = kfp_client.server_tag(client)
    version = support.check_backend(pipeline, tag, host, features)
    if version:
        log.info("KFP API %s is %s: runs the %s pipeline", host, support.fmt(version), pipeline)


def _package_and_defaults(package: str | os.PathLike | None, builder: Callable) -> tuple[Path | None, dict[str, str]]:
    """(the given package or None, the parameter defaults it will run with)."""
    if package:
        return Path(package), preflight.package_defaults(package)
    return None, preflight.parameter_defaults(builder())


def submit(
    host: str,
    params: Mapping[str, Any] | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    namespace: str | None = None,
    image: str | None = None,
    package: str | os.PathLike | None = None,
    token: str | None = None,
    auth: kfp_client.Auth | None = None,
    upload: bool = False,
    mlflow_plugin: bool | None = None,
    pipeline: str = "main",
    check_version: bool = True,
    timeout_s: float = kfp_client.DEFAULT_TIMEOUT_S,
) -> dict[str, str]:
    """Create a run on the KFP API at `host`; returns {"run_id", "url", "run_key"} (+
    pipeline ids with `upload`). Parameters are checked (pipeline.preflight) before
    anything is compiled or sent, the server's version before anything is created."""
    from srcore.kfp_glue import run_key as check_run_key

    auth = auth or kfp_client.Auth(token=token)
    pipeline_name, builder, compile_fn = pipeline_kind(pipeline)
    name = run_name or f"{pipeline_name} {time.strftime('%Y-%m-%d %H-%M-%S')}"
    with tempfile.TemporaryDirectory(prefix="srgan-submit-") as tmp:
        path, defaults = _package_and_defaults(package, builder)
        arguments, _ = preflight.check_run(params or {}, defaults, cluster=True, mlflow_plugin=mlflow_plugin)
        if "run_key" in defaults:  # a package compiled before run_key existed has none
            arguments["run_key"] = check_run_key(arguments.get("run_key") or new_run_key(name))
        if not path:
            resolve_image(image)  # refused before any request
        client, ns = kfp_client.connect(host, auth, namespace, timeout_s)
        if check_version:
            check_server(client, pipeline, host, path)
        path = path or compile_fn(Path(tmp) / f"{pipeline_name}.yaml", image=image)
        with kfp_client.quiet_stdout():
            exp = client.create_experiment(experiment or "Default", namespace=ns)
        result: dict[str, str] = {}
        if upload:
            pipeline_id, version_id = kfp_client.upload(client, path, pipeline_name,
                                                        kfp_client.version_name(checkout_commit()), namespace=ns)
            result.update(pipeline_id=pipeline_id, pipeline_version_id=version_id)
            source = dict(pipeline_id=pipeline_id, version_id=version_id)
        else:
            source = dict(pipeline_package_path=str(path))
        with kfp_client.quiet_stdout():
            run = client.run_pipeline(exp.experiment_id, name, params=arguments, **source)
    url = f"{host.rstrip('/')}/#/runs/details/{run.run_id}"
    log.info("created run %s in experiment %s%s, run key %s (resubmit with -p run_key=%s to resume its training)",
             run.run_id, experiment or "Default", f" (namespace {ns})" if ns else "", arguments.get("run_key", "-"),
             arguments.get("run_key", "-"))
    return {"run_id": run.run_id, "url": url, "run_key": arguments.get("run_key", ""), **result}


def upload(
    host: str,
    image: str | None = None,
    package: str | os.PathLike | None = None,
    namespace: str | None = None,
    auth: kfp_client.Auth | None = None,
    pipeline_name: str | None = None,
    version: str | None = None,
    pipeline: str = "main",
    check_version: bool = True,
    timeout_s: float = kfp_client.DEFAULT_TIMEOUT_S,
) -> dict[str, str]:
    """Upload the `pipeline` (main or sweep) as version `version` (default: the git
    commit) of `pipeline_name` (default: its own name); returns {"pipeline_id",
    "pipeline_version_id", "version"}."""
    default_name, _, compile_fn = pipeline_kind(pipeline)
    pipeline_name = pipeline_name or default_name
    version = version or kfp_client.version_name(checkout_commit())
    with tempfile.TemporaryDirectory(prefix="srgan-upload-") as tmp:
        if not package:
            resolve_image(image)  # refused before any request
        client, ns = kfp_client.connect(host, auth, namespace, timeout_s)
        if check_version:
            check_server(client, pipeline, host, Path(package) if package else None)
        path = Path(package) if package else compile_fn(Path(tmp) / f"{pipeline_name}.yaml", image=image)
        pipeline_id, version_id = kfp_client.upload(client, path, pipeline_name, version, namespace=ns)
    return {"pipeline_id": pipeline_id, "pipeline_version_id": version_id, "version": version}


def run_local(
    params: Mapping[str, Any] | None = None,
    root: str | os.PathLike = "outputs/kfp-local",
    image: str | None = None,
    cache: bool = False,
) -> dict[str, Any]:
    """Run the whole pipeline here (lightweight components as subprocesses of this Python).

    Without an MLflow tracking URI (parameter or MLFLOW_TRACKING_URI) the runs go to
    `sqlite:///<root>/mlflow.db`. `cache=True` turns on kfp.local's task cache under
    `<root>/cache` (the tasks cacheable on a cluster, i.e. ingest, are reused by the next
    run with the same root and data parameters). Returns the pipeline outputs (artifact
    paths, metrics, model URI and version).
    """
    from kfp import local

    # before anything is written: a local build's defaults (no GPU required, no volume)
    arguments, _ = preflight.check_run(params or {}, preflight.parameter_defaults(build_pipeline(cluster=False)),
                                       cluster=False)
    root = Path(root).resolve()
    tmp = root / "tmp"
    for d in (root, tmp):
        d.mkdir(parents=True, exist_ok=True)
    # component sources, kfp-workspace-* and every temp file of the steps stay under root
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = str(tmp)

    if not arguments.get("mlflow_tracking_uri") and not os.environ.get("MLFLOW_TRACKING_URI"):
        arguments["mlflow_tracking_uri"] = f"sqlite:///{root / 'mlflow.db'}"
        log.info("no MLflow tracking URI given: using %s", arguments["mlflow_tracking_uri"])

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root / "pipeline_root"),
        workspace_root=str(root / "workspace"),
        raise_on_error=True,
        enable_caching=cache,
        cache_root=str(root / "cache") if cache else None,
    )
    # kfp.local's SubprocessRunner never pulls the image: any name will do
    pipe = build_pipeline(image=image or LOCAL_IMAGE)
    with warnings.catch_warnings():
        # expected here: the project's image is not used, and resources/GPU/Kubernetes
        # settings only apply on a cluster
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        log.info("running %s locally under %s with %s", PIPELINE_NAME, root, json.dumps(arguments))
        task = pipe(**arguments)
    return summarize(task.outputs)


def summarize(outputs: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in outputs.items():
        if hasattr(value, "path"):
            out[name] = value.path
            if name == "metrics":
                out["metrics_values"] = dict(value.metadata)
        else:
            out[name] = value
    return out
