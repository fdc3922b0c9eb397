"""Resolve a generator from wherever it lives: a `.keras` file, a folder holding one,
or any MLflow model URI (`runs:/...`, `models:/name@alias`, `models:/m-...`).

`check_registered(uri)` is the one place a `models:/name@alias` or `models:/name/version`
is looked up first: a missing alias, version or name is one line (ModelNotFoundError)
that lists what does exist, never an MLflow traceback. upscale, evaluate and export
resolve through `local_generator_path`; deploy through `version_by_alias`."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


class ModelNotFoundError(LookupError, ValueError):
    """A registered model, alias or version does not exist (one line listing what does)."""


_REGISTERED = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


def _missing(name: str, what: str) -> ModelNotFoundError:
    """ModelNotFoundError for `what` of registered model `name`, listing its aliases and versions
    (or the registered model names, when `name` itself does not exist)."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        model = client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        try:
            names = sorted(m.name for m in client.search_registered_models(max_results=50))
        except mlflow.exceptions.MlflowException:
            names = []
        known = f"registered models: {', '.join(names)}" if names else "no model is registered there yet"
        return ModelNotFoundError(f"no registered model {name!r} at {mlflow.get_tracking_uri()} ({known})")
    aliases = dict(getattr(model, "aliases", {}) or {})
    literal = filter_literal(name)
    versions = sorted((int(v.version) for v in client.search_model_versions(f"name = {literal}")
                       if v.name == name), reverse=True) if literal else []
    alias_text = (", ".join(f"{a} (version {v})" for a, v in sorted(aliases.items())) or "none")
    version_text = ", ".join(map(str, versions[:10])) + (" ..." if len(versions) > 10 else "") or "none"
    return ModelNotFoundError(f"registered model {name!r} has no {what}; its aliases: {alias_text}; "
                              f"its versions: {version_text} (use models:/{name}@<alias> or models:/{name}/<version>)")


def filter_literal(name: str) -> str | None:
    """`name` as an MLflow search-filter string literal, or None when no literal can hold it.
    MLflow strips the quotes and unescapes nothing (`''` is not a quote), so the only safe
    quote is one the name does not contain."""
    for quote in ("'", '"'):
        if quote not in name:
            return f"{quote}{name}{quote}"
    return None


def version_by_alias(name: str, alias: str):
    """The ModelVersion `name@alias`; ModelNotFoundError (one line, aliases listed) if missing."""
    import mlflow

    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        raise _missing(name, f"alias {alias!r}") from None


def check_registered(uri: str) -> None:
    """For `models:/name@alias` and `models:/name/version`: raise ModelNotFoundError (listing
    what exists) when it does not resolve. Other URIs pass through unchanged."""
    import mlflow

    m = _REGISTERED.match(uri)
    if not m or m["name"].startswith("m-") and not (m["alias"] or m["version"]):
        return
    if m["alias"]:
        version_by_alias(m["name"], m["alias"])
        return
    try:
        mlflow.MlflowClient().get_model_version(m["name"], m["version"])
    except mlflow.exceptions.MlflowException:
        raise _missing(m["name"], f"version {m['version']}") from None


def check_model_source(uri_or_path: str) -> None:
    """Cheap look-up before a step claims its output folder: a missing file, registered
    alias/version or run is one line, and leaves no folder behind."""
    if Path(uri_or_path).expanduser().exists():
        return
    if uri_or_path.startswith("models:"):
        check_registered(uri_or_path)
    elif uri_or_path.startswith("runs:/"):
        import mlflow

        run_id = uri_or_path[len("runs:/"):].split("/", 1)[0]
        try:
            mlflow.MlflowClient().get_run(run_id)
        except mlflow.exceptions.MlflowException:
            raise ModelNotFoundError(f"model {uri_or_path}: no run {run_id!r} at {mlflow.get_tracking_uri()}") from None
    elif "://" not in uri_or_path:
        raise FileNotFoundError(
            f"model {uri_or_path!r} is neither a .keras file, a folder with one, nor an MLflow URI "
            "(runs:/<run>/<path>, models:/<name>@<alias>)")


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

        check_registered(uri_or_path)  # a missing alias/version: one line listing what exists
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri_or_path))
        except mlflow.exceptions.MlflowException as e:
            raise ModelNotFoundError(f"model {uri_or_path}: {str(e).splitlines()[0][:300]}") from None
        return local if local.is_file() else _find_keras_file(local)
    raise FileNotFoundError(
        f"model {uri_or_path!r} is neither a .keras file, a folder with one, nor an MLflow URI "
        "(runs:/<run>/<path>, models:/<name>@<alias>)"
    )


def resolve_generator(uri_or_path: str) -> "keras.Model":
    from srcore.models import load_generator  # TensorFlow only when a model is loaded

    path = local_generator_path(uri_or_path)
    log.info("loading generator from %s", path)
    return load_generator(str(path))
