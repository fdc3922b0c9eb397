"""Glue for running one step inside a Kubeflow component (or any container task).

The KFP components (`components/`) only parse their inputs and call a step function;
what they need on top of that lives here so that it is tested with srcore and runs
from the project's image (a lightweight component embeds only its own function body):

- `step_config`: KFP parameters (preset, a JSON object of Config fields, individual
  fields as strings where '' means "not given") -> the one typed `Config`.
- `prepare_step`: logging, the MLflow tracking URI, and the pipeline's parent run
  (see below).
- `scalar_metrics`, `write_metrics`, `read_metrics`, `html_report`: evaluation results
  as a KFP Metrics artifact and an HTML page with the sample grid embedded.

MLflow runs of a pipeline, without KFP's MLflow plugin: the first step (ingest) opens
the parent run and hands its id down; every step is a child of it
(`SRGAN_PARENT_RUN_ID`, see `srcore.tracking.step_run`). Ingest is cacheable, so a
cached ingest hands down the parent run of the *earlier* pipeline run; the first
uncached step (train) detects this through the tag `srgan.kfp_run_id` and opens a new
parent for the current KFP run, which the later steps then use.

With KFP's MLflow plugin, `MLFLOW_RUN_ID` (and the tracking URI and experiment) are
already in the environment: every step logs into that run, none is created here, and
the component parameters `mlflow_tracking_uri` / `parent_run_id` are ignored.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

from srcore.config import Config, ConfigError, build_config

log = logging.getLogger(__name__)

KFP_RUN_TAG = "srgan.kfp_run_id"
PARENT_RUN_NAME = "srgan-pipeline"


# ---- configuration ---------------------------------------------------------------

def parse_overrides(config_overrides: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """A JSON object of Config field -> value ('' or None = no overrides)."""
    if config_overrides is None or config_overrides == "":
        return {}
    if isinstance(config_overrides, Mapping):
        return dict(config_overrides)
    try:
        data = json.loads(config_overrides)
    except json.JSONDecodeError as e:
        raise ConfigError(f"config_overrides must be a JSON object of Config field -> value: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config_overrides must be a JSON object of Config field -> value, got {type(data).__name__}")
    return data


def step_config(preset: str = "", config_overrides: str | Mapping[str, Any] | None = "", **params: Any) -> Config:
    """preset < config_overrides < individual parameters ('' / None = not given)."""
    configure_logging()
    overrides = parse_overrides(config_overrides)
    for key, value in params.items():
        if value is None or value == "":
            continue
        if key in overrides and str(overrides[key]) != str(value):
            log.warning("parameter %s=%r overrides config_overrides' %r", key, value, overrides[key])
        overrides[key] = value
    return build_config(preset or None, overrides=overrides)


# ---- tracking ----------------------------------------------------------------------

def configure_logging(level: int = logging.INFO) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def plugin_run_id() -> str:
    """The run KFP's MLflow plugin (or `mlflow run`) created for this task, else ''."""
    return os.environ.get("MLFLOW_RUN_ID", "")


def prepare_step(
    cfg: Config,
    mlflow_tracking_uri: str = "",
    parent_run_id: str = "",
    pipeline_run_id: str = "",
) -> str:
    """Set up logging and MLflow for one pipeline step; return the parent run id ('' under the plugin).

    `parent_run_id` '' opens a new parent run (the pipeline's first step). With
    `pipeline_run_id` (the KFP run's id) a parent handed down from another KFP run
    (a cached step) is replaced by a new one.
    """
    from srcore.tracking import PARENT_ENV

    configure_logging()
    if plugin_run_id():
        log.info("MLFLOW_RUN_ID=%s set by KFP's MLflow plugin: logging into that run", plugin_run_id())
        return ""
    if mlflow_tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
    elif not os.environ.get("MLFLOW_TRACKING_URI"):
        log.warning("no MLflow tracking URI (parameter mlflow_tracking_uri, env MLFLOW_TRACKING_URI): "
                    "runs and models stay inside this container")
    parent = _resolve_parent(cfg, parent_run_id, pipeline_run_id)
    os.environ[PARENT_ENV] = parent
    log.info("MLflow %s, parent run %s", os.environ.get("MLFLOW_TRACKING_URI", "(default)"), parent)
    return parent


