"""The table of steps: one row per step drives `srgan <step>`, the MLproject entry points,
the KFP components' parameters (checked by tests) and the docs table.

Every step is `function(cfg, **inputs) -> dict` of outputs and opens its MLflow run with
`srcore.tracking.step_run` (train and evaluate inside their modules). Inputs are strings
('' = not given), so the same names work as CLI flags, MLproject and KFP parameters.

Adding a step: write its function, add a row to `STEPS`, then run
`python -m srcore.steps` to regenerate MLproject and the docs table (tests fail until
then); add `components/<step>.py` if it runs on Kubeflow.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

from srcore.config import SECTIONS, Config, ConfigError, apply_overrides, config_from_json, config_to_json, require_source, section_fields

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Input:
    name: str
    help: str
    required: bool = False
    many: bool = False  # one or more values (CLI: positional); only for steps not on KFP


@dataclasses.dataclass(frozen=True)
class Step:
    function: str  # "module:function", imported when the step runs (keeps `srgan --help` fast)
    config: tuple[str, ...]  # the Config fields this step reads: its --help groups
    inputs: tuple[Input, ...]
    outputs: tuple[str, ...]
    help: str
    mlproject: tuple[str, ...] | None = None  # Config fields offered as MLproject parameters; None = no entry point
    out: str = ""  # the Config field `--out` stands for (the step's output folder)
    shown: tuple[str, ...] = ()  # Config fields `--help` lists (default: config); all are flags anyway
    needs_source: bool = False  # refuse a missing --source before anything else (network included)

    def load(self) -> Callable[..., dict[str, Any]]:
        module, name = self.function.split(":")
        return getattr(importlib.import_module(module), name)

    @property
    def sections(self) -> list[str]:
        """Config sections this step reads, in SECTIONS order."""
        return [s for s, names in SECTIONS.items() if set(names) & set(self.config)]


def _fields(*sections: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return tuple(section_fields(*sections)) + tuple(f for f in extra if f not in section_fields(*sections))


_TRAIN_PARAMS = ("epochs", "pretrain_epochs", "batch_size", "content_loss", "precision")

STEPS: dict[str, Step] = {
    "ingest": Step(
        "srcore.steps:ingest_step", _fields("data", "tracking", extra=("hr_size",)), (),
        ("data_dir", "content_hash", "config_json"),
        "select, center-crop and split the source's images into train shards + test PNGs",
        mlproject=("source", "data_dir", "limit", "test_count"), out="data_dir", needs_source=True,
    ),
    "train": Step(
        "srcore.steps:train_step", _fields("input", "model", "loss", "train", "tracking", extra=("data_dir",)),
        (Input("overrides", "JSON object of Config fields applied on top of the configuration (sweep trials)"),),
        ("model_dir", "generator", "model_uri", "run_id", "epochs_done", "config_json"),
        "train (or resume) the SRGAN on an ingest output; logs to MLflow",
        mlproject=("data_dir", "model_dir", *_TRAIN_PARAMS), out="model_dir",
    ),
    "evaluate": Step(
        "srcore.steps:evaluate_step", _fields("evaluate", "tracking", extra=("data_dir", "cache_dir")),
        (Input("model", ".keras path, runs:/ or models:/ URI, or 'bicubic'", required=True),
         Input("model_uri", "MLflow model whose LoggedModel gets the metrics (default: --model when it is models:/)")),
        ("eval_dir", "metrics"),
        "PSNR/SSIM/LPIPS on the test split against bicubic, sample grids",
        mlproject=("data_dir", "eval_dir", "crop_border"), out="eval_dir",
    ),
    "register": Step(
        "srcore.steps:register_step", _fields("register", "tracking", extra=("eval_dir",)),
        (Input("model_uri", "MLflow model URI to register", required=True),
         Input("metrics", "metrics.json written by `srgan evaluate` (default: <eval_dir>/metrics.json)"),
         Input("manifest_hash", "content hash of the ingest output the model was evaluated on")),
        ("version", "champion", "reason"),
        "register a model version; alias champion if it passes the gate",
        mlproject=("registered_model_name", "gate_metric", "gate_mode"),
    ),
    "upscale": Step(
        "srcore.steps:upscale_step", ("max_pixels", "max_file_bytes"),
        (Input("model", ".keras path or MLflow model URI (e.g. models:/srgan-celeba@champion)", required=True),
         Input("images", "image files or folders", required=True, many=True),
         Input("out", "output folder", required=True),
         Input("tile", "LR tile size for bounded memory (default: the upscaler's)")),
        ("outputs", "skipped"),
        "upscale image files x4 with a generator",
    ),
    "export": Step(
        "srcore.export:export_step", _fields("export", "serve",
                                              extra=("registered_model_name", "deploy_storage_uri")),
        (Input("model", ".keras path or MLflow model URI (anything upscale takes)", required=True),
         Input("out", "output folder: the SavedModel goes to <out>/<model_name>/<version>/ (empty: to "
                      "deploy_storage_uri s3:// or gs://, or the pipeline's volume)"),
         Input("model_name", "model name folder (default: registered_model_name)"),
         Input("model_version", "version folder: the registered version (default: export_version)"),
         Input("volume_root", "where the pipeline's volume is mounted (KFP: the deploy branch)"),
         Input("volume_claim", "the volume's claim, for the pvc:// URI KServe reads it by")),
        ("savedmodel_dir", "model_base_path", "storage_uri", "name", "version", "signature", "max_pixels",
         "max_batch"),
        "write a TensorFlow SavedModel (uint8 in, uint8 x4 out) in the TF Serving / KServe layout",
    ),
    "serve": Step(
        "srcore.server:serve_step", _fields("serve", extra=("registered_model_name",)),
        (Input("model", "serving SavedModel folder (version or base), .keras file or MLflow model URI", required=True),
         Input("model_name", "model name in /v1/models/<name> (default: registered_model_name)"),
         Input("host", "address to bind (default 127.0.0.1; 0.0.0.0 to be reached from other hosts)"),
         Input("port", "TCP port (default 8080)")),
        ("url",),
        "serve the upscaler over HTTP, bounded (KServe v1 :predict and MLflow /invocations) until Ctrl-C",
    ),
    "deploy": Step(
        "srcore.deploy:deploy_step", _fields("deploy", "serve", "tracking", extra=("registered_model_name",)),
        (Input("model_version", "registered version to serve (default: the champion)"),
         Input("storage_uri", "the version's SavedModel folder as KServe reads it (default: "
                              "deploy_storage_uri/<name>/<version>, else the version's MLflow artifact)"),
         # inputs as well as Config fields: KFP pipeline parameters reach a step only as inputs
         Input("namespace", "Kubernetes namespace (default: deploy_namespace)"),
         Input("service_name", "InferenceService name (default: deploy_service_name)"),
         Input("image", "predictor image, the project's (deploy_image, when set, wins)"),
         Input("gpu_image", "predictor image when deploy_gpus > 0 (default: image)")),
        ("url", "namespace", "name", "action", "storage_uri", "generation", "registered_model_name",
         "registered_model_version"),
        "serve a registered version on KServe (InferenceService running srcore.server) and wait until Ready",
    ),
    "sweep": Step(
        "srcore.sweep:sweep_step", tuple(section_fields(*SECTIONS)),
        (Input("trials", "JSON file with a list of trials (objects of Config fields)", required=True),),
        ("parent_run_id", "best_trial", "best_trial_run_id", "best_model_uri", "metric", "best_value",
         "registered_version", "champion", "reason", "trials"),
        "train + evaluate each trial as a child run of one sweep parent; register the best",
        # every field applies to each trial; --help lists what a sweep itself adds
        shown=("source", "data_dir", "model_dir", "eval_dir", "epochs", "pretrain_epochs", "batch_size",
               *section_fields("register", "tracking", "sweep")),
        needs_source=True,
    ),
    "main": Step(
        "srcore.steps:main_step", _fields("data", "input", "model", "loss", "train", "evaluate", "register", "tracking"), (),
        ("parent_run_id", "model_uri", "registered_version", "champion"),
        "ingest -> train -> evaluate -> register as one MLflow parent run",
        mlproject=("source", "limit", "test_count", *_TRAIN_PARAMS, "registered_model_name", "experiment_name",
                   "data_dir", "model_dir", "eval_dir"),
        needs_source=True,
    ),
}


def run(name: str, cfg: Config, **inputs: Any) -> dict[str, Any]:
    """Run step `name` with its inputs ('' / None = not given)."""
    step = STEPS[name]
    known = {i.name for i in step.inputs}
    unknown = set(inputs) - known
    if unknown:
        raise TypeError(f"step {name} has no input(s) {', '.join(sorted(unknown))}; inputs: {', '.join(sorted(known))}")
    given = {k: v for k, v in inputs.items() if v not in (None, "")}
    if step.needs_source:
        require_source(cfg)  # a missing source is the user's first fix: say it before any network check
    tracked = "tracking" in step.sections
    if tracked or any(str(v).startswith(("models:/", "runs:/")) for v in given.values()):
        # a remote tracking server or artifact store that cannot be used fails here, in
        # seconds, not after the work (srcore.tracking_server)
        from srcore import tracking_server

        tracking_server.preflight(cfg, artifacts=tracked)
    return step.load()(cfg, **given)


# ---- the step functions -----------------------------------------------------------------

def is_ingest_output(path: str) -> bool:
    return bool(path) and (Path(path).expanduser() / "manifest.json").is_file()


def ingest_output_hash(data_dir: str) -> str:
    """The content_hash of an ingest output given as the source; ConfigError in one line
    naming the manifest when it cannot be read or has none (hand-made or edited)."""
    from srcore.data.manifest import MANIFEST

    path = Path(data_dir).expanduser() / MANIFEST
    redo = (f"pass the original images as --source to ingest them afresh, or rebuild this folder with "
            f"`srgan ingest --source <images> --data-dir {data_dir} --force`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"invalid parameter source={data_dir!r}: cannot read {path} ({err}); {redo}") from None
    value = manifest.get("content_hash") if isinstance(manifest, dict) else None
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"invalid parameter source={data_dir!r}: {path} has no content_hash, so it was not written by "
            f"srgan ingest (or was edited); {redo}"
        )
    return value


def ingest_step(cfg: Config) -> dict[str, Any]:
    """Ingest `cfg.source` into `cfg.data_dir`, tracked in MLflow."""
    import mlflow

    from srcore import tracking
    from srcore.data.ingest import ingest

    require_source(cfg)
    with tracking.step_run(cfg, "ingest"):
        manifest = ingest(cfg, out_dir=cfg.data_dir)
        mlflow.log_metrics({f"data/{k}_images": float(v) for k, v in manifest["counts"].items()})
        mlflow.set_tag("data_manifest_hash", manifest["content_hash"])
        mlflow.log_artifact(str(Path(cfg.data_dir).expanduser() / "manifest.json"), artifact_path="data")
    return {"data_dir": str(Path(cfg.data_dir).expanduser()), "content_hash": manifest["content_hash"],
            "counts": manifest["counts"], "config_json": config_to_json(cfg)}


def train_step(cfg: Config, overrides: str = "") -> dict[str, Any]:
    """Train on `cfg.data_dir` into `cfg.model_dir`; `overrides` (JSON) apply on top of cfg."""
    from srcore.train import train

    cfg = config_from_json(config_to_json(cfg), overrides) if overrides else cfg
    result = train(cfg)
    return {"model_dir": result.model_dir, "generator": result.generator_path, "model_uri": result.model_uri,
            "run_id": result.run_id, "epochs_done": result.epochs_done, "config_json": config_to_json(cfg)}


def evaluate_step(cfg: Config, model: str, model_uri: str = "") -> dict[str, Any]:
    """Evaluate `model` on the test split of `cfg.data_dir` into `cfg.eval_dir`."""
    from srcore.evaluate import evaluate

    metrics = evaluate(cfg, model, logged_model=model_uri or None)
    return {"eval_dir": str(Path(cfg.eval_dir).expanduser()), "metrics": metrics}


def register_step(cfg: Config, model_uri: str, metrics: Any = "", manifest_hash: str = "") -> dict[str, Any]:
    """Register `model_uri` with its evaluation metrics (a dict or a metrics.json path)."""
    from srcore import tracking
    from srcore.registry import register

    metrics = metrics or str(Path(cfg.eval_dir).expanduser() / "metrics.json")
    with tracking.step_run(cfg, "register"):
        result = register(cfg, model_uri, metrics, manifest_hash or None)
        if isinstance(metrics, dict):
            tracking.report_to_parent(metrics, result)
        else:
            tracking.report_to_parent(json.loads(Path(metrics).read_text()), result)
    return {"version": str(result.version), "champion": bool(result.champion), "reason": str(result.reason),
            "name": result.name}


def upscale_step(cfg: Config, model: str, images: list[str] | str, out: str, tile: str = "") -> dict[str, Any]:
    """Upscale image files x4 (untracked: no MLflow run)."""
    from srcore.upscale import upscale_files

    images = [images] if isinstance(images, str) else list(images)
    kwargs: dict[str, Any] = {"max_pixels": cfg.max_pixels, "max_file_bytes": cfg.max_file_bytes}
    if tile:
        kwargs["tile"] = int(tile)
    else:
        kwargs["tile"] = None  # bounded memory: the upscaler's default tile
    result = upscale_files(model, images, out, **kwargs)
    return {"outputs": [str(p) for p in result], "skipped": len(getattr(result, "skipped", []))}


def main_step(cfg: Config) -> dict[str, Any]:
    """The whole job as one MLflow parent run with a child run per step."""
    import mlflow

    from srcore import tracking

    from srcore.train import check_architecture

    require_source(cfg)
    # checked before the parent run opens: a bad manifest fails in one line, not as a failed run
    given_hash = ingest_output_hash(cfg.source) if is_ingest_output(cfg.source) else ""
    check_architecture(cfg)  # a --model-dir of another architecture, likewise
    with tracking.main_run(cfg) as parent:
        if given_hash:
            log.info("source %s is already an ingest output; skipping ingest", cfg.source)
            cfg = apply_overrides(cfg, {"data_dir": str(Path(cfg.source).expanduser())})
            content_hash = given_hash
        else:
            content_hash = ingest_step(cfg)["content_hash"]
        trained = train_step(cfg)
        evaluated = evaluate_step(cfg, trained["model_uri"])
        registered = register_step(cfg, trained["model_uri"], evaluated["metrics"], content_hash)
        summary = {
            "parent_run_id": parent.info.run_id,
            "model_uri": trained["model_uri"],
            "registered_version": registered["version"],
            "champion": registered["champion"],
            **{k: v for k, v in evaluated["metrics"].items() if isinstance(v, (int, float))},
        }
        mlflow.log_dict(summary, "summary.json")
    _closing_lines(cfg, parent.info.experiment_id, registered, tracking.headline_metrics(evaluated["metrics"]))
    return summary  # the CLI prints it once, as JSON


def _closing_lines(cfg: Config, experiment_id: str, registered: dict[str, Any], headline: dict[str, float]) -> None:
    """Where to look, in a few lines at the end of the job."""
    from srcore import tracking

    alias = "champion" if registered["champion"] else "candidate"
    log.info("done: %s", ", ".join(f"{k} {v:.4g}" for k, v in headline.items()))
    log.info("runs: %s (experiment %s)", tracking.where_to_look(experiment_id), cfg.experiment_name)
    log.info("model: %s version %s, alias %s -> models:/%s@%s (%s)", registered["name"], registered["version"],
             alias, registered["name"], alias, registered["reason"])


# ---- files generated from the table ------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
DOCS_BEGIN = "<!-- steps table: generated by `python -m srcore.steps`, do not edit -->"
DOCS_END = "<!-- end of steps table -->"


def mlproject_text() -> str:
    """MLproject, one entry point per step with `mlproject` fields."""
    lines = [
        "# Generated from srcore/steps.py by `python -m srcore.steps`; edit the table, not this file.",
        "# Local runs of the same srcore steps the Kubeflow components call:",
        "#   mlflow run . --env-manager local -P source=/path/to/img_align_celeba.zip -P epochs=60",
        "#   mlflow run . --env-manager local -P preset=smoke -P source=demo",
        "# Parameters left empty (\"\") keep the value of the preset / config file (folders included).",
        "# Runs land in experiment `experiment_name` (srgan-celeba); the run `mlflow run` itself",
        "# creates stays a launcher linking to them (see srcore/tracking.py).",
        "name: srgan-celeba",
        "",
        "conda_env: conda.yaml",
        "",
        "entry_points:",
    ]
    for name, step in STEPS.items():
        if step.mlproject is None:
            continue
        params = ["preset", "config", *step.mlproject, *(i.name for i in step.inputs)]
        required = {i.name for i in step.inputs if i.required}
        lines += [f"  {name}:", "    parameters:"]
        for p in params:
            lines.append(f"      {p}: {{type: string}}" if p in required else f"      {p}: {{type: string, default: \"\"}}")
        flags = " ".join(f"--{p.replace('_', '-')} {{{p}}}" for p in params)
        lines += ["    command: >-", f"      python -m srcore {name} {flags}", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def docs_table() -> str:
    rows = ["| step | function | inputs (besides cfg) | outputs | Config sections |", "| --- | --- | --- | --- | --- |"]
    for name, step in STEPS.items():
        module, func = step.function.split(":")
        inputs = ", ".join(f"`{i.name}`" for i in step.inputs) or "-"
        outputs = ", ".join(f"`{o}`" for o in step.outputs)
        rows.append(f"| {name} | `{module}.{func}` | {inputs} | {outputs} | {', '.join(step.sections)} |")
    return "\n".join([DOCS_BEGIN, *rows, DOCS_END])


def write_generated(repo: Path = REPO) -> list[Path]:
    """Rewrite MLproject and the steps table in docs/ARCHITECTURE.md from STEPS."""
    from srcore.atomic import write_text_atomic

    mlproject = repo / "MLproject"
    write_text_atomic(mlproject, mlproject_text())
    docs = repo / "docs" / "ARCHITECTURE.md"
    text = docs.read_text()
    start, end = text.index(DOCS_BEGIN), text.index(DOCS_END) + len(DOCS_END)
    write_text_atomic(docs, text[:start] + docs_table() + text[end:])
    return [mlproject, docs]


if __name__ == "__main__":
    for path in write_generated():
        print(path)
