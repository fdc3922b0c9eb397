"""Export a generator as a TensorFlow SavedModel for TF Serving / KServe.

The SavedModel holds one signature, `serving_default`:
  input  `images`:   uint8 [N, H, W, 3], any N, H, W (the generator is fully convolutional)
  output `upscaled`: uint8 [N, scale*H, scale*W, 3]
and, for the project's own bounded server (srcore/server.py, what KServe runs), the
function `generate` (the bare generator, float [-1, 1] in and out) and the variable
`scale`, which the server tiles over exactly as `srgan upscale` does.
The [-1, 1] scaling and the rounding back to uint8 are inside the graph (the same
`to_unit` / `from_unit` ops that `srgan upscale` uses), so a client sends and receives
plain pixels, and the SavedModel loads with `tf.saved_model.load` alone: no srcore, no
Keras, no custom objects (tests/test_export.py loads it with both blocked).

Request-size limit: the signature refuses (InvalidArgument, HTTP 400 from TF Serving)
a request with more than `max_batch` images or more than `max_pixels` LR pixels summed
over the batch (N*H*W): the same `serve_max_batch` / `serve_max_pixels` limits the
MLflow pyfunc model states. Neither KServe's InferenceService nor TF Serving's REST API has a body-size
setting, and TF Serving runs a request in one piece (no tiling), so memory grows with
N*H*W; see srcore/deploy.py for the limits the cluster side adds (concurrency, timeout).

Layout (what TF Serving's --model_base_path and KServe's storageUri point at):
  <out>/<name>/<version>/saved_model.pb, variables/
The version folder is written under a temporary dot-name in the same folder and renamed
into place; TF Serving ignores non-numeric folders, so it never loads a half-written
version. srcore.atomic's ownership rule holds: an existing version folder is replaced
only when export wrote it (its marker lists every file); anything else in its place is
refused before the model is loaded, never renamed or deleted.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import tensorflow as tf

from srcore.atomic import (
    MARKER, OutputDirError, check_replaceable, relative_files, replace_dir_atomically, write_marker,
)
from srcore.config import Config
from srcore.data.degrade import from_unit, to_unit

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "upscaled"
ARTIFACT_PATH = "savedmodel"  # MLflow artifact folder: savedmodel/<version>/saved_model.pb
DEFAULT_VERSION = 1
DEFAULT_MAX_PIXELS = 262_144  # LR pixels per request (sum over the batch), as Config.serve_max_pixels
DEFAULT_MAX_BATCH = 16  # images per request, as Config.serve_max_batch

OUTPUT_KIND = "export"  # srcore.atomic marker kind of <out>/<name>/<version>
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class _Upscaler(tf.Module):
    """The generator wrapped with uint8 in/out; only TF ops, so no Keras on load."""

    def __init__(self, generator: Any, max_pixels: int, max_batch: int):
        super().__init__(name="srgan_upscaler")
        self.generator = generator  # tracked: its variables are saved with the module
        self.max_pixels = tf.constant(int(max_pixels), tf.int64)
        self.max_batch = tf.constant(int(max_batch), tf.int64)
        # read by srcore.server, which tiles with srcore.upscale over `generate`
        self.scale = tf.Variable(int(_scale(generator)), trainable=False, dtype=tf.int64, name="scale")

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="lr")])
    def generate(self, lr: tf.Tensor) -> tf.Tensor:
        """The bare generator ([-1, 1] in and out): what srcore.server runs tile by tile,
        so that a served answer equals `srgan upscale` and its work stops at a deadline."""
        return self.generator(lr, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=INPUT_NAME)])
    def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        shape = tf.shape(images, out_type=tf.int64)
        checks = [
            tf.debugging.assert_less_equal(
                shape[0], self.max_batch, message="request too large: more images than serve_max_batch; send fewer"),
            tf.debugging.assert_less_equal(
                shape[0] * shape[1] * shape[2], self.max_pixels,
                message="request too large: more LR pixels (N*H*W) than serve_max_pixels; send fewer or smaller images"),
        ]
        with tf.control_dependencies(checks):
            sr = self.generator(to_unit(images), training=False)
        return {OUTPUT_NAME: from_unit(sr)}


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise ValueError(f"export name {name!r} must be letters, digits, '.', '_' or '-' (it becomes a folder name)")
    return name


def _check_version(version: int | str) -> int:
    try:
        v = int(version)
    except (TypeError, ValueError):
        v = -1
    if v < 1:
        raise ValueError(f"export version {version!r} must be a positive integer (TF Serving loads numeric folders)")
    return v


def load_model(model: Any) -> Any:
    """A Keras generator from anything `srgan upscale` takes (a .keras file, a folder
    holding one, an MLflow model URI) or an already loaded model."""
    if isinstance(model, (str, os.PathLike)):
        from srcore.model_uri import resolve_generator

        return resolve_generator(str(model))
    return model


def _save(generator: Any, folder: Path, max_pixels: int, max_batch: int) -> None:
    if max_pixels < 1 or max_batch < 1:
        raise ValueError(f"max_pixels={max_pixels} and max_batch={max_batch} must be positive (limits per request)")
    module = _Upscaler(generator, max_pixels, max_batch)
    tf.saved_model.save(module, str(folder), signatures={SIGNATURE: module.serve.get_concrete_function()})


def write_savedmodel(generator: Any, target: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
                     max_batch: int = DEFAULT_MAX_BATCH) -> Path:
    """Write the serving SavedModel of `generator` to `target` atomically (built in a
    hidden sibling, then swapped in). An existing `target` is replaced only when it is an
    earlier export holding only files export wrote (srcore.atomic): OutputDirError else."""
    target = Path(target).expanduser().absolute()
    if max_pixels < 1 or max_batch < 1:
        raise ValueError(f"max_pixels={max_pixels} and max_batch={max_batch} must be positive (limits per request)")
    replace_dir_atomically(target, OUTPUT_KIND, lambda tmp: _save(generator, tmp, max_pixels, max_batch))
    return target


def export_savedmodel(
    model: Any,
    out_dir: str | os.PathLike,
    name: str,
    version: int | str = DEFAULT_VERSION,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Path:
    """Write `<out_dir>/<name>/<version>/` (saved_model.pb, variables/) and return that
    folder. `model`: anything `srgan upscale` takes, or a loaded Keras generator."""
    name, version = _check_name(name), _check_version(version)
    target = Path(out_dir).expanduser() / name / str(version)
    check_replaceable(target, OUTPUT_KIND)  # refused before the (slow) model load
    generator = load_model(model)
    target = write_savedmodel(generator, target, max_pixels, max_batch)
    log.info("exported SavedModel %s (signature %s: uint8 [N,H,W,3] -> uint8 x%s)",
             target, SIGNATURE, _scale(generator))
    return target


def _scale(generator: Any) -> int:
    from srcore.models import generator_scale

    return generator_scale(generator)


def log_savedmodel(generator: Any, artifact_path: str = ARTIFACT_PATH, cfg: Config | None = None,
                   version: int = DEFAULT_VERSION) -> str:
    """Log the serving SavedModel to the active MLflow run as `<artifact_path>/<version>/`
    and return its artifact URI: the folder KServe's storageUri (TF Serving's
    model_base_path) points at, e.g. `s3://bucket/<exp>/<run>/artifacts/savedmodel`.
    The request limits come from `cfg` (serve_max_pixels, serve_max_batch)."""
    import tempfile

    import mlflow

    if mlflow.active_run() is None:
        raise RuntimeError("log_savedmodel needs an active MLflow run (call it inside train's run)")
    with tempfile.TemporaryDirectory(prefix="srgan-savedmodel-") as tmp:
        # a fresh temporary folder: no ownership marker in the logged artifact
        _save(load_model(generator), Path(tmp) / str(_check_version(version)), *_limits(cfg))
        mlflow.log_artifacts(tmp, artifact_path=artifact_path)
    uri = mlflow.get_artifact_uri(artifact_path)
    mlflow.set_tag("savedmodel_uri", uri)
    log.info("logged SavedModel to %s", uri)
    return uri


def export_step(cfg: Config, model: Any, out: str | os.PathLike = "", model_name: str | None = None,
                model_version: int | str | None = None, volume_root: str = "", volume_claim: str = "",
                version: int | str | None = None) -> dict[str, Any]:
    """The `export` step: `model` (anything upscale takes) -> a `<name>/<version>/` SavedModel.
    `model_name` defaults to cfg.registered_model_name; the version folder is
    `model_version` (the registered version: each version gets its own folder), else
    cfg.export_version. Where it goes (the first that applies):
    - `out`: `<out>/<name>/<version>/` on this machine;
    - cfg.deploy_storage_uri `s3://...` / `gs://...`: written here, then uploaded to
      `<uri>/<name>/<version>/` through MLflow's artifact store client (boto3 with the
      pod's AWS_* / MLFLOW_S3_ENDPOINT_URL, or GCS credentials);
    - the pipeline's volume (`volume_root`, mounted claim `volume_claim`):
      `<volume_root>/<path>/<name>/<version>/`, where deploy_storage_uri is
      `pvc://<volume_claim>/<path>` (default path `serving`).
    `storage_uri` in the result is the version folder as KServe's storage initializer reads it."""
    name = _check_name(model_name or cfg.registered_model_name)
    version = _check_version(model_version or version or cfg.export_version)
    max_pixels, max_batch = _limits(cfg)
    base = cfg.deploy_storage_uri.rstrip("/")
    scheme = base.split("://", 1)[0] if "://" in base else ""
    if out:
        path = export_savedmodel(model, out, name, version, max_pixels, max_batch)
        storage_uri = f"{base}/{name}/{version}" if base else ""
    elif scheme in ("s3", "gs"):
        storage_uri = f"{base}/{name}/{version}"
        path = _upload(model, storage_uri, max_pixels, max_batch)
    elif volume_root and volume_claim:
        claim, _, sub = (base.split("://", 1)[1] if scheme == "pvc" else f"{volume_claim}/serving").partition("/")
        if claim != volume_claim:
            raise ValueError(f"deploy_storage_uri {base!r} names claim {claim!r}, but this task mounts "
                             f"{volume_claim!r}: use pvc://{volume_claim}/<path>, or s3://bucket/prefix")
        sub = sub.strip("/") or "serving"
        path = export_savedmodel(model, Path(volume_root) / sub, name, version, max_pixels, max_batch)
        storage_uri = f"pvc://{claim}/{sub}/{name}/{version}"
    else:
        raise ValueError("export needs --out (a folder), or deploy_storage_uri s3://bucket/prefix or gs://..., "
                         f"or the pipeline's volume; deploy_storage_uri={base!r}")
    return {
        "savedmodel_dir": str(path),
        "model_base_path": str(Path(path).parent) if "://" not in str(path) else str(path).rsplit("/", 1)[0],
        "storage_uri": storage_uri,
        "name": name,
        "version": int(version),
        "signature": SIGNATURE,
        "max_pixels": int(max_pixels),
        "max_batch": int(max_batch),
    }