def _resolve_parent(cfg: Config, parent_run_id: str, pipeline_run_id: str) -> str:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if not parent_run_id:
        return _open_parent(cfg, pipeline_run_id)
    if not pipeline_run_id:
        return parent_run_id
    client = MlflowClient()
    try:
        owner = client.get_run(parent_run_id).data.tags.get(KFP_RUN_TAG, "")
    except MlflowException as e:
        log.warning("parent run %s not found (%s); opening a new one", parent_run_id, e)
        return _open_parent(cfg, pipeline_run_id)
    if owner == pipeline_run_id:
        return parent_run_id
    if not owner:  # opened by this KFP run's ingest: claim it, record the full config
        client.set_tag(parent_run_id, KFP_RUN_TAG, pipeline_run_id)
        _log_config(client, parent_run_id, cfg)
        return parent_run_id
    log.info("parent run %s belongs to KFP run %s (cached ingest); opening one for KFP run %s",
             parent_run_id, owner, pipeline_run_id)
    return _open_parent(cfg, pipeline_run_id, {"srgan.cached_ingest_parent_run_id": parent_run_id})


def _open_parent(cfg: Config, pipeline_run_id: str = "", extra_tags: Mapping[str, str] | None = None) -> str:
    """A finished parent run holding tags only (the full config is logged by the first
    step that sees all of it, see `_resolve_parent`)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from srcore.tracking import git_commit

    exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or mlflow.set_experiment(cfg.experiment_name).experiment_id
    tags = {"srgan.step": "pipeline", **(extra_tags or {})}
    commit = git_commit()
    if commit:
        tags.update({"git_commit": commit, "mlflow.source.git.commit": commit})
    if pipeline_run_id:
        tags[KFP_RUN_TAG] = pipeline_run_id
    client = MlflowClient()
    run = client.create_run(exp_id, run_name=cfg.run_name or PARENT_RUN_NAME, tags=tags)
    if pipeline_run_id:
        _log_config(client, run.info.run_id, cfg)
    client.set_terminated(run.info.run_id)
    log.info("opened parent run %s in experiment %s", run.info.run_id, exp_id)
    return run.info.run_id


def _log_config(client: Any, run_id: str, cfg: Config) -> None:
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    params = [Param(k, str(v)[:6000]) for k, v in cfg.to_dict().items() if k not in existing]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])


# ---- evaluation outputs ----------------------------------------------------------------

def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric top-level entries (what a KFP Metrics artifact can show)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    return out


def write_metrics(path: str | os.PathLike, metrics: Mapping[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(dict(metrics), indent=2, sort_keys=True, default=str))


def read_metrics(path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Metrics written by `write_metrics`, else the artifact's metadata (scalars only)."""
    p = Path(path)
    if p.is_file():
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            log.warning("%s is not JSON; using the artifact metadata", p)
    if metadata:
        return dict(metadata)
    raise FileNotFoundError(f"no metrics at {p} and no metrics metadata")


def _png_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def html_report(metrics: Mapping[str, Any], out_dir: str | os.PathLike, title: str = "SRGAN x4 evaluation") -> str:
    """A self-contained HTML page (KFP UI): metrics table and the sample grids as base64 PNGs."""
    out = Path(out_dir)
    rows = "\n".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{v:.4f}</td></tr>" for k, v in sorted(scalar_metrics(metrics).items())
    )
    grids = sorted(out.glob("grid*.png"), key=lambda p: (p.name != "grid.png", p.name))
    images = "\n".join(f"<h3>{html.escape(p.stem)}</h3>\n{_png_tag(p, p.stem)}" for p in grids)
    if not grids:
        images = "<p>no sample grid was written</p>"
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title></head><body>\n"
        f"<h2>{html.escape(title)}</h2>\n"
        "<p>Columns of the grid: low-res input | bicubic | SR | original.</p>\n"
        f"{images}\n<h3>metrics</h3>\n<table border=\"1\" cellpadding=\"4\">\n"
        f"<tr><th>metric</th><th>value</th></tr>\n{rows}\n</table>\n</body></html>\n"
    )
