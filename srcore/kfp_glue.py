"""KFP glue: what a component needs around its step function, tested with srcore and
run from the project's image (a lightweight component embeds only its own function body).

- `pipeline_config`: the first step's parameters (preset, a JSON object of Config
  fields, the pipeline's named parameters as strings where '' means "not given") -> the
  one typed `Config`, with its folders placed on the shared volume. Its JSON
  (`config_json`) then travels to every later step (`step_config`).
- `check_volume`: ingest, train and evaluate fail in their first second, in one line
  naming the folder, the uid and the fix, when the shared volume is not writable
  (srcore.volume).
- `connect`: the MLflow tracking URI and the pipeline's parent run (the protocol itself
  is srcore.tracking's).
- `run_key`: the key of one pipeline run (its folders on the volume, its MLflow parent
  run): the `run_key` parameter, else the KFP run id when the backend resolved it.
- `finish`: the exit task's end of the parent run, FAILED or FINISHED from the steps'
  own MLflow runs (no PipelineTaskFinalStatus: KFP before 2.14 refuses it).
- `scalar_metrics`, `write_metrics`, `read_metrics`, `html_report`: evaluation results
  as a KFP Metrics artifact and an HTML page with the sample grid embedded.

Shared volume layout (`volume_root`, /mnt/srgan on a cluster, any local folder under
kfp.local): `data/<name>-<key>/` the ingest output (key: hash of what shapes the
data), `cache/` downloads and weights, `runs/<run key>/model/` (or `checkpoint_dir`)
the training folder with its checkpoints, so a retried or rerun train resumes.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

from srcore import tracking, tracking_server
from srcore.config import (Config, ConfigError, apply_overrides, build_config, config_from_json, json_object,
                           require_source)
from srcore.data.sources import redact_url

log = logging.getLogger(__name__)

# The pipeline's named Config parameters. KFP components need explicit signatures, so
# these names are spelled out again in the pipeline (pipeline/dag.py) and in the first
# step's component (components/ingest.py); tests/test_steps.py keeps the three equal.
PIPELINE_CONFIG_PARAMS = ("source", "limit", "test_count", "epochs", "pretrain_epochs", "batch_size", "content_loss",
                          "registered_model_name", "experiment_name", "require_gpu")
# The parameters of every component after the first: the tracking connection (besides
# config_json and the step's own inputs from srcore.steps.STEPS).
STEP_PARAMS = ("config_json", "mlflow_tracking_uri", "parent_run_id")
# The first step (ingest) resolves the Config from the pipeline's parameters instead.
FIRST_STEP_PARAMS = ("preset", "config_overrides", *PIPELINE_CONFIG_PARAMS, "mlflow_tracking_uri", "pipeline_run_id",
                     "volume_root", "checkpoint_dir", "run_key")
# A run key names a folder and is a tag value: short, no path separators.
RUN_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Step runs whose failure does not fail the pipeline (a sweep goes on without a failed trial).
TOLERATED_STEPS = ("trial",)
# Fields that decide the ingest output; their hash names its folder on the volume.
DATA_KEY_FIELDS = ("source", "limit", "test_count", "showcase_count", "partition_file", "sha256", "hr_size",
                   "max_pixels", "shard_size")


# ---- configuration ---------------------------------------------------------------

def pipeline_config(preset: str = "", config_overrides: str | Mapping[str, Any] | None = "", volume_root: str = "",
                    pipeline_run_id: str = "", checkpoint_dir: str = "", **params: Any) -> Config:
    """preset < config_overrides < named parameters ('' / None = not given); folders on
    the volume when `volume_root` is given. Refuses a run without a source."""
    tracking.configure_logging()
    overrides = json_object("config_overrides", config_overrides)
    for key, value in params.items():
        if value is None or value == "":
            continue
        if key in overrides and str(overrides[key]) != str(value):
            log.warning("parameter %s=%r overrides config_overrides' %r", key, redact_url(str(value)),
                        redact_url(str(overrides[key])))
        overrides[key] = value
    cfg = build_config(preset or None, overrides=overrides)
    require_source(cfg)
    if volume_root:
        cfg = on_volume(cfg, volume_root, pipeline_run_id, checkpoint_dir)
    return cfg


def step_config(config_json: str, overrides: str = "") -> Config:
    """The Config a later step gets from the first step's `config_json` output."""
    tracking.configure_logging()
    return config_from_json(config_json, overrides)


