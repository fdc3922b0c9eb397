"""Register an evaluated model and decide whether it becomes the champion.

Every registered version gets alias `candidate` (the latest registered, whatever its
quality), its evaluation metrics as version tags `metric.<name>` (so the gate can
compare versions without reaching back into runs), the hash of the test split it was
scored on (`eval.test_split_hash`: evaluate's `test_split_hash` when it writes one, else
the data manifest hash, which covers the test split), the data manifest hash
(`data.manifest_hash`), the model URI it came from (`srgan.model_uri`), a description of
how the metrics were computed, and the gate's decision (`gate.decision`, `gate.reason`).

The gate: alias `champion` moves to the new version only if all of these hold:
1. Its `cfg.gate_metric` (a `test/<x>` metric) is a number: a missing or NaN value
   fails before anything is registered, so it can never become champion, not even
   the first version.
2. It beats bicubic on the same test split: `test/<x>` is better than `test/bicubic_<x>`
   from the same evaluation by strictly more than `cfg.gate_min_gain` (higher for
   gate_mode 'max', lower for 'min'). A missing bicubic value fails the floor.
3. If there is a champion: it was scored on the same test split (equal
   `eval.test_split_hash`) and the new value is strictly better than its tag. A
   champion scored on another (or an unknown) test split is never compared against:
   the new version stays candidate and the reason says so. To move to a new test
   split, promote by hand after checking (`MlflowClient().set_registered_model_alias(
   name, "champion", version)`) or register under a new model name.
Otherwise the version stays `candidate` with the reason in `gate.reason`.

Metric names are read through srcore.metric_names: metrics.json files and champion tags
written with the old underscore names (`test_psnr_y`, `metric.test_psnr_y`) still count.
The version's description is its model card (srcore.model_card), written after the gate.

Idempotent: registering a model URI that already has a version of this model (tag
`srgan.model_uri` or the version's source) reuses that version instead of creating a
duplicate, so a retried register task does not add versions.

Concurrency: the gate reads the champion, compares, sets the alias, then reads the
alias back and reports `champion=False` when another registration moved it meanwhile.
Two registrations racing on one model name can still leave the later writer as
champion without it having been compared against the other; the pipeline registers
one model per run, so run concurrent pipelines under different model names.
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

from srcore import metric_names
from srcore.config import Config

log = logging.getLogger(__name__)

CANDIDATE_ALIAS = "candidate"
CHAMPION_ALIAS = "champion"
METRIC_TAG_PREFIX = "metric."
MANIFEST_HASH_TAG = "data.manifest_hash"
TEST_SPLIT_TAG = "eval.test_split_hash"
MODEL_URI_TAG = "srgan.model_uri"
GATE_REASON_TAG = "gate.reason"
GATE_DECISION_TAG = "gate.decision"
REGISTRATION_TIMEOUT_S = 300  # a remote registry may copy artifacts before READY
SEARCH_PAGE = 200


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
    test_split_hash: str | None = None  # hash of the test split alone, when evaluate writes one
    eval_run_id: str | None = None  # the evaluate run (the model card links to it)
    counts: Mapping[str, Any] | None = None


def register(
    cfg: Config,
    model_uri: str,
    metrics: Mapping[str, Any] | str | os.PathLike,
    manifest_hash: str | None = None,
) -> RegisterResult:
    """Register `model_uri` under cfg.registered_model_name (or reuse its existing
    version), tag it, move `candidate` to it and `champion` if it passes the gate (see
    module doc). `manifest_hash` defaults to the metrics' `data_manifest_hash`."""
    evaluation = read_evaluation(metrics)
    manifest_hash = manifest_hash or evaluation.manifest_hash
    split_hash = evaluation.test_split_hash or manifest_hash
    new_value = _gate_value(evaluation, cfg)  # fails before anything is registered
    client = MlflowClient()
    name = cfg.registered_model_name

    existing = find_version(client, name, model_uri)
    if existing is not None:
        version = existing.version
        log.info("%s is already version %s of %s: reusing it (no duplicate)", model_uri, version, name)
    else:
        version = mlflow.register_model(
            model_uri, name, await_registration_for=REGISTRATION_TIMEOUT_S,
            tags=_version_tags(evaluation, manifest_hash, split_hash, model_uri),
        ).version
    client.set_registered_model_alias(name, CANDIDATE_ALIAS, version)

    promote, reason = _gate(cfg, evaluation, new_value, split_hash, str(version), _current_champion(client, name))
    if promote:
        client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
        holder = _current_champion(client, name)  # read back: another registration may have raced us
        if holder is None or str(holder.version) != str(version):
            promote = False
            reason += (f"; but alias '{CHAMPION_ALIAS}' now points to version "
                       f"{holder.version if holder else 'none'} (a concurrent registration): left as is")
    client.set_model_version_tag(name, version, GATE_DECISION_TAG, CHAMPION_ALIAS if promote else CANDIDATE_ALIAS)
    client.set_model_version_tag(name, version, GATE_REASON_TAG, reason[:5000])
    _write_model_card(client, name, str(version), model_uri, evaluation, manifest_hash, split_hash, promote, reason)
    result = RegisterResult(name=name, version=str(version), champion=promote, reason=reason)
    log.info("registered %s version %s (%s): %s", name, version, "champion" if promote else "candidate", reason)
    _log_to_active_run(result)
    return result


