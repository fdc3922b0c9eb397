"""Hyper-parameter sweeps: trials of train + evaluate compared in MLflow, the best one
registered through the registry's champion gate.

A trial is a JSON object of Config fields applied on top of the sweep's Config, e.g.
`{"learning_rate": 2e-4, "content_loss": "vgg19_54"}`; a sweep is a JSON list of them
(`srgan sweep --trials trials.json`, or the `trials` parameter of the KFP sweep pipeline).

MLflow structure, the same locally and on Kubeflow:
  sweep parent run (srgan.step=sweep locally, the pipeline's parent run on KFP)
    trial run per trial: named after its parameters (`lr=2e-4,loss=vgg19_54`), tagged
    `trial.<field>` with each override, params = the trial's hyper-parameters, metrics =
    its final validation (val/*) and evaluation (test/*) numbers (so the runs table and
    parallel-coordinates view compare trials)
      train and evaluate child runs of the trial, named with the trial's label
      (`train lr=2e-4,loss=vgg19_54`)
    register child run: only the best trial
The parent gets the comparison table (`sweep/comparison.csv` and `.json`: trial
parameters -> metrics), tags naming the best trial and, like every parent, the best
trial's headline test metrics, its sweep metric and the registered version.

Best = the trial with the best `cfg.sweep_metric` (default `val/psnr_y`, on validation
faces carved from the training split: the test split never picks; higher when
gate_mode is 'max', lower when 'min'); trials without a finite value never win. Only that trial is
registered, through `srcore.registry.register` (the same gate as a single run).
Locally the trials run one after another (`sweep`); on Kubeflow each runs in its own
pods under `dsl.ParallelFor` (pipeline/sweep.py): `start_trial` opens its run,
`collect_trial` reads its results back, `finish_sweep` picks and registers.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from srcore.atomic import spreadsheet_safe
from srcore.config import Config, ConfigError, apply_overrides, coerce
from srcore.metric_names import VAL, migrate

log = logging.getLogger(__name__)

TRIAL_TAG_PREFIX = "trial."
TRIAL_INDEX_TAG = "srgan.trial.index"
TRIAL_OVERRIDES_TAG = "srgan.trial.overrides"
SWEEP_TAG = "srgan.sweep"
BEST_RUN_TAG = "srgan.sweep.best_trial_run_id"
BEST_NAME_TAG = "srgan.sweep.best_trial"
COMPARISON_CSV = "sweep/comparison.csv"
COMPARISON_JSON = "sweep/comparison.json"
# short names so that a run name reads at a glance in the runs table
ABBREVIATIONS = {
    "learning_rate": "lr", "pretrain_learning_rate": "plr", "content_loss": "loss", "batch_size": "bs",
    "epochs": "e", "pretrain_epochs": "pe", "adv_weight": "adv", "gen_blocks": "blocks", "gen_filters": "filters",
    "lr_schedule": "sched", "gen_init_scale": "init",
}
# fields a trial may not change: they decide the data every trial must share, or where its outputs go
FIXED_FIELDS = ("source", "data_dir", "limit", "test_count", "showcase_count", "partition_file", "hr_size", "scale",
                "experiment_name", "registered_model_name", "model_dir", "eval_dir")


@dataclass
class TrialResult:
    index: int
    name: str
    run_id: str
    overrides: dict[str, Any]
    model_uri: str
    metrics: dict[str, Any] = field(default_factory=dict)  # evaluate's metrics.json


# ---- trials -----------------------------------------------------------------------------


#: a trials file is a few Config overrides per trial
MAX_TRIALS_BYTES = 1 << 20


def load_trials(trials: str | os.PathLike | Sequence[Mapping[str, Any]], cfg: Config | None = None) -> list[dict]:
    """Trials from a JSON file, a JSON string or a list; each checked against Config
    (unknown fields, bad values and fields shared by all trials are refused)."""
    where = "trials"
    if isinstance(trials, (str, os.PathLike)):
        text = str(trials)
        path = Path(text).expanduser()
        if not text.lstrip().startswith("[") and path.is_file():
            with path.open("rb") as f:
                raw = f.read(MAX_TRIALS_BYTES + 1)
            if len(raw) > MAX_TRIALS_BYTES:
                raise ConfigError(f"{path} is larger than {MAX_TRIALS_BYTES} bytes: a trials file is a short JSON list")
            where, text = str(path), raw
        elif not text.lstrip().startswith("["):
            raise ConfigError(f"trials {text!r}: not a file; pass --trials trials.json (a JSON list of objects)")

        def unique(pairs: list[tuple[str, Any]]) -> dict:
            keys = [k for k, _ in pairs]
            twice = sorted({k for k in keys if keys.count(k) > 1})
            if twice:  # json keeps the last silently: which value did the user mean?
                raise ConfigError(f"{where}: a trial gives {', '.join(map(repr, twice))} more than once; keep one")
            return dict(pairs)

        try:
            trials = json.loads(text, object_pairs_hook=unique)
        except ConfigError:
            raise
        except RecursionError:
            raise ConfigError(f"{where} is nested too deeply to be a list of trials") from None
        except ValueError as e:  # bad JSON, not UTF-8, an integer of thousands of digits
            raise ConfigError(f"{where} is not valid JSON: {str(e)[:160]}") from None
    if not isinstance(trials, list) or not trials or not all(isinstance(t, Mapping) for t in trials):
        raise ConfigError(f"{where} must be a non-empty JSON list of objects of Config fields, "
                          'e.g. [{"learning_rate": 1e-4}, {"learning_rate": 2e-4}]')
    base = cfg or Config()
    out = []
    for i, trial in enumerate(trials):
        fixed = sorted(set(trial) & set(FIXED_FIELDS))
        if fixed:
            raise ConfigError(f"{where}: trial {i} sets {', '.join(fixed)}, which all trials of a sweep share; "
                              "set them for the whole sweep instead")
        try:
            apply_overrides(base, trial)
            # typed values: JSON through KFP turns 1 into 1.0, and names must not differ by that
            out.append({k.replace("-", "_"): coerce(k.replace("-", "_"), v) for k, v in trial.items()})
        except ConfigError as e:
            raise ConfigError(f"{where}: trial {i}: {e}") from None
    names = [trial_name(t) for t in out]
    if len(set(names)) < len(names):
        raise ConfigError(f"{where}: two trials have the same parameters ({', '.join(names)})")
    return out


def _short(value: Any) -> str:
    if isinstance(value, float) and value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def trial_name(trial: Mapping[str, Any]) -> str:
    """`lr=2e-4,loss=vgg19_54`: the trial's overrides, short (the MLflow run name)."""
    if not trial:
        return "baseline"
    return ",".join(f"{ABBREVIATIONS.get(k, k)}={_short(v)}" for k, v in trial.items())


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name)[:80]


