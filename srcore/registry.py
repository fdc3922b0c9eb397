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
2. It beats bicubic on the same test split: `test/<x>` is better than `test/bicubic/<x>`
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

Valid input only: the metrics must be a JSON object, and every metric the registry reads
(each one it tags, the gate metric and its bicubic baseline) must be finite and in its
range (PSNR in (0, 100) dB, SSIM in [-1, 1], LPIPS >= 0, a gain any finite number), with
a name that fits a version tag key: anything else is refused, naming the file and key,
before anything is registered. The model URI must point at an MLflow model (its MLmodel
is read) and the model name must not be blank. A champion whose own tag is not a valid
value is never compared against (the reason says so).

Idempotent, also under concurrency and for any model name: each version carries
`srgan.registration_key`, a sha256 of (model name, model URI), so the lookup is a tag
search whose value never needs quoting. Registering creates the version with that tag
in one call (the registry's own atomic step), then searches the key: of the versions
carrying it the lowest version number wins and every other one is deleted, so racing
registrations of one URI end with one version, the same for all of them. A URI
registered before the key existed is found by `srgan.model_uri` (or the version's
source) and gets the key. Registering again re-tags the version with the new
evaluation's metrics (no stale values stay). Alias and tag writes are retried when a
concurrent write of the same key fails them (MLflow's SQL store upserts by
select-then-insert: on PostgreSQL one of two racing inserts is a unique violation).

Concurrency of the gate: it reads the champion, compares, sets the alias, then reads the
alias back and reports `champion=False` when another registration moved it meanwhile.
Two registrations of different models racing on one model name can still leave the later
writer as champion without it having been compared against the other; the pipeline
registers one model per run, so run concurrent pipelines under different model names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from srcore import metric_names
from srcore.config import Config, ConfigError
from srcore.model_uri import filter_literal

log = logging.getLogger(__name__)

CANDIDATE_ALIAS = "candidate"
CHAMPION_ALIAS = "champion"
METRIC_TAG_PREFIX = "metric."
MANIFEST_HASH_TAG = "data.manifest_hash"
TEST_SPLIT_TAG = "eval.test_split_hash"
MODEL_URI_TAG = "srgan.model_uri"
GATE_REASON_TAG = "gate.reason"
GATE_DECISION_TAG = "gate.decision"
REGISTRATION_KEY_TAG = "srgan.registration_key"
MAX_TAG_KEY = 250  # MLflow's limit on a model version tag key
MAX_PSNR_DB = 100.0  # 8-bit images: 100 dB is an MSE of 6.5e-6, i.e. identical pixels
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
    source: str = "metrics"  # where the metrics came from, for error messages


class RegistryError(RuntimeError):
    """The registry refused or failed a request; the message is one line."""


def register(
    cfg: Config,
    model_uri: str,
    metrics: Mapping[str, Any] | str | os.PathLike,
    manifest_hash: str | None = None,
) -> RegisterResult:
    """Register `model_uri` under cfg.registered_model_name (or reuse its existing
    version), tag it, move `candidate` to it and `champion` if it passes the gate (see
    module doc). `manifest_hash` defaults to the metrics' `data_manifest_hash`."""
    name = _check_model_name(cfg.registered_model_name)
    evaluation = read_evaluation(metrics)  # every value checked: refused before anything is registered
    manifest_hash = manifest_hash or evaluation.manifest_hash
    split_hash = evaluation.test_split_hash or manifest_hash
    new_value = _gate_value(evaluation, cfg)
    try:
        return _register(cfg, name, model_uri, evaluation, manifest_hash, split_hash, new_value)
    except MlflowException as e:  # e.g. a tag the server refuses, or the server itself: one line
        raise RegistryError(f"registering {model_uri!r} as {name!r} failed: {_first_line(e.message)}") from e


def _register(cfg: Config, name: str, model_uri: str, evaluation: Evaluation, manifest_hash: str | None,
              split_hash: str | None, new_value: float) -> RegisterResult:
    client = MlflowClient()
    tags = _version_tags(evaluation, manifest_hash, split_hash, model_uri)
    existing = find_version(client, name, model_uri)
    if existing is not None:
        version = str(existing.version)
        log.info("%s is already version %s of %s: reusing it (no duplicate)", model_uri, version, name)
        _retag(client, name, existing, tags)
    else:
        _check_model_uri(model_uri)
        version, existing = register_once(client, name, model_uri, tags)
    _idempotent(client.set_registered_model_alias, name, CANDIDATE_ALIAS, version)

    promote, reason = _gate(cfg, evaluation, new_value, split_hash, str(version), _current_champion(client, name))
    if promote:
        _idempotent(client.set_registered_model_alias, name, CHAMPION_ALIAS, version)
        holder = _current_champion(client, name)  # read back: another registration may have raced us
        if holder is None or str(holder.version) != str(version):
            promote = False
            reason += (f"; but alias '{CHAMPION_ALIAS}' now points to version "
                       f"{holder.version if holder else 'none'} (a concurrent registration): left as is")
    _idempotent(client.set_model_version_tag, name, version, GATE_DECISION_TAG,
                CHAMPION_ALIAS if promote else CANDIDATE_ALIAS)
    _idempotent(client.set_model_version_tag, name, version, GATE_REASON_TAG, reason[:5000])
    _write_model_card(client, name, str(version), model_uri, evaluation, manifest_hash, split_hash, promote, reason)
    result = RegisterResult(name=name, version=str(version), champion=promote, reason=reason)
    log.info("registered %s version %s (%s): %s", name, version, "champion" if promote else "candidate", reason)
    _log_to_active_run(result)
    return result


def registration_key(name: str, model_uri: str) -> str:
    """The value of REGISTRATION_KEY_TAG: hex, so a search filter never needs quoting."""
    return hashlib.sha256(f"{name}\0{model_uri}".encode()).hexdigest()


def find_version(client: MlflowClient, name: str, model_uri: str) -> ModelVersion | None:
    """The existing version of `name` registered from `model_uri`, if any (the lowest
    number, should duplicates exist)."""
    found = _versions_with_key(client, name, registration_key(name, model_uri))
    if found:
        return min(found, key=lambda v: int(v.version))
    legacy = _legacy_version(client, name, model_uri)
    if legacy is not None:  # registered before the key existed: give it the key
        _idempotent(client.set_model_version_tag, name, str(legacy.version), REGISTRATION_KEY_TAG,
                    registration_key(name, model_uri))
    return legacy


def register_once(client: MlflowClient, name: str, model_uri: str,
                  tags: Mapping[str, str]) -> tuple[str, ModelVersion | None]:
    """Create a version of `name` from `model_uri` carrying its registration key, then
    resolve duplicates made by concurrent calls: the lowest version number with the key
    wins, every other one is deleted (each caller computes the same winner). Returns
    (version, None) when this call's version won, else (winner, the winner's ModelVersion)."""
    key = registration_key(name, model_uri)
    mine = str(mlflow.register_model(model_uri, name, await_registration_for=REGISTRATION_TIMEOUT_S,
                                     tags={**tags, REGISTRATION_KEY_TAG: key}).version)
    found = {str(v.version): v for v in _versions_with_key(client, name, key)}
    winner = min({*found, mine}, key=int)
    for version in sorted({*found, mine} - {winner}, key=int):
        log.info("version %s of %s duplicates version %s (a concurrent registration of %s): deleting it",
                 version, name, winner, model_uri)
        try:
            client.delete_model_version(name, version)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":  # another caller deleted it first: fine
                raise
    if winner == mine:
        return mine, None
    log.info("%s is already version %s of %s (registered concurrently): reusing it", model_uri, winner, name)
    winning = found.get(winner) or client.get_model_version(name, winner)
    _retag(client, name, winning, tags)
    return winner, winning


def _versions_with_key(client: MlflowClient, name: str, key: str) -> list[ModelVersion]:
    out: list[ModelVersion] = []
    token = None
    while True:
        page = client.search_model_versions(f"tags.`{REGISTRATION_KEY_TAG}` = '{key}'", max_results=SEARCH_PAGE,
                                            page_token=token)
        # the name is compared here, not in the filter: MLflow filters cannot quote every name
        out += [v for v in page if v.name == name]
        token = page.token
        if not token:
            return out


def _legacy_version(client: MlflowClient, name: str, model_uri: str) -> ModelVersion | None:
    """A version registered before REGISTRATION_KEY_TAG existed: by srgan.model_uri or source."""
    quoted = filter_literal(name)
    if quoted is None:  # holds both quote characters: no filter string can name it
        log.debug("model name %r cannot be quoted in a search filter: no lookup of versions without a key", name)
        return None
    try:
        token = None
        while True:
            page = client.search_model_versions(f"name = {quoted}", max_results=SEARCH_PAGE, page_token=token)
            for v in page:
                if v.name == name and ((v.tags or {}).get(MODEL_URI_TAG) == model_uri or v.source == model_uri):
                    return v
            token = page.token
            if not token:
                return None
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def _retag(client: MlflowClient, name: str, version: ModelVersion, tags: Mapping[str, str]) -> None:
    """Make the version's evaluation tags those of this registration: set the new ones,
    delete metric and hash tags the new evaluation does not have (no stale values)."""
    replaced = (METRIC_TAG_PREFIX, MANIFEST_HASH_TAG, TEST_SPLIT_TAG)
    for key in sorted(version.tags or {}):
        if key.startswith(replaced) and key not in tags:
            try:
                _idempotent(client.delete_model_version_tag, name, str(version.version), key)
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":  # a concurrent re-tag deleted it first: fine
                    raise
    for key, value in tags.items():
        if (version.tags or {}).get(key) != value:
            _idempotent(client.set_model_version_tag, name, str(version.version), key, value)


UPSERT_ATTEMPTS = 6


def _idempotent(call: Any, *args: Any) -> Any:
    """Run an idempotent registry write (set an alias or a tag, delete a tag), again when a
    concurrent write of the same key made it fail: MLflow's SQL store upserts aliases and
    tags by select-then-insert, so on PostgreSQL two writers of one key can both insert and
    one gets a unique violation (BAD_REQUEST). The next attempt finds the row and updates it."""
    for attempt in range(UPSERT_ATTEMPTS):
        try:
            return call(*args)
        except MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or attempt == UPSERT_ATTEMPTS - 1:
                raise
            log.info("registry write %s%s failed (%s): again", call.__name__, args[:2], _first_line(e.message))
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))  # jitter: racing writers spread out
    raise AssertionError("unreachable")


