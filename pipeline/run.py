"""Compile, submit, or run the pipeline on this machine.

- `compile_pipeline(out)`: the pipeline YAML for a cluster.
- `submit(host, ...)`: compile and create a run with `kfp.Client` (token from KFP_TOKEN).
- `run_local(params, root)`: the whole DAG here with kfp.local.SubprocessRunner(use_venv=False);
  every output (pipeline_root, workspace, temp files) stays under `root`.
"""

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import components
from pipeline.dag import PIPELINE_NAME, build_pipeline

log = logging.getLogger(__name__)

TOKEN_ENV = "KFP_TOKEN"


def pipeline_parameters(pipe=None) -> list[str]:
    pipe = pipe or build_pipeline()
    return list(pipe.component_spec.inputs or {})


def check_parameters(params: Mapping[str, Any], pipe=None) -> dict[str, str]:
    """Parameters as strings; unknown names fail before anything is submitted or run."""
    known = pipeline_parameters(pipe)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"unknown pipeline parameter(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return {k: "" if v is None else str(v) for k, v in params.items()}


def compile_pipeline(out: str | os.PathLike, image: str | None = None, cluster: bool = True) -> Path:
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(image=image, cluster=cluster), str(out))
    log.info("compiled %s (image %s)", out, image or components.BASE_IMAGE)
    return out


def submit(
    host: str,
    params: Mapping[str, Any] | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    namespace: str | None = None,
    image: str | None = None,
    package: str | os.PathLike | None = None,
    token: str | None = None,
) -> dict[str, str]:
    """Create a run on the KFP API at `host`; returns {"run_id", "url"}."""
    import kfp

    arguments = check_parameters(params or {})
    token = token or os.environ.get(TOKEN_ENV) or None
    printed = io.StringIO()
    # kfp.Client prints its links; keep stdout for our result line and log them instead
    with tempfile.TemporaryDirectory(prefix="srgan-submit-") as tmp, contextlib.redirect_stdout(printed):
        client = kfp.Client(host=host, existing_token=token, namespace=namespace or "kubeflow")
        path = Path(package) if package else compile_pipeline(Path(tmp) / f"{PIPELINE_NAME}.yaml", image=image)
        result = client.create_run_from_pipeline_package(
            str(path), arguments=arguments, run_name=run_name, experiment_name=experiment, namespace=namespace,
        )
    for line in printed.getvalue().splitlines():
        if line.strip():
            log.info("kfp: %s", line.strip())
    url = f"{host.rstrip('/')}/#/runs/details/{result.run_id}"
    log.info("created run %s in experiment %s", result.run_id, experiment or "Default")
    return {"run_id": result.run_id, "url": url}


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

    root = Path(root).resolve()
    tmp = root / "tmp"
    for d in (root, tmp):
        d.mkdir(parents=True, exist_ok=True)
    # component sources, kfp-workspace-* and every temp file of the steps stay under root
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = str(tmp)

    arguments = check_parameters(params or {})
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
    pipe = build_pipeline(image=image)
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
