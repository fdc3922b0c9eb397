"""Register an evaluated model and decide whether it becomes the champion.

Every registered version gets alias `candidate` (the latest registered, whatever its
quality), its evaluation metrics as version tags `metric.<name>` (so the gate can
compare versions without reaching back into runs), the data manifest hash as tag
`data.manifest_hash`, and a description of how the metrics were computed.

The gate: alias `champion` moves to the new version only if its `cfg.gate_metric` is
strictly better than the current champion's tag (higher for gate_mode 'max', lower for
'min'), or if there is no champion yet, or the champion has no usable value for the
metric (it was registered before the metric existed). A tie keeps the current champion.
The read-compare-set is not atomic: two registrations racing on the same model name can
both win; the pipeline registers one model at a time.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from srcore.config import Config

log = logging.getLogger(__name__)

CANDIDATE_ALIAS = "candidate"
CHAMPION_ALIAS = "champion"
METRIC_TAG_PREFIX = "metric."
MANIFEST_HASH_TAG = "data.manifest_hash"
GATE_REASON_TAG = "gate.reason"
REGISTRATION_TIMEOUT_S = 300  # a remote registry may copy artifacts before READY


@dataclass(frozen=True)
class RegisterResult:
    name: str
    version: str
    champion: bool
    reason: str


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    how: Mapping[str, Any] | None
    manifest_hash: str | None  # evaluate records the hash of the data it scored


def register(
    cfg: Config,
    model_uri: str,
    metrics: Mapping[str, Any] | str | os.PathLike,
    manifest_hash: str | None = None,
) -> RegisterResult:
    """Register `model_uri` under cfg.registered_model_name, tag it, move `candidate`
    to it and `champion` if it passes the gate (see module doc). `manifest_hash`
    defaults to the metrics' `data_manifest_hash`."""
    evaluation = read_evaluation(metrics)
    manifest_hash = manifest_hash or evaluation.manifest_hash
    new_value = _gate_value(evaluation, cfg)  # fails before anything is registered
    client = MlflowClient()
    name = cfg.registered_model_name

    version = mlflow.register_model(
        model_uri, name, await_registration_for=REGISTRATION_TIMEOUT_S, tags=_version_tags(evaluation, manifest_hash)
    ).version
    client.update_model_version(name, version, description=_description(model_uri, evaluation, manifest_hash))
    client.set_registered_model_alias(name, CANDIDATE_ALIAS, version)

    promote, reason = _gate(cfg, new_value, _current_champion(client, name))
    if promote:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    client.set_model_version_tag(name, version, GATE_REASON_TAG, reason)
    result = RegisterResult(name=name, version=str(version), champion=promote, reason=reason)
    log.info("registered %s version %s (%s): %s", name, version, "champion" if promote else "candidate", reason)
    _log_to_active_run(result)
    return result


# ---- metrics -----------------------------------------------------------------------


def read_evaluation(metrics: Mapping[str, Any] | str | os.PathLike) -> Evaluation:
    """Numeric metrics from evaluate's output: a path to metrics.json, a flat mapping
    {name: value}, or {"metrics": {...}, "how": {...}}. A value may be a number or a
    summary {"mean": number, ...}; other entries (strings such as the model label or
    the manifest hash, None, nested blocks) are not metrics."""
    if isinstance(metrics, (str, os.PathLike)):
        metrics = _load_json(Path(metrics))
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping or a path to metrics.json, got {type(metrics).__name__}")
    values = metrics["metrics"] if isinstance(metrics.get("metrics"), Mapping) else metrics
    numeric = {name: v for name, raw in values.items() if (v := _as_number(raw)) is not None}
    how = metrics.get("how") if isinstance(metrics.get("how"), Mapping) else None
    manifest_hash = metrics.get("data_manifest_hash")
    return Evaluation(metrics=numeric, how=how, manifest_hash=manifest_hash if isinstance(manifest_hash, str) else None)


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {path} does not exist (expected evaluate's metrics.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"metrics file {path} is not valid JSON: {e}") from e


def _as_number(raw: Any) -> float | None:
    if isinstance(raw, Mapping):
        raw = raw.get("mean")
    # numbers only: float() would also accept strings such as a hash "12e45..." or "nan"
    if isinstance(raw, bool) or not isinstance(raw, numbers.Real):
        return None
    return float(raw)


def _gate_value(evaluation: Evaluation, cfg: Config) -> float:
    value = evaluation.metrics.get(cfg.gate_metric)
    if value is None or math.isnan(value):
        raise ValueError(
            f"gate_metric={cfg.gate_metric!r} has no numeric value in the evaluation metrics "
            f"(available: {', '.join(sorted(evaluation.metrics)) or 'none'}); set gate_metric to one of them"
        )
    return value


# ---- version tags and description ---------------------------------------------------


def _version_tags(evaluation: Evaluation, manifest_hash: str | None) -> dict[str, str]:
    # repr() of a float round-trips exactly, so the gate later compares the same numbers
    tags = {f"{METRIC_TAG_PREFIX}{name}": repr(value) for name, value in evaluation.metrics.items()}
    if manifest_hash:
        tags[MANIFEST_HASH_TAG] = manifest_hash
    return tags


def _description(model_uri: str, evaluation: Evaluation, manifest_hash: str | None) -> str:
    lines = [f"Source: {model_uri}"]
    if manifest_hash:
        lines.append(f"Data manifest hash: {manifest_hash}")
    lines.append("Evaluation metrics:")
    lines += [f"- {name}: {value:.6g}" for name, value in sorted(evaluation.metrics.items())]
    if evaluation.how:
        lines.append("How the metrics were computed:")
        lines += [f"- {key}: {value}" for key, value in evaluation.how.items()]
    return "\n".join(lines)


# ---- the gate ------------------------------------------------------------------------


def _current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _gate(cfg: Config, new_value: float, champion: ModelVersion | None) -> tuple[bool, str]:
    metric, mode = cfg.gate_metric, cfg.gate_mode
    if champion is None:
        return True, f"first champion: no version had alias '{CHAMPION_ALIAS}' ({metric}={new_value:.6g})"
    old_value = _tag_number(champion.tags.get(f"{METRIC_TAG_PREFIX}{metric}"))
    if old_value is None:
        return True, (
            f"champion version {champion.version} has no {metric} tag; "
            f"promoted with {metric}={new_value:.6g}"
        )
    better = new_value > old_value if mode == "max" else new_value < old_value
    relation = "better than" if better else "not better than"
    verdict = "promoted" if better else f"champion stays version {champion.version}"
    return better, (
        f"{metric}={new_value:.6g} is {relation} champion version {champion.version}'s "
        f"{old_value:.6g} (gate_mode {mode}): {verdict}"
    )


def _tag_number(tag: str | None) -> float | None:
    try:
        value = float(tag)  # tags are strings written by _version_tags
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _log_to_active_run(result: RegisterResult) -> None:
    if mlflow.active_run() is None:
        return
    mlflow.set_tags(
        {
            "registered_model_name": result.name,
            "registered_model_version": result.version,
            "champion": str(result.champion).lower(),
            "registry_reason": result.reason[:5000],
        }
    )