def _check_model_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"invalid parameter registered_model_name={name!r}: blank; set a model name")
    if name != name.strip():
        raise ConfigError(f"invalid parameter registered_model_name={name!r}: leading or trailing spaces; remove them")
    return name


def _check_model_uri(model_uri: str) -> None:
    """Refuse a URI that is not an MLflow model before registering it (MLflow would
    register any string as a version's source)."""
    if not isinstance(model_uri, str) or not model_uri.strip():
        raise ConfigError(f"invalid parameter model_uri={model_uri!r}: blank; pass the model URI train printed")
    try:
        from mlflow.models import get_model_info

        get_model_info(model_uri)  # reads the model's MLmodel file, nothing more
    except Exception as e:  # noqa: BLE001 - whatever the reason, it is not a model we can register
        message = e.message if isinstance(e, MlflowException) else str(e)
        raise ConfigError(
            f"invalid parameter model_uri={model_uri!r}: not an MLflow model ({_first_line(message)}); pass the "
            "model_uri train printed (models:/m-<id>), or models:/<name>/<version> (a generator.keras file is "
            "not a model URI)"
        ) from None


def _first_line(text: Any) -> str:
    return (str(text).strip().splitlines() or ["unknown error"])[0][:300]


# ---- metrics -----------------------------------------------------------------------