def trial_overrides(cfg: Config, trial: Mapping[str, Any], index: int, folder: str = "") -> dict[str, Any]:
    """The trial's overrides plus model/eval folders of its own
    (`<model_dir>/[<folder>/]<index>-<name>`), so that trials never share checkpoints."""
    sub = Path(folder, f"{index}-{_slug(trial_name(trial))}")
    # run_name: the trial's train and evaluate runs are `train <label>`, told apart in the table
    return {**trial, "model_dir": str(Path(cfg.model_dir) / sub), "eval_dir": str(Path(cfg.eval_dir) / sub),
            "run_name": trial_name(trial)}


def trial_config(cfg: Config, trial: Mapping[str, Any], index: int, folder: str = "") -> Config:
    return apply_overrides(cfg, trial_overrides(cfg, trial, index, folder))


# ---- MLflow runs ------------------------------------------------------------------------


def start_trial(cfg: Config, parent_run_id: str, index: int, trial: Mapping[str, Any],
                folder: str | None = None) -> tuple[str, Config]:
    """Open the trial's run as a child of `parent_run_id` (left RUNNING; `finish_sweep`
    ends it) and return (run id, the trial's Config). Train and evaluate become its
    children. `folder`: sub-folder of model_dir/eval_dir for this sweep's trials
    (default `sweep-<parent run id>`)."""
    import mlflow

    from srcore import tracking

    if not parent_run_id:
        raise ValueError("a sweep needs its parent run: without one (e.g. under KFP's MLflow plugin, which "
                         "owns the run structure) trials cannot be compared as its children")
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    tcfg = trial_config(cfg, trial, index, folder=f"sweep-{parent_run_id[:8]}" if folder is None else folder)
    tags = {
        **tracking.run_tags("trial"),
        tracking.PARENT_TAG: parent_run_id,
        TRIAL_INDEX_TAG: str(index),
        TRIAL_OVERRIDES_TAG: json.dumps(dict(trial), sort_keys=True),
        **{f"{TRIAL_TAG_PREFIX}{k}": str(v) for k, v in trial.items()},
    }
    run = client.create_run(parent.info.experiment_id, run_name=trial_name(trial), tags=tags)
    tracking.log_config(tcfg, run.info.run_id)
    log.info("trial %d %s: run %s", index, trial_name(trial), run.info.run_id)
    return run.info.run_id, tcfg


