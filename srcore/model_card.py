"""The model card: the Markdown description of every registered version (srcore.registry).

What a person reading the version page needs, in this order: how the model compares with
bicubic on the test split (and which split, by hash), the gate's decision and why, the
training data and recipe, the hardware and wall time, and links to the train and
evaluate runs. Everything comes from the evaluation and the MLflow runs; a missing piece
is left out with a word, never guessed.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import mlflow

from srcore.metric_names import baseline, gain

log = logging.getLogger(__name__)

# (metric, column title, better) of the table
COLUMNS = (("test/psnr_y", "PSNR-Y (dB)", "higher"), ("test/ssim_y", "SSIM-Y", "higher"),
           ("test/lpips_alex", "LPIPS-Alex", "lower"), ("test/psnr", "PSNR-RGB (dB)", "higher"))
SECTIONS = ("## Test split", "## Gate", "## Training data and recipe", "## Hardware and wall time", "## Runs")
RECIPE = ("pretrain_epochs", "epochs", "content_loss", "gan_loss", "adv_weight", "batch_size", "patch_size",
          "learning_rate", "pretrain_learning_rate", "lr_schedule", "gen_blocks", "gen_filters", "gen_bicubic_skip",
          "disc_filters", "precision", "limit", "seed")


def _num(value: Any, signed: bool = False) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        sign = "+" if signed else ""
        text = f"{value:{sign}.4f}" if abs(value) < 10 else f"{value:{sign}.2f}"
        # a gain that rounds to zero reads 0.0000, not -0.0000 (a tiny loss is not a result)
        return text.replace("-", "+" if signed else "", 1) if float(text) == 0 else text
    return "-"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _run(client: mlflow.MlflowClient, run_id: str | None) -> Any:
    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except mlflow.exceptions.MlflowException as e:
        log.warning("model card: cannot read run %s: %s", run_id, e)
        return None


def render(name: str, version: str, model_uri: str, metrics: Mapping[str, float], decision: str, reason: str,
           train_run_id: str | None, eval_run_id: str | None, test_split_hash: str | None,
           manifest_hash: str | None, counts: Mapping[str, Any] | None = None) -> str:
    """The card's Markdown (metrics: the evaluation's numbers, grouped names)."""
    client = mlflow.MlflowClient()
    train = _run(client, train_run_id)
    evaluation = _run(client, eval_run_id)
    images = (counts or {}).get("images")
    split = f"{images} faces, " if images else ""
    lines = [f"# {name} version {version}: {decision}", "",
             "SRGAN x4 face super-resolution (32x32 -> 128x128).", "",
             SECTIONS[0], "",
             f"Test split: {split}hash `{(test_split_hash or 'unknown')[:12]}` (models are compared only on the "
             "same split). Y = luma, border cropped; LPIPS is a distance (lower is better).", "",
             "| | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "| --- |" + " ---: |" * len(COLUMNS),
             "| **this model** | " + " | ".join(_num(metrics.get(m)) for m, _, _ in COLUMNS) + " |",
             "| bicubic | " + " | ".join(_num(metrics.get(baseline(m))) for m, _, _ in COLUMNS) + " |",
             "| gain over bicubic | " + " | ".join(_num(metrics.get(gain(m)), signed=True) for m, _, _ in COLUMNS)
             + " |",
             "",
             SECTIONS[1], "",
             f"**{decision}**: {reason}", "",
             SECTIONS[2], ""]
    if train is not None:
        params, tags = train.data.params, train.data.tags
        val = tags.get("val.faces")
        lines.append(f"- data: manifest `{(manifest_hash or tags.get('data_manifest_hash') or 'unknown')[:12]}`"
                     + (f", {val} validation faces held out of the training split" if val else ""))
        lines.append("- recipe: " + ", ".join(f"{k}={params[k]}" for k in RECIPE if k in params))
    else:
        lines.append(f"- data: manifest `{(manifest_hash or 'unknown')[:12]}`; training run not found")
    lines += ["", SECTIONS[3], ""]
    if train is not None:
        tags = train.data.tags
        gpus = tags.get("gpu.names") or ("none (CPU)" if tags.get("gpu.count") in ("0", None) else tags["gpu.count"])
        lines.append(f"- training: GPU {gpus}, precision {train.data.params.get('precision', '?')}, "
                     f"TensorFlow {tags.get('tf.version', '?')}")
        if train.info.end_time and train.info.start_time:
            lines.append(f"- training wall time: {_duration((train.info.end_time - train.info.start_time) / 1000)}"
                         + (f" (resumed from epoch {tags['resumed_from_epoch']})"
                            if tags.get("resumed_from_epoch", "0") != "0" else ""))
    if evaluation is not None and evaluation.info.end_time and evaluation.info.start_time:
        lines.append(f"- evaluation wall time: {_duration((evaluation.info.end_time - evaluation.info.start_time) / 1000)}")
    if lines[-1] == "":
        lines.append("- not recorded")
    lines += ["", SECTIONS[4], ""]
    for label, run in (("train", train), ("evaluate", evaluation)):
        if run is not None:
            # a link relative to the UI: it works whatever host serves it
            lines.append(f"- {label}: [{run.info.run_name}](#/experiments/{run.info.experiment_id}/runs/"
                         f"{run.info.run_id}) (run `{run.info.run_id}`)")
    lines += [f"- model: `{model_uri}`", ""]
    return "\n".join(lines)
