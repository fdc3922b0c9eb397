"""MLflow run resolution and logging helpers shared by every step.

Which run a step logs into, in order:
1. `resume_run_id` (training resume: the run stored beside the checkpoints);
2. a run already active in this process (`srgan main` started the parent): a nested
   child run named after the step;
3. `MLFLOW_RUN_ID` in the environment (set by `mlflow run` and by KFP's MLflow plugin,
   which also creates the parent/child structure itself): log into exactly that run
   and create none;
4. `SRGAN_PARENT_RUN_ID` (KFP without the plugin: the pipeline's first step created
   the parent run and handed its id down): a child run of it;
5. otherwise a new run in `cfg.experiment_name`.

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

log = logging.getLogger(__name__)

PARENT_ENV = "SRGAN_PARENT_RUN_ID"
PARENT_TAG = "mlflow.parentRunId"


def _ensure_experiment(cfg: Config) -> str:
    env_exp = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if env_exp:
        return env_exp
    exp = mlflow.set_experiment(cfg.experiment_name)
    return exp.experiment_id


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
        ctx = mlflow.start_run(run_name=step, nested=True, tags=_step_tags(step))
    elif os.environ.get("MLFLOW_RUN_ID"):
        ctx = mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"])
    elif os.environ.get(PARENT_ENV):
        exp = _ensure_experiment(cfg)
        tags = {**_step_tags(step), PARENT_TAG: os.environ[PARENT_ENV]}
        ctx = mlflow.start_run(experiment_id=exp, run_name=step, tags=tags)
    else:
        exp = _ensure_experiment(cfg)
        ctx = mlflow.start_run(experiment_id=exp, run_name=cfg.run_name or step, tags=_step_tags(step))
    with ctx as run:
        if log_config and not resume_run_id:
            log_params(cfg.to_dict())
        yield run


def _step_tags(step: str) -> dict[str, str]:
    tags = {"srgan.step": step}
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    return tags


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


def log_params(params: Mapping[str, Any]) -> None:
    """Log params, skipping keys that already hold the same value (resume, reruns)."""
    run = mlflow.active_run()
    if run is None:
        return
    existing = mlflow.get_run(run.info.run_id).data.params
    fresh = {k: _param(v) for k, v in params.items() if k not in existing}
    changed = {k: (existing[k], _param(v)) for k, v in params.items() if k in existing and existing[k] != _param(v)}
    if changed:
        # MLflow params are immutable; record the difference instead of failing
        log.warning("run %s already has different params %s; keeping the originals", run.info.run_id, changed)
    if fresh:
        mlflow.log_params(fresh)


def _param(v: Any) -> str:
    return str(v)[:6000]