def start_kfp_trial(cfg: Config, parent_run_id: str, trials: Sequence[Mapping[str, Any]],
                    trial: Mapping[str, Any]) -> tuple[str, str, str]:
    """One iteration of the KFP sweep's ParallelFor: open the trial's run (its index is
    its place in `trials`) and return (trial run id, train's `overrides` JSON, name).
    The trial's folders sit under the KFP run's model_dir, which is already per run."""
    normalised = load_trials(list(trials), cfg)
    (mine,) = load_trials([trial], cfg)
    index = normalised.index(mine)
    run_id, tcfg = start_trial(cfg, parent_run_id, index, mine, folder="")
    return run_id, json.dumps(trial_overrides(cfg, mine, index, folder=""), sort_keys=True), trial_name(mine)


def trial_run_ids(parent_run_id: str) -> list[str]:
    """The trial runs under a sweep's parent run, in trial order (the KFP pick-best step
    reads the trials from MLflow, not from the loop's outputs: a failed trial is there
    too, without results)."""
    import mlflow

    from srcore import tracking

    client = mlflow.MlflowClient()
    exp = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([exp], f"tags.`{tracking.PARENT_TAG}` = '{parent_run_id}' and "
                              f"tags.`{tracking.STEP_TAG}` = 'trial'", max_results=1000)
    return [r.info.run_id for r in sorted(runs, key=lambda r: int(r.data.tags.get(TRIAL_INDEX_TAG, "0")))]


def collect_trial(trial_run_id: str) -> TrialResult:
    """A finished trial read back from MLflow: its train child's model URI and its
    evaluate child's metrics.json (what the KFP pick-best step gets from each trial)."""
    import mlflow

    from srcore import tracking

    client = mlflow.MlflowClient()
    run = client.get_run(trial_run_id)
    children = client.search_runs([run.info.experiment_id], f"tags.`{tracking.PARENT_TAG}` = '{trial_run_id}'",
                                  order_by=["attributes.start_time DESC"])
    by_step: dict[str, Any] = {}
    for child in children:  # newest first: a rerun step counts, not its failed attempt
        by_step.setdefault(child.data.tags.get(tracking.STEP_TAG, ""), child)
    result = TrialResult(index=int(run.data.tags.get(TRIAL_INDEX_TAG, "0")), name=run.info.run_name,
                         run_id=trial_run_id, overrides=json.loads(run.data.tags.get(TRIAL_OVERRIDES_TAG, "{}")),
                         model_uri="")
    train, evaluate = by_step.get("train"), by_step.get("evaluate")
    if train is not None:
        result.model_uri = train.data.tags.get("model_uri", "")
        result.metrics.update(validation_metrics(train.info.run_id))
    if evaluate is not None:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=evaluate.info.run_id,
                                                        artifact_path="evaluation/metrics.json")
            result.metrics.update(json.loads(Path(local).read_text()))
        except (mlflow.exceptions.MlflowException, OSError, json.JSONDecodeError) as e:
            log.warning("trial %s: no evaluation/metrics.json (%s); using the run's metrics", trial_run_id, e)
            result.metrics.update(evaluate.data.metrics)
    result.metrics = migrate(result.metrics)
    if not result.model_uri or not result.metrics:
        log.warning("trial %s (%s) has no %s", trial_run_id, result.name,
                    "trained model" if not result.model_uri else "evaluation")
    return result


