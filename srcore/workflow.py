"""Tracked steps and the `main` chain: ingest -> train -> evaluate -> register.

`srgan main`, `mlflow run .` and the Kubeflow components call these same functions;
each step logs into its own MLflow run (a child of the pipeline's parent run).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import mlflow

from srcore import tracking
from srcore.config import Config

log = logging.getLogger(__name__)


def is_ingest_output(path: str | os.PathLike) -> bool:
    return (Path(path).expanduser() / "manifest.json").is_file()


def ingest_step(cfg: Config, out_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Ingest `cfg.source` into `out_dir` (default cfg.data_dir), tracked in MLflow."""
    from srcore.data.ingest import ingest

    out = Path(out_dir or cfg.data_dir)
    with tracking.step_run(cfg, "ingest"):
        manifest = ingest(cfg, out_dir=out)
        mlflow.log_metrics({f"{k}_images": float(v) for k, v in manifest["counts"].items()})
        mlflow.set_tag("data_manifest_hash", manifest["content_hash"])
        mlflow.log_artifact(str(out / "manifest.json"), artifact_path="data")
    return manifest


def register_step(cfg: Config, model_uri: str, metrics: dict | str | os.PathLike, manifest_hash: str | None = None):
    """Register `model_uri` with its evaluation metrics (a dict or metrics.json), tracked in MLflow."""
    from srcore.registry import register

    with tracking.step_run(cfg, "register"):
        return register(cfg, model_uri, metrics, manifest_hash)


def run_main(cfg: Config) -> dict[str, Any]:
    """The whole job as one MLflow parent run with a child run per step."""
    from srcore.evaluate import evaluate
    from srcore.train import train

    exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or mlflow.set_experiment(cfg.experiment_name).experiment_id
    # Under `mlflow run`, MLFLOW_RUN_ID names the run created for us: it becomes the parent.
    with mlflow.start_run(experiment_id=exp_id, run_name=cfg.run_name or "main") as parent:
        tracking.log_params(cfg.to_dict())
        mlflow.set_tag("srgan.step", "main")
        if is_ingest_output(cfg.source):
            data_dir = Path(cfg.source).expanduser()
            log.info("source %s is already an ingest output; skipping ingest", data_dir)
            manifest = json.loads((data_dir / "manifest.json").read_text())
        else:
            data_dir = Path(cfg.data_dir)
            manifest = ingest_step(cfg, data_dir)
        result = train(cfg, data_dir=data_dir)
        metrics = evaluate(cfg, result.model_uri, data_dir=data_dir)
        registered = register_step(cfg, result.model_uri, metrics, manifest["content_hash"])
        summary = {
            "parent_run_id": parent.info.run_id,
            "model_uri": result.model_uri,
            "registered_version": registered.version,
            "champion": registered.champion,
            **{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        }
        mlflow.log_dict(summary, "summary.json")
        log.info("main finished: %s", json.dumps(summary))
    return summary