def data_key(cfg: Config) -> str:
    values = {k: getattr(cfg, k) for k in DATA_KEY_FIELDS}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def on_volume(cfg: Config, volume_root: str, pipeline_run_id: str = "", checkpoint_dir: str = "") -> Config:
    """`cfg` with its folders on the shared volume (module doc); a relative source path is
    a file on the volume. Absolute folders given explicitly are kept."""
    root = Path(volume_root)
    source = cfg.source
    if source and source != "demo" and "://" not in source and not Path(source).expanduser().is_absolute():
        source = str(root / source)

    def place(current: str, default: Path) -> str:
        return current if Path(current).is_absolute() else str(default)  # '~/...' too: the pod's home is not kept

    run_dir = root / "runs" / (pipeline_run_id or "local")
    if checkpoint_dir and not Path(checkpoint_dir).expanduser().is_absolute():
        checkpoint_dir = str(root / checkpoint_dir)  # on the volume, not in the pod's lost home folder
    return apply_overrides(cfg, {
        "source": source,
        "data_dir": place(cfg.data_dir, root / "data" / f"{Path(cfg.data_dir).name}-{data_key(cfg)}"),
        "cache_dir": place(cfg.cache_dir, root / "cache"),
        "model_dir": checkpoint_dir or place(cfg.model_dir, run_dir / "model"),
        "eval_dir": place(cfg.eval_dir, run_dir / "eval"),
    })


def check_volume(cfg: Config, step: str, *paths: str) -> None:
    """Exit at once with one line (folder, uid, fix) when `step` cannot write its folders
    (srcore.volume.STEP_OUTPUTS, plus `paths`): SystemExit prints only that line, no traceback."""
    from srcore import volume

    try:
        volume.check_step(cfg, step, paths)
    except volume.VolumeNotWritableError as e:
        raise SystemExit(f"{step}: {e}") from None


# ---- tracking ----------------------------------------------------------------------

def connect(cfg: Config, mlflow_tracking_uri: str = "", parent_run_id: str = "", pipeline_run_id: str = "",
            first: bool = False) -> str:
    """Point MLflow at the tracking server and join the pipeline's parent run, opened here
    by the first step (`first`). Returns the parent run id ('' under KFP's MLflow plugin,
    whose environment wins over these parameters)."""
    tracking.configure_logging()
    if tracking.plugin_run_id():
        log.info("MLFLOW_RUN_ID=%s set by KFP's MLflow plugin: logging into that run", tracking.plugin_run_id())
        return ""
    if mlflow_tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
    elif not os.environ.get("MLFLOW_TRACKING_URI"):
        log.warning("no MLflow tracking URI (parameter mlflow_tracking_uri, env MLFLOW_TRACKING_URI): "
                    "runs and models stay inside this container")
    # before the parent run: an unusable server or artifact store fails in seconds, in one line
    tracking_server.preflight(cfg)
    parent = tracking.open_parent(cfg, pipeline_run_id) if first else parent_run_id
    if parent:
        tracking.join_parent(parent)
    log.info("MLflow %s, parent run %s", redact_url(os.environ.get("MLFLOW_TRACKING_URI", "(default)")), parent or "(none)")
    return parent


def run_key(key: str = "", pipeline_run_id: str = "") -> str:
    """The key of this pipeline run: `key` (the run_key parameter) when given, else the
    KFP run id. KFP backends before 2.5 pass `{{$.pipeline_job_uuid}}` through unresolved
    (kubeflow/pipelines #11599, CHANGELOG 2.5.0): every run would share one key, so one
    run would resume another's checkpoints. Refused then, naming the fix. '' = no KFP
    run (a local call)."""
    key = (key or "").strip()
    if key:
        if not RUN_KEY_PATTERN.match(key):
            raise ConfigError(f"invalid parameter run_key={key!r}: use up to 100 letters, digits, '.', '_' or '-' "
                              "(it names the run's folder on the volume)")
        return key
    run_id = (pipeline_run_id or "").strip()
    if "{{" in run_id:
        raise ConfigError(
            f"invalid parameter run_key='': this KFP backend passed the run id through unresolved ({run_id}; KFP "
            "before 2.5 does), so runs could not be told apart: set run_key to a name unique to this run "
            "(python -m pipeline submit sets one)")
    return run_id


