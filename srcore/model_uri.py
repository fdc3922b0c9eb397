"""Resolve a generator from wherever it lives: a `.keras` file, a folder holding one,
or any MLflow model URI (`runs:/...`, `models:/name@alias`, `models:/m-...`)."""

from __future__ import annotations

import logging
from pathlib import Path

import keras

from srcore.models import load_generator

log = logging.getLogger(__name__)


def _find_keras_file(root: Path) -> Path:
    found = sorted(root.rglob("*.keras"))
    if not found:
        raise FileNotFoundError(f"no .keras generator file under {root}")
    # prefer the generator the pyfunc model carries, then the Keras flavour's file
    found.sort(key=lambda p: (p.name != "generator.keras", len(p.parts)))
    return found[0]


def local_generator_path(uri_or_path: str) -> Path:
    """Local path of the `.keras` file behind `uri_or_path` (downloads MLflow artifacts)."""
    p = Path(uri_or_path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        return _find_keras_file(p)
    if "://" in uri_or_path or uri_or_path.startswith(("models:", "runs:")):
        import mlflow

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri_or_path))
        return local if local.is_file() else _find_keras_file(local)
    raise FileNotFoundError(
        f"model {uri_or_path!r} is neither a .keras file, a folder with one, nor an MLflow URI "
        "(runs:/<run>/<path>, models:/<name>@<alias>)"
    )


def resolve_generator(uri_or_path: str) -> keras.Model:
    path = local_generator_path(uri_or_path)
    log.info("loading generator from %s", path)
    return load_generator(str(path))