def _upload(model: Any, uri: str, max_pixels: int, max_batch: int) -> str:
    """Write the SavedModel to a temporary folder and upload its files to `uri` (the version
    folder), with export's ownership marker: the same rule as a local folder (srcore.atomic),
    checked before the model is loaded. Objects under `uri` that export did not write are
    never overwritten."""
    import tempfile

    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(uri)
    _check_remote_owned(repo, uri)
    with tempfile.TemporaryDirectory(prefix="srgan-savedmodel-") as tmp:
        local = Path(tmp) / "sm"
        _save(load_model(model), local, max_pixels, max_batch)
        write_marker(local, OUTPUT_KIND, [f for f in relative_files(local) if f != MARKER])
        repo.log_artifacts(str(local))
    log.info("uploaded SavedModel to %s", uri)
    return uri


def _check_remote_owned(repo: Any, uri: str) -> None:
    """OutputDirError unless the object-store folder `uri` is empty or export's own."""
    import json
    import tempfile

    names = sorted(Path(entry.path).name + ("/" if entry.is_dir else "") for entry in repo.list_artifacts())
    if not names:
        return
    kind = None
    if MARKER in names:
        with tempfile.TemporaryDirectory(prefix="srgan-marker-") as tmp:
            try:
                kind = json.loads(Path(repo.download_artifacts(MARKER, tmp)).read_text()).get("kind")
            except (OSError, ValueError, AttributeError):
                kind = None
    if kind != OUTPUT_KIND:
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise OutputDirError(f"storage folder {uri} was not written by srgan export (it holds {shown}); srgan "
                             "never overwrites what it did not write: pass another deploy_storage_uri or version")


def _limits(cfg: Config | None) -> tuple[int, int]:
    if cfg is None:
        return DEFAULT_MAX_PIXELS, DEFAULT_MAX_BATCH
    return int(cfg.serve_max_pixels), int(cfg.serve_max_batch)