def read_evaluation(metrics: Mapping[str, Any] | str | os.PathLike) -> Evaluation:
    """Numeric metrics from evaluate's output: a path to metrics.json, a flat mapping
    {name: value}, or {"metrics": {...}, "how": {...}}. A value may be a number or a
    summary {"mean": number, ...}; other entries (strings such as the model label or
    the manifest hash, None, nested blocks) are not metrics. Every metric must be valid
    (check_metric) and its name fit a tag key: ValueError naming the source and key."""
    source = "metrics"
    if isinstance(metrics, (str, os.PathLike)):
        source = f"metrics file {metrics}"
        metrics = _load_json(Path(metrics))
    if not isinstance(metrics, Mapping):
        raise ValueError(f"{source} holds a JSON {_json_type(metrics)}, not an object: expected evaluate's "
                         "metrics.json ({\"test_psnr_y\": ..., \"bicubic_psnr_y\": ...})")
    values = metrics["metrics"] if isinstance(metrics.get("metrics"), Mapping) else metrics
    numeric = {}
    for name, raw in values.items():
        value = _as_number(raw)
        if value is None:
            continue
        key = f"{METRIC_TAG_PREFIX}{name}"
        if not isinstance(name, str) or len(key) > MAX_TAG_KEY:
            shown = repr(name)[:60] + ("..." if len(repr(name)) > 60 else "")
            raise ValueError(f"{source}: metric key {shown} ({len(str(name))} characters) does not fit a version "
                             f"tag key ({MAX_TAG_KEY - len(METRIC_TAG_PREFIX)} characters at most); rename it")
        problem = check_metric(name, value)
        if problem:
            raise ValueError(f"{source}: {name}={value!r} {problem}; re-run evaluate or fix the file")
        numeric[name] = value
    spelled: dict[str, str] = {}
    for name, value in numeric.items():  # two spellings of one metric must agree: which would the gate read?
        other = spelled.setdefault(metric_names.canonical(name), name)
        if other != name and numeric[other] != value:
            raise ValueError(f"{source}: {other}={numeric[other]!r} and {name}={value!r} are two spellings of one "
                             f"metric ({metric_names.canonical(name)}) with different values; keep one")
    numeric = metric_names.migrate(numeric)
    how = metrics.get("how") if isinstance(metrics.get("how"), Mapping) else None
    manifest_hash = metrics.get("data_manifest_hash")
    split_hash = metrics.get("test_split_hash")
    eval_run_id = metrics.get("mlflow_run_id")
    counts = metrics.get("counts") if isinstance(metrics.get("counts"), Mapping) else None
    return Evaluation(metrics=numeric, how=how, manifest_hash=manifest_hash if isinstance(manifest_hash, str) else None,
                      test_split_hash=split_hash if isinstance(split_hash, str) and split_hash else None,
                      eval_run_id=eval_run_id if isinstance(eval_run_id, str) else None, counts=counts,
                      source=source)