def validation_metrics(train_run_id: str) -> dict[str, float]:
    """The final val/* metrics of a train run (its last validation, on faces held out of
    the training split): what a sweep picks on."""
    import mlflow

    metrics = mlflow.MlflowClient().get_run(train_run_id).data.metrics
    return {k: v for k, v in migrate(metrics).items() if k.startswith(VAL)}


# ---- selection and the comparison table -------------------------------------------------


def metric_value(result: TrialResult, metric: str) -> float | None:
    value = result.metrics.get(metric)
    if isinstance(value, Mapping):
        value = value.get("mean")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def pick_best(results: Sequence[TrialResult], metric: str, mode: str = "max") -> TrialResult:
    """The trial with the best finite `metric` (ties: the earlier trial)."""
    scored = [(metric_value(r, metric), r) for r in results if r.model_uri]
    scored = [(v, r) for v, r in scored if v is not None]
    if not scored:
        available = sorted({k for r in results for k in r.metrics if metric_value(r, k) is not None})
        raise ValueError(f"no trial has a finite {metric!r} (available: {', '.join(available) or 'none'}); "
                         "set sweep_metric to one of them")
    sign = 1.0 if mode == "max" else -1.0
    return max(scored, key=lambda vr: (sign * vr[0], -vr[1].index))[1]


def comparison_rows(results: Sequence[TrialResult]) -> list[dict[str, Any]]:
    """One row per trial: index, name, run id, each override, each scalar metric."""
    keys = sorted({k for r in results for k in r.overrides})
    metrics = sorted({k for r in results for k in r.metrics if metric_value(r, k) is not None})
    rows = []
    for r in sorted(results, key=lambda r: r.index):
        row: dict[str, Any] = {"trial": r.index, "name": r.name, "run_id": r.run_id}
        row.update({k: r.overrides.get(k, "") for k in keys})
        row.update({m: metric_value(r, m) for m in metrics})
        row["model_uri"] = r.model_uri
        rows.append(row)
    return rows


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: ("" if v is None else spreadsheet_safe(v)) for k, v in row.items()} for row in rows)
    return buf.getvalue()


def finish_sweep(cfg: Config, parent_run_id: str, results: Sequence[TrialResult],
                 manifest_hash: str = "") -> dict[str, Any]:
    """Log each trial's metrics on its run and end it, pick the best trial by
    cfg.sweep_metric, register only that one (the registry's gate decides `champion`),
    and log the comparison table and the best trial on the parent run."""
    import mlflow
    from mlflow.entities import Metric

    from srcore import tracking
    from srcore.registry import register

    client = mlflow.MlflowClient()
    for r in results:
        scalars = [Metric(k, v, 0, 0) for k in r.metrics if (v := metric_value(r, k)) is not None]
        for i in range(0, len(scalars), 500):
            client.log_batch(r.run_id, metrics=scalars[i:i + 500])
        if client.get_run(r.run_id).info.status == "RUNNING":  # KFP: start_trial left it open
            from srcore.kfp_glue import end_running_children

            end_running_children(r.run_id)  # a failed trial's train/evaluate run a killed pod left RUNNING
            client.set_terminated(r.run_id, "FINISHED" if r.model_uri and r.metrics else "FAILED")

    best = pick_best(results, cfg.sweep_metric, cfg.gate_mode)
    best_value = metric_value(best, cfg.sweep_metric)
    split = "validation faces of the training split" if cfg.sweep_metric.startswith(VAL) else "NOT validation faces"
    log.info("best trial %d %s: %s=%.6g on %s (run %s)", best.index, best.name, cfg.sweep_metric, best_value, split,
             best.run_id)
    rows = comparison_rows(results)
    client.log_text(parent_run_id, _csv(rows), COMPARISON_CSV)
    client.log_dict(parent_run_id, {"metric": cfg.sweep_metric, "mode": cfg.gate_mode, "best_run_id": best.run_id,
                                    "trials": rows}, COMPARISON_JSON)
    for key, value in {SWEEP_TAG: "true", BEST_RUN_TAG: best.run_id, BEST_NAME_TAG: best.name}.items():
        client.set_tag(parent_run_id, key, value)

    best_cfg = apply_overrides(cfg, {**best.overrides, "run_name": best.name})
    with tracking.step_run(best_cfg, "register"):
        mlflow.set_tags({"srgan.sweep.trial_run_id": best.run_id, BEST_NAME_TAG: best.name})
        registered = register(best_cfg, best.model_uri, best.metrics, manifest_hash or None)
        # the parent shows the best trial's numbers: its headline test metrics and its sweep metric
        tracking.report_to_parent(best.metrics, registered, extra_metrics={cfg.sweep_metric: best_value})
    return {
        "parent_run_id": parent_run_id,
        "best_trial": best.name,
        "best_trial_run_id": best.run_id,
        "best_model_uri": best.model_uri,
        "metric": cfg.sweep_metric,
        "best_value": best_value,
        "registered_version": str(registered.version),
        "champion": bool(registered.champion),
        "reason": registered.reason,
        "trials": rows,
    }