def pipeline_outcome(parent_run_id: str, final_step: str = "register") -> tuple[bool, str]:
    """(failed, why) of the pipeline under `parent_run_id`, from its steps' own MLflow
    runs: a step fails its run (srcore.tracking.step_run) and a killed pod leaves it
    RUNNING. The newest run of each step counts (a retried step succeeds on its last
    attempt); `final_step` must have FINISHED; TOLERATED_STEPS never fail the pipeline."""
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.`{tracking.PARENT_TAG}` = '{parent_run_id}'",
                                  order_by=["attributes.start_time DESC"], max_results=1000)
    newest: dict[str, Any] = {}
    for child in children:
        newest.setdefault(child.data.tags.get(tracking.STEP_TAG, ""), child)
    bad = [f"{step} {run.info.status}" for step, run in sorted(newest.items())
           if step not in TOLERATED_STEPS and run.info.status != "FINISHED"]
    if final_step and final_step not in newest:
        bad.append(f"{final_step} never ran")
    return bool(bad), "; ".join(bad) or "every step finished"


def end_running_children(parent_run_id: str, status: str = "FAILED") -> list[str]:
    """End the RUNNING runs under `parent_run_id`, recursively (a killed pod's step run,
    a failed trial's runs): nothing of a finished pipeline stays RUNNING."""
    import mlflow

    client = mlflow.MlflowClient()
    exp = client.get_run(parent_run_id).info.experiment_id
    ended: list[str] = []
    for child in client.search_runs([exp], f"tags.`{tracking.PARENT_TAG}` = '{parent_run_id}'", max_results=1000):
        ended += end_running_children(child.info.run_id, status)
        if child.info.status == "RUNNING":
            client.set_terminated(child.info.run_id, status)
            ended.append(child.info.run_id)
    return ended


def finish(mlflow_tracking_uri: str, pipeline_run_id: str, key: str = "", final_step: str = "register") -> list[dict]:
    """The exit task: end this run's RUNNING parent run(s) FAILED or FINISHED, as the
    steps' own MLflow runs say (`pipeline_outcome`), and any run left RUNNING under them
    FAILED. Returns [{"run_id", "failed", "why"}] per parent."""
    tracking.configure_logging()
    if tracking.plugin_run_id():
        return []
    if mlflow_tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
    try:
        key = run_key(key, pipeline_run_id)
    except ConfigError as e:
        log.warning("no parent run to end: %s", e)
        return []
    if not key:
        return []
    import mlflow

    client = mlflow.MlflowClient()
    parents = mlflow.search_runs(search_all_experiments=True, output_format="list", filter_string=(
        f"tags.`{tracking.KFP_RUN_TAG}` = '{key}' and tags.`{tracking.STEP_TAG}` = 'pipeline' "
        "and attributes.status = 'RUNNING'"))
    out = []
    for parent in parents:
        failed, why = pipeline_outcome(parent.info.run_id, final_step)
        end_running_children(parent.info.run_id)
        client.set_tag(parent.info.run_id, "srgan.pipeline_status", why[:tracking.PARAM_LIMIT])
        client.set_terminated(parent.info.run_id, "FAILED" if failed else "FINISHED")
        log.info("parent run %s of run %s ended %s: %s", parent.info.run_id, key, "FAILED" if failed else "FINISHED",
                 why)
        out.append({"run_id": parent.info.run_id, "failed": failed, "why": why})
    if not parents:
        log.warning("no RUNNING parent run tagged %s=%s (ingest failed before opening it?)", tracking.KFP_RUN_TAG, key)
    return out


def artifact_metadata(path: str, content_hash: str = "", **extra: Any) -> dict[str, Any]:
    """KFP artifact metadata pointing at a folder on the volume (the artifact stays small)."""
    return {"volume_path": str(path), **({"content_hash": content_hash} if content_hash else {}), **extra}


def write_pointer(artifact_path: str, metadata: Mapping[str, Any]) -> None:
    """The artifact's own file: a small JSON copy of its metadata (where the data lives)."""
    write_metrics(artifact_path, metadata)


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
