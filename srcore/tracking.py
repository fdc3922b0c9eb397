"""The one MLflow protocol of every step: which run a step logs into, and the pipeline's parent run.

Which run `step_run(cfg, step)` logs into, in order:
1. `resume_run_id` (training resume: the run stored beside the checkpoints);
2. a run already active in this process (`srgan main` opened the parent): a nested
   child run named after the step;
3. `MLFLOW_RUN_ID` set by KFP's MLflow plugin (which creates the parent/child structure
   itself): log into exactly that run and create none;
4. a pipeline parent joined with `join_parent` (the KFP glue does this): a child of it;
5. otherwise a new run in `cfg.experiment_name`.

`mlflow run` also sets `MLFLOW_RUN_ID`, for a run it created in the experiment of its own
`--experiment-name` (the `Default` one unless given) with every MLproject parameter
logged as given, '' included. That run is a *launcher*: srgan leaves it empty apart from
a link tag and opens its own runs in `cfg.experiment_name`, so `mlflow run .` lands in
`srgan-celeba` with the resolved values, like every other path.

Pipeline parent runs (KFP without the plugin): the first step opens one with
`open_parent` (status RUNNING, tagged with the KFP run id), every step joins it with
`join_parent`, and the pipeline's exit task ends it with `finish_parent`: FAILED when a
step failed, FINISHED otherwise.

What a run holds: params are the hyper-parameters (`HPARAMS`, the same list on parents,
trials and train runs, what a person varies to change the model); the whole resolved
Config is the `config.yaml` artifact of every run. Parents (main, pipeline, sweep) also
carry the headline test metrics of their result and the registered version and gate
decision (`report_to_parent`), so the parent is the row a user compares.

The tracking URI comes from `MLFLOW_TRACKING_URI`, else MLflow's local default.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow

from srcore.config import Config
from srcore.data.sources import redact_url

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
STEP_TAG = "srgan.step"
KFP_RUN_TAG = "srgan.kfp_run_id"
LAUNCHER_TAG = "srgan.launcher_run_id"
PROJECT_ENTRY_POINT_TAG = "mlflow.project.entryPoint"  # set by `mlflow run` on the run it creates
PARAM_LIMIT = 6000  # MLflow's limit on a param value
CONFIG_ARTIFACT = "config.yaml"
# MLflow 3's UI opens an experiment on its GenAI overview unless the experiment says it is
# for model training (the tag the UI reads; values as in MLflow's ExperimentKind)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow 3.17's UI follows its GenAI / Model training switch (URL `workflowType`, else the
# browser's last choice, GenAI at first) before the tag, so our links also say so; and a
# shared view (an experiment tag the UI reads for `viewStateShareKey`) shows the headline
# columns, which the runs table otherwise hides.
UI_QUERY = "?workflowType=machine_learning&viewStateShareKey=srgan-compare"
VIEW_TAG = "mlflow.sharedViewState.srgan-compare"
# The hyper-parameters: what a person varies to change the model. They are the run params
# (tests/test_tracking.py keeps this list short and every name a Config field); the rest
# (paths, serving, deploy, tracking, fixed task settings such as scale, finer knobs such as
# Adam's betas) is in config.yaml. Short also because MLflow's image cards list a run's
# params above the image.
HPARAMS = (
    # data seen by training
    "limit", "patch_size", "augment", "seed",
    # models
    "gen_filters", "gen_blocks", "gen_bicubic_skip", "disc_filters",
    # losses
    "content_loss", "gan_loss", "adv_weight", "pixel_weight",
    # optimisation
    "batch_size", "epochs", "pretrain_epochs", "steps_per_epoch", "learning_rate", "pretrain_learning_rate",
    "lr_schedule", "precision",
)

_state: dict[str, str] = {"parent": "", "launcher": ""}


# ---- process setup -------------------------------------------------------------------

def configure_logging(level: int | str = logging.INFO) -> None:
    """The one logging setup of every entry point (CLI, KFP components)."""
    if isinstance(level, str):
        level = getattr(logging, level.upper(), logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        logging.getLogger().setLevel(level)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ banner out of our logs
    # TF's Python INFO lines (e.g. "Assets written to: /tmp/srgan-savedmodel-.../assets", a temporary
    # folder that is gone by the next line) are for debugging TF, not for a person following the job
    logging.getLogger("tensorflow").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)


def git_commit() -> str | None:
    env = os.environ.get("SRGAN_GIT_COMMIT")  # baked into the container image
    if env:
        return env
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def run_tags(step: str) -> dict[str, str]:
    tags = {STEP_TAG: step}
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    return tags


def experiment_id(cfg: Config) -> str:
    """The id of `cfg.experiment_name`, created when missing with the tag that makes
    MLflow's UI open it on the runs table (the one experiment lookup)."""
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    if experiment is None:
        try:
            client.create_experiment(cfg.experiment_name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except mlflow.exceptions.MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":  # another step created it meanwhile
                raise
    elif EXPERIMENT_KIND_TAG not in experiment.tags:  # made before the tag was set: say it once
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    exp_id = mlflow.set_experiment(cfg.experiment_name).experiment_id
    if experiment is None or VIEW_TAG not in experiment.tags:
        client.set_experiment_tag(exp_id, VIEW_TAG, _compare_view())
    return exp_id


def _compare_view() -> str:
    """The runs table's shared view: the headline columns a person compares runs by."""
    import json

    from srcore.metric_names import HEADLINE

    columns = [f"metrics.`{m}`" for m in (*HEADLINE, "val/psnr_y")]
    columns += [f"tags.`{t}`" for t in ("registered_model_version", "gate.decision")]
    return json.dumps({"selectedColumns": columns})


def run_name(cfg: Config, step: str = "") -> str:
    """`cfg.run_name`, else a name that tells runs apart in a table, e.g.
    `celeba e60 vgg19_54 bs30` for a parent, `train celeba e60 vgg19_54 bs30` for a step."""
    if cfg.run_name:
        return f"{step} {cfg.run_name}" if step else cfg.run_name
    source = redact_url(cfg.source).rstrip("/")
    # `srgan train` has no source, only the ingest folder it reads: name the run after that folder
    where = source or Path(cfg.data_dir.rstrip("/")).name or "data"
    label = "demo" if source == "demo" else Path(where).stem.replace("img_align_", "")
    pre = f"p{cfg.pretrain_epochs}+" if cfg.pretrain_epochs else ""
    name = f"{label} {pre}e{cfg.epochs} {cfg.content_loss} bs{cfg.batch_size}"
    return f"{step} {name}" if step else name


# ---- params --------------------------------------------------------------------------

def param_value(v: Any) -> str:
    return str(v)[:PARAM_LIMIT]


def config_params(cfg: Config) -> dict[str, str]:
    """The hyper-parameters of `cfg` (HPARAMS) as run params."""
    values = cfg.to_dict()
    return {k: param_value(values[k]) for k in HPARAMS}


def config_yaml(cfg: Config) -> str:
    """The resolved Config as YAML; a source URL redacted (no credentials, no query signatures)."""
    import yaml

    return yaml.safe_dump({**cfg.to_dict(), "source": redact_url(cfg.source)}, sort_keys=False)


def log_config(cfg: Config, run_id: str | None = None, params: bool = True) -> None:
    """The resolved Config as `config.yaml` of the run, and its hyper-parameters as params
    (`params`: parents, trials and train runs)."""
    run_id = run_id or mlflow.active_run().info.run_id
    mlflow.MlflowClient().log_text(run_id, config_yaml(cfg), CONFIG_ARTIFACT)
    if params:
        log_params(config_params(cfg), run_id)


def log_params(params: Mapping[str, Any], run_id: str | None = None) -> None:
    """Log params into `run_id` (default: the active run), skipping keys already there
    (resume, reruns): MLflow params are immutable, so a differing value is warned about."""
    run_id = run_id or (mlflow.active_run().info.run_id if mlflow.active_run() else None)
    if run_id is None:
        return
    client = mlflow.MlflowClient()
    existing = client.get_run(run_id).data.params
    values = {k: param_value(v) for k, v in params.items()}
    fresh = [mlflow.entities.Param(k, v) for k, v in values.items() if k not in existing]
    changed = {k: (existing[k], v) for k, v in values.items() if k in existing and existing[k] != v}
    if changed:
        log.warning("run %s already has different params %s; keeping the originals", run_id, changed)
    for i in range(0, len(fresh), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=fresh[i:i + 100])


# ---- which run a step logs into ------------------------------------------------------

def plugin_run_id() -> str:
    """The run KFP's MLflow plugin created for this task ('' when none; see module doc)."""
    _detach_launcher()
    return os.environ.get("MLFLOW_RUN_ID", "")


def _detach_launcher() -> None:
    """A run `mlflow run` created is a launcher, not ours to log into (module doc)."""
    run_id = os.environ.get("MLFLOW_RUN_ID", "")
    if not run_id or _state["launcher"] == run_id:
        return
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return
    if PROJECT_ENTRY_POINT_TAG in run.data.tags:
        _state["launcher"] = run_id
        # start_run() would otherwise resume it; MLFLOW_EXPERIMENT_ID names its experiment
        os.environ.pop("MLFLOW_RUN_ID", None)
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        log.info("run %s was created by `mlflow run`: logging into experiment runs of our own instead", run_id)


def _link_launcher(run_id: str) -> dict[str, str]:
    launcher = _state["launcher"]
    if not launcher:
        return {}
    client = mlflow.MlflowClient()
    client.set_tag(launcher, "srgan.run_id", run_id)
    client.set_tag(launcher, "mlflow.note.content",
                   f"Launcher of `mlflow run`. The job's runs are in MLflow run {run_id} and its children.")
    _state["launcher"] = ""  # the first run we open is the one linked
    return {LAUNCHER_TAG: launcher}


def join_parent(parent_run_id: str) -> None:
    """Steps of this process become children of `parent_run_id` (the KFP glue calls this)."""
    _state["parent"] = parent_run_id


ERROR_TAG = "srgan.error"


@contextlib.contextmanager
def _failure_noted() -> Iterator[None]:
    """A run that ends FAILED says why: the error's one line as a tag and as the run's note."""
    try:
        yield
    except Exception as exc:
        line = (f"{type(exc).__name__}: {exc}".splitlines() or [""])[0][:PARAM_LIMIT]
        try:
            mlflow.set_tags({ERROR_TAG: line, "mlflow.note.content": f"Failed: {line}"})
        except Exception:  # noqa: BLE001 - never hide the original error behind a tracking one
            log.debug("could not record the failure on the run", exc_info=True)
        raise


@contextlib.contextmanager
def step_run(cfg: Config, step: str, resume_run_id: str | None = None, log_config: bool = True) -> Iterator[mlflow.ActiveRun]:
    """Context manager yielding the active MLflow run for `step` (see module doc)."""
    active = mlflow.active_run()
    if resume_run_id:
        if active and active.info.run_id != resume_run_id:
            # `main` opened a child for this step, but training resumes its old run
            ctx = mlflow.start_run(run_id=resume_run_id, nested=True)
        elif active:
            ctx = contextlib.nullcontext(active)
        else:
            ctx = mlflow.start_run(run_id=resume_run_id)
    elif active:
        ctx = mlflow.start_run(run_name=run_name(cfg, step), nested=True, tags=run_tags(step))
    elif plugin_run_id():
        ctx = mlflow.start_run(run_id=plugin_run_id())
    elif _state["parent"]:
        parent = mlflow.MlflowClient().get_run(_state["parent"])
        tags = {**run_tags(step), PARENT_TAG: parent.info.run_id}
        ctx = mlflow.start_run(experiment_id=parent.info.experiment_id, run_name=run_name(cfg, step), tags=tags)
    else:
        ctx = mlflow.start_run(experiment_id=experiment_id(cfg), run_name=run_name(cfg, step), tags=run_tags(step))
    with ctx as run, _failure_noted():
        if not resume_run_id:
            mlflow.set_tags(_link_launcher(run.info.run_id))
            if log_config:
                log_config_for_step(cfg, step, run.info.run_id)
        yield run


def log_config_for_step(cfg: Config, step: str, run_id: str) -> None:
    """config.yaml on every step run; the hyper-parameters as params on train only (the
    run a model comes from; ingest, evaluate and register do not vary them)."""
    log_config(cfg, run_id, params=step == "train")


@contextlib.contextmanager
def main_run(cfg: Config) -> Iterator[mlflow.ActiveRun]:
    """The parent run of `srgan main` (and `mlflow run .`): every step below is its child."""
    _detach_launcher()
    if plugin_run_id():
        ctx = mlflow.start_run(run_id=plugin_run_id())
    else:
        ctx = mlflow.start_run(experiment_id=experiment_id(cfg), run_name=run_name(cfg), tags=run_tags("main"))
    with ctx as run, _failure_noted():
        mlflow.set_tags(_link_launcher(run.info.run_id))
        log_config(cfg, run.info.run_id)
        yield run


# ---- pipeline parent run (KFP without the plugin) ------------------------------------

def _parent_filter(pipeline_run_id: str) -> str:
    return f"tags.`{KFP_RUN_TAG}` = '{pipeline_run_id}' and tags.`{STEP_TAG}` = 'pipeline'"


def running_parent(pipeline_run_id: str) -> str:
    """The RUNNING parent run of KFP run `pipeline_run_id` ('' when none): a retried first
    step joins it instead of opening another. An unresolved KFP placeholder
    ('{{$.pipeline_job_uuid}}' before KFP 2.5) names no run: never reused."""
    if not pipeline_run_id or "{{" in pipeline_run_id:
        return ""
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=1,
                              filter_string=f"{_parent_filter(pipeline_run_id)} and attributes.status = 'RUNNING'",
                              order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else ""


def open_parent(cfg: Config, pipeline_run_id: str = "") -> str:
    """A RUNNING parent run for one pipeline run, holding the resolved Config; returns its id.
    It stays RUNNING until `finish_parent` (the pipeline's exit task). A retried first step
    reuses the one its earlier attempt opened (`running_parent`)."""
    existing = running_parent(pipeline_run_id)
    if existing:
        log.info("reusing parent run %s of KFP run %s (a retried attempt)", existing, pipeline_run_id)
        return existing
    client = mlflow.MlflowClient()
    tags = run_tags("pipeline")
    if pipeline_run_id:
        tags[KFP_RUN_TAG] = pipeline_run_id
    run = client.create_run(experiment_id(cfg), run_name=run_name(cfg), tags=tags)
    log_config(cfg, run.info.run_id)
    log.info("opened parent run %s in experiment %s", run.info.run_id, cfg.experiment_name)
    return run.info.run_id


def finish_parent(pipeline_run_id: str, failed: bool, detail: str = "") -> list[str]:
    """End the parent run(s) of KFP run `pipeline_run_id`: FAILED or FINISHED. Returns their ids."""
    if not pipeline_run_id:
        return []
    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=_parent_filter(pipeline_run_id))
    status = "FAILED" if failed else "FINISHED"
    for run in runs:
        if detail:
            client.set_tag(run.info.run_id, "srgan.pipeline_status", detail[:PARAM_LIMIT])
        client.set_terminated(run.info.run_id, status=status)
        log.info("parent run %s of KFP run %s ended %s", run.info.run_id, pipeline_run_id, status)
    return [r.info.run_id for r in runs]