# ---- the local sweep ----------------------------------------------------------------------


def sweep(cfg: Config, trials: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Run the trials one after another under one sweep parent run (module doc)."""
    import mlflow

    from srcore import steps, tracking
    from srcore.config import require_source
    from srcore.evaluate import evaluate
    from srcore.train import train

    trials = load_trials(list(trials), cfg)
    require_source(cfg)
    name = f"sweep {len(trials)} trials {tracking.run_name(cfg)}"
    with mlflow.start_run(experiment_id=tracking.experiment_id(cfg), run_name=name,
                          tags={**tracking.run_tags("sweep"), SWEEP_TAG: "true"}) as parent:
        tracking.log_config(cfg, parent.info.run_id)
        mlflow.log_dict({"trials": trials}, "sweep/trials.json")
        if steps.is_ingest_output(cfg.source):
            cfg = apply_overrides(cfg, {"data_dir": str(Path(cfg.source).expanduser())})
            manifest_hash = steps.ingest_output_hash(cfg.data_dir)  # one line for a bad manifest, no KeyError
        else:
            manifest_hash = steps.run("ingest", cfg)["content_hash"]
        results, failed = [], 0
        for index, trial in enumerate(trials):
            run_id, tcfg = start_trial(cfg, parent.info.run_id, index, trial)
            result = TrialResult(index, trial_name(trial), run_id, dict(trial), "")
            try:
                with mlflow.start_run(run_id=run_id, nested=True):  # FAILED when train or evaluate raises
                    trained = train(tcfg)
                    result.model_uri = trained.model_uri
                    result.metrics = migrate({**evaluate(tcfg, trained.model_uri),
                                              **validation_metrics(trained.run_id)})
            except Exception:  # noqa: BLE001 - one failed trial must not lose the others
                failed += 1
                log.exception("trial %d %s failed; the sweep goes on with the others", index, result.name)
            results.append(result)
        if failed:
            mlflow.set_tag("srgan.sweep.failed_trials", str(failed))
        summary = finish_sweep(cfg, parent.info.run_id, results, manifest_hash)
        log.info("sweep finished: best %s (%s=%.6g), registered version %s%s", summary["best_trial"],
                 summary["metric"], summary["best_value"], summary["registered_version"],
                 " (champion)" if summary["champion"] else "")
    log.info("runs: %s (experiment %s)", tracking.where_to_look(parent.info.experiment_id), cfg.experiment_name)
    if summary.get("registered_version"):  # the same closing line as the main job: what to upscale with
        alias = "champion" if summary["champion"] else "candidate"
        log.info("model: %s version %s, alias %s -> models:/%s@%s", cfg.registered_model_name,
                 summary["registered_version"], alias, cfg.registered_model_name, alias)
    return summary


def sweep_step(cfg: Config, trials: str) -> dict[str, Any]:
    """The `sweep` step: `trials` is a JSON file (or JSON text) with a list of trials."""
    return sweep(cfg, load_trials(trials, cfg))
