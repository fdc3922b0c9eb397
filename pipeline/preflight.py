"""Check pipeline parameters here, before any pod starts.

`check_run(params, defaults, cluster=...)` builds the `Config` that the steps will build
(preset < config_overrides < named parameters, with the pipeline's defaults for what is
not given) and refuses, with a message naming the parameter:
- an unknown parameter or a value of the wrong type (`epochs=abc`);
- a run without a real source (srcore.config.require_source: synthetic `demo` images
  only when asked for), so nothing synthetic is trained for the real registry by
  accident;
- on a cluster, an empty `mlflow_tracking_uri` unless KFP's MLflow plugin injects one
  (`mlflow_plugin=True`, or `$SRGAN_KFP_MLFLOW_PLUGIN=1`): register would otherwise fail
  after a full GPU training.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from srcore.config import Config, ConfigError
from srcore.data.sources import redact_url

log = logging.getLogger(__name__)

PLUGIN_ENV = "SRGAN_KFP_MLFLOW_PLUGIN"
TRACKING_PARAM = "mlflow_tracking_uri"
LOCAL_SCHEMES = ("file:", "sqlite:", "./", "/", "mlruns")


def parameter_defaults(pipe) -> dict[str, str]:
    """{name: default} of a built pipeline (a GraphComponent)."""
    return {name: "" if spec.default is None else str(spec.default)
            for name, spec in (pipe.component_spec.inputs or {}).items()}


def package_defaults(path: str | os.PathLike) -> dict[str, str]:
    """{name: default} of a compiled pipeline YAML's root parameters."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"pipeline package {path} does not exist: pass a YAML written by `python -m pipeline compile`")
    doc = next(yaml.safe_load_all(path.read_text()), None) or {}
    params = doc.get("root", {}).get("inputDefinitions", {}).get("parameters")
    if not isinstance(params, dict):
        raise ValueError(f"{path} has no root.inputDefinitions.parameters: is it a compiled KFP pipeline?")
    return {name: "" if p.get("defaultValue") is None else str(p["defaultValue"]) for name, p in params.items()}


def check_parameters(params: Mapping[str, Any], defaults: Mapping[str, str]) -> dict[str, str]:
    """Parameters as strings; unknown names fail before anything is submitted or run."""
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"unknown pipeline parameter(s) {', '.join(unknown)}; known: {', '.join(defaults)}")
    return {k: "" if v is None else str(v) for k, v in params.items()}


def pipeline_config(arguments: Mapping[str, str], defaults: Mapping[str, str]) -> Config:
    """The Config the first step will resolve from these pipeline arguments (the same
    function: srcore.kfp_glue.pipeline_config), refusing a run without a source."""
    from srcore import kfp_glue

    values = {**defaults, **arguments}
    named = {k: values.get(k, "") for k in kfp_glue.PIPELINE_CONFIG_PARAMS}
    return kfp_glue.pipeline_config(values.get("preset", ""), values.get("config_overrides", ""), **named)


def check_run(params: Mapping[str, Any], defaults: Mapping[str, str], cluster: bool,
              mlflow_plugin: bool | None = None) -> tuple[dict[str, str], Config]:
    """(arguments as strings, the resolved Config) or ValueError/ConfigError naming the
    parameter and what to do."""
    arguments = check_parameters(params, defaults)
    cfg = pipeline_config(arguments, defaults)
    if cluster:
        _check_tracking(arguments.get(TRACKING_PARAM) or defaults.get(TRACKING_PARAM, ""), mlflow_plugin)
    log.info("preflight ok: preset %s, source %s, %d pretrain + %d GAN epochs", arguments.get("preset")
             or defaults.get("preset") or "-", redact_url(cfg.source), cfg.pretrain_epochs, cfg.epochs)
    return arguments, cfg


def plugin_enabled(flag: bool | None = None) -> bool:
    if flag is not None:
        return flag
    return os.environ.get(PLUGIN_ENV, "").strip().lower() in ("1", "true", "yes")


def _check_tracking(uri: str, mlflow_plugin: bool | None) -> None:
    if plugin_enabled(mlflow_plugin):
        return
    if not uri.strip():
        raise ConfigError(
            f"invalid parameter {TRACKING_PARAM}='': a cluster run needs the MLflow server as the pods see it, "
            f"e.g. -p {TRACKING_PARAM}=http://mlflow.mlflow.svc:5000 (or compile with SRGAN_MLFLOW_TRACKING_URI); "
            f"pass --mlflow-plugin (or set {PLUGIN_ENV}=1) when KFP's MLflow plugin injects it")
    if uri.strip().startswith(LOCAL_SCHEMES):
        log.warning("%s=%s is a local store: each pod would write its own copy, and nothing reaches a shared "
                    "registry", TRACKING_PARAM, uri)