def logged_model_id(model_uri: str) -> str | None:
    """The MLflow 3 LoggedModel id behind `model_uri` (`models:/m-...`, `models:/name/1`,
    `models:/name@alias`), else None (a file path, `runs:/`, bicubic)."""
    if not model_uri.startswith("models:/"):
        return None
    ref = model_uri[len("models:/"):].split("/", 1)
    if ref[0].startswith("m-") and len(ref) == 1:
        return ref[0]
    client = mlflow.MlflowClient()
    try:
        if "@" in ref[0]:
            name, alias = ref[0].split("@", 1)
            return client.get_model_version_by_alias(name, alias).model_id
        if len(ref) == 2:
            return client.get_model_version(ref[0], ref[1]).model_id
    except mlflow.exceptions.MlflowException as e:
        log.warning("cannot resolve the logged model of %s: %s", model_uri, e)
    return None


# ---- the parent run is the row a user compares ---------------------------------------

def headline_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The headline numbers of an evaluation (metric_names.HEADLINE), old names migrated."""
    import math

    from srcore.metric_names import HEADLINE, migrate

    values = migrate(metrics)
    return {k: float(v) for k in HEADLINE if isinstance(v := values.get(k), (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


def report_to_parent(metrics: Mapping[str, Any], registered: Any, extra_metrics: Mapping[str, float] | None = None,
                     extra_tags: Mapping[str, str] | None = None) -> str:
    """From inside the register run: put the headline test metrics, the registered
    version and the gate decision on its parent (main, pipeline or sweep), and the
    evaluation's showcase grid. Returns the parent's id ('' when there is none, e.g. a
    standalone `srgan register` or KFP's MLflow plugin)."""
    active = mlflow.active_run()
    if active is None:
        return ""
    client = mlflow.MlflowClient()
    parent_id = client.get_run(active.info.run_id).data.tags.get(PARENT_TAG, "")
    if not parent_id:
        return ""
    values = {**headline_metrics(metrics), **(extra_metrics or {})}
    client.log_batch(parent_id, metrics=[mlflow.entities.Metric(k, v, 0, 0) for k, v in values.items()])
    tags = {
        "registered_model_name": registered.name,
        "registered_model_version": str(registered.version),
        "gate.decision": "champion" if registered.champion else "candidate",
        "gate.reason": str(registered.reason)[:5000],
        **(extra_tags or {}),
    }
    client.log_batch(parent_id, tags=[mlflow.entities.RunTag(k, v) for k, v in tags.items()])
    _copy_showcase(client, str(metrics.get("mlflow_run_id") or ""), parent_id)
    return parent_id


def _copy_showcase(client: mlflow.MlflowClient, eval_run_id: str, parent_id: str) -> None:
    """The evaluation's sample grid on the parent too, as a plain file: the parent carries
    params, and MLflow's image card would caption the grid with all of them."""
    if not eval_run_id:
        return
    import tempfile

    from PIL import Image

    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=eval_run_id, artifact_path="showcase/latest.png",
                                                        dst_path=tmp)
            with Image.open(local) as grid:
                grid.load()
                client.log_image(parent_id, grid, artifact_file="showcase/latest.png")
    except (mlflow.exceptions.MlflowException, OSError) as e:
        log.warning("could not copy the showcase grid of run %s to the parent run: %s", eval_run_id, e)


# ---- where to look ---------------------------------------------------------------------

def ui_base() -> str:
    """The MLflow UI's base URL when the tracking URI is a server, else ''."""
    uri = mlflow.get_tracking_uri()
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else ""


def where_to_look(experiment_id_: str) -> str:
    """The experiment's runs page in the MLflow UI (the runs table with the headline
    columns), or how to open it for a local store."""
    page = f"/#/experiments/{experiment_id_}/runs{UI_QUERY}"
    base = ui_base()
    if base:
        return base + page
    uri = mlflow.get_tracking_uri()
    return f"`mlflow ui --backend-store-uri {uri}` (from this folder), then http://127.0.0.1:5000{page}"