def check_metric(name: str, value: float) -> str | None:
    """Why `value` cannot be metric `name` (None when it can). The range comes from the
    metric's kind, found in its name whatever its spelling (test_psnr_y, test/psnr_y):
    a gain is any finite number, PSNR in (0, MAX_PSNR_DB) dB, SSIM in [-1, 1], LPIPS >= 0."""
    lower = name.lower()
    if not math.isfinite(value):
        return "is not a finite number"
    if "gain" in lower:
        return None
    if "psnr" in lower and not 0.0 < value < MAX_PSNR_DB:
        return f"is not a PSNR (a number of dB > 0 and < {MAX_PSNR_DB:g})"
    if "ssim" in lower and not -1.0 <= value <= 1.0:
        return "is not an SSIM (a number in [-1, 1])"
    if "lpips" in lower and value < 0.0:
        return "is not an LPIPS distance (a number >= 0)"
    return None


def _json_type(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, numbers.Number) else type(value).__name__)


#: evaluate's metrics.json is a few kB; reading more is a wrong file (or a memory bomb)
MAX_METRICS_BYTES = 4 << 20


def _load_json(path: Path) -> Any:
    if not path.is_file():
        if path.exists():  # a folder, FIFO (would block) or device (/dev/zero: endless)
            raise ValueError(f"metrics file {path} is not a regular file (expected evaluate's metrics.json)")
        raise FileNotFoundError(f"metrics file {path} does not exist (expected evaluate's metrics.json)")
    with path.open("rb") as f:
        text = f.read(MAX_METRICS_BYTES + 1)
    if len(text) > MAX_METRICS_BYTES:
        raise ValueError(f"metrics file {path} is larger than {MAX_METRICS_BYTES} bytes: not evaluate's metrics.json "
                         "(a few dozen numbers)")

    def unique(pairs: list[tuple[str, Any]]) -> dict:
        # json keeps the last of duplicate keys silently: a second value could hide the measured one
        seen: dict = {}
        for key, value in pairs:
            if key in seen:
                raise ValueError(f"metrics file {path}: key {key!r} appears more than once; keep one value")
            seen[key] = value
        return seen

    try:
        # an integer too long for a float is +-inf (refused by check_metric, naming its key)
        # rather than an OverflowError or Python's digit-limit error that names no file
        return json.loads(text.decode("utf-8"), object_pairs_hook=unique,
                          parse_int=lambda s: int(s) if len(s) <= 300 else float(s))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"metrics file {path} is not valid JSON: {e}") from e
    except RecursionError:
        raise ValueError(f"metrics file {path} is nested too deeply to be evaluate's metrics.json") from None


def _as_number(raw: Any) -> float | None:
    if isinstance(raw, Mapping):
        raw = raw.get("mean")
    # numbers only: float() would also accept strings such as a hash "12e45..." or "nan"
    if isinstance(raw, bool) or not isinstance(raw, numbers.Real):
        return None
    try:
        return float(raw)
    except OverflowError:  # an int over ~1e308 from a mapping: not finite, so check_metric refuses it
        return math.inf if raw > 0 else -math.inf


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
    tag = f"{METRIC_TAG_PREFIX}{metric}"
    if tag not in champion.tags:  # tagged before the grouped names
        tag = f"{METRIC_TAG_PREFIX}{metric_names.legacy(metric)}"
    old_value = _tag_number(champion.tags.get(tag))
    if old_value is None:
        return False, (f"{reason}; but champion version {champion.version} has no usable {metric} tag: "
                       "not compared, stays candidate")
    problem = check_metric(metric, old_value)
    if problem:  # e.g. an inf registered before values were checked: it would win forever
        return False, (f"{reason}; but champion version {champion.version}'s tag {tag}={old_value!r} {problem}: "
                       "not compared, stays candidate (fix that tag or promote by hand)")
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