def find_version(client: MlflowClient, name: str, model_uri: str) -> ModelVersion | None:
    """The existing version of `name` registered from `model_uri`, if any."""
    try:
        token = None
        while True:
            page = client.search_model_versions(f"name = '{_quote(name)}'", max_results=SEARCH_PAGE, page_token=token)
            for v in page:
                if (v.tags or {}).get(MODEL_URI_TAG) == model_uri or v.source == model_uri:
                    return v
            token = page.token
            if not token:
                return None
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _quote(name: str) -> str:
    return name.replace("'", "\\'")


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
    numeric = metric_names.migrate({name: v for name, raw in values.items() if (v := _as_number(raw)) is not None})
    how = metrics.get("how") if isinstance(metrics.get("how"), Mapping) else None
    manifest_hash = metrics.get("data_manifest_hash")
    split_hash = metrics.get("test_split_hash")
    eval_run_id = metrics.get("mlflow_run_id")
    counts = metrics.get("counts") if isinstance(metrics.get("counts"), Mapping) else None
    return Evaluation(metrics=numeric, how=how, manifest_hash=manifest_hash if isinstance(manifest_hash, str) else None,
                      test_split_hash=split_hash if isinstance(split_hash, str) and split_hash else None,
                      eval_run_id=eval_run_id if isinstance(eval_run_id, str) else None, counts=counts)


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
            f"gate_metric={cfg.gate_metric!r} has no numeric value (missing or NaN) in the evaluation metrics "
            f"(available: {', '.join(sorted(evaluation.metrics)) or 'none'}); set gate_metric to one of them"
        )
    return value


# ---- version tags and description ---------------------------------------------------


def _version_tags(evaluation: Evaluation, manifest_hash: str | None, split_hash: str | None,
                  model_uri: str) -> dict[str, str]:
    # repr() of a float round-trips exactly, so the gate later compares the same numbers
    tags = {f"{METRIC_TAG_PREFIX}{name}": repr(value) for name, value in evaluation.metrics.items()}
    tags[MODEL_URI_TAG] = model_uri
    if manifest_hash:
        tags[MANIFEST_HASH_TAG] = manifest_hash
    if split_hash:
        tags[TEST_SPLIT_TAG] = split_hash
    return tags


def _write_model_card(client: MlflowClient, name: str, version: str, model_uri: str, evaluation: Evaluation,
                      manifest_hash: str | None, split_hash: str | None, champion: bool, reason: str) -> None:
    """The version's description: its model card (srcore.model_card), with the gate's decision."""
    from srcore import model_card

    try:
        train_run_id = client.get_model_version(name, version).run_id
    except MlflowException:
        train_run_id = None
    card = model_card.render(name, version, model_uri, evaluation.metrics,
                             CHAMPION_ALIAS if champion else CANDIDATE_ALIAS, reason, train_run_id,
                             evaluation.eval_run_id, split_hash, manifest_hash, evaluation.counts)
    if evaluation.how:
        card += "\n<details><summary>How the metrics were computed</summary>\n\n" + "\n".join(
            f"- {key}: {value}" for key, value in evaluation.how.items() if key != "metric_names") + "\n</details>\n"
    client.update_model_version(name, version, description=card)


# ---- the gate ------------------------------------------------------------------------


def _current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _gate(cfg: Config, evaluation: Evaluation, new_value: float, split_hash: str | None, version: str,
          champion: ModelVersion | None) -> tuple[bool, str]:
    """(promote?, why): the floor against bicubic, then the current champion on the same split."""
    metric, mode = cfg.gate_metric, cfg.gate_mode
    passed, reason = _beats_bicubic(cfg, evaluation, new_value)
    if not passed:
        return False, reason
    if champion is None:
        return True, f"{reason}; first champion: no version had alias '{CHAMPION_ALIAS}'"
    if str(champion.version) == version:
        return True, f"{reason}; already the champion (registered again)"
    champion_split = champion.tags.get(TEST_SPLIT_TAG)
    if not split_hash or champion_split != split_hash:
        return False, (
            f"{reason}; but champion version {champion.version} was scored on another test split "
            f"({_short(champion_split)} vs {_short(split_hash)}): not compared, stays candidate "
            "(promote by hand after checking both on one split)"
        )
    old_value = _tag_number(champion.tags.get(f"{METRIC_TAG_PREFIX}{metric}")
                            or champion.tags.get(f"{METRIC_TAG_PREFIX}{metric_names.legacy(metric)}"))
    if old_value is None:
        return False, (f"{reason}; but champion version {champion.version} has no usable {metric} tag: "
                       "not compared, stays candidate")
    better = new_value > old_value if mode == "max" else new_value < old_value
    relation = "better than" if better else "not better than"
    verdict = "promoted" if better else f"champion stays version {champion.version}"
    return better, (
        f"{metric}={new_value:.6g} is {relation} champion version {champion.version}'s "
        f"{old_value:.6g} on the same test split (gate_mode {mode}): {verdict}"
    )


def _beats_bicubic(cfg: Config, evaluation: Evaluation, new_value: float) -> tuple[bool, str]:
    """The floor: the gate metric beats bicubic upscaling of the same evaluation by more
    than cfg.gate_min_gain (strictly)."""
    metric, mode, margin = cfg.gate_metric, cfg.gate_mode, cfg.gate_min_gain
    baseline_name = metric_names.baseline(metric)
    baseline = evaluation.metrics.get(baseline_name)
    if baseline is None or math.isnan(baseline):
        return False, (f"{metric}={new_value:.6g} but the evaluation has no {baseline_name} to check the "
                       "floor against bicubic: stays candidate")
    gain = new_value - baseline if mode == "max" else baseline - new_value
    if not gain > margin:
        return False, (f"{metric}={new_value:.6g} does not beat bicubic ({baseline_name}={baseline:.6g}) by more "
                       f"than gate_min_gain={margin:g} (gain {gain:.4g}): stays candidate")
    return True, f"{metric}={new_value:.6g} beats bicubic {baseline:.6g} by {gain:.4g} > {margin:g}"


def _short(value: str | None) -> str:
    return value[:12] if value else "unknown"


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
