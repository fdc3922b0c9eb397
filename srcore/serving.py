"""The generator as an MLflow pyfunc model: uint8 images in, uint8 x4 images out.

Inputs `SRUpscaler.predict` accepts (called directly, via `unwrap_python_model()`, or
through the loaded pyfunc model, which passes them on unchanged):
- a single HxWx3 uint8 array -> one HxWx3 output;
- a batch NxHxWx3 -> a batch N x sH x sW x 3;
- images of different sizes: a list of arrays, or a 1-D object array of arrays (see
  `image_batch`) -> a list;
- a one-column pandas DataFrame of images, or a one-key dict (a named tensor).
Nested Python lists are accepted wherever arrays are. Pixel values are uint8, or integers
0..255 of another integer dtype; floats, booleans, strings, negatives and values over 255
are refused (HTTP 400 over REST, ValueError for direct callers), never cast
(`uint8_pixels`, which srcore.server shares).

Over REST (`mlflow models serve`), `{"inputs": [image, ...]}` (or `"instances"`; a batch,
even of one image) arrives as an NxHxWx3 array in the JSON values' own dtype and is
answered as `{"predictions": [sr_image, ...]}`; a bare `{"inputs": image}` is answered with
one image. Ragged batches are rejected by MLflow's JSON parser with HTTP 400, so REST
clients send one batch per image size. Optional params: `{"params": {"tile": 64,
"overlap": 16, "encoding": "png"}}`; with `encoding=png` each output image comes back as a
base64 PNG string (about 20x smaller than the JSON array of its pixels).

Why the signature has no input schema (see `upscaler_signature`): the scoring server
converts JSON to the input tensor's dtype with `np.array(values, dtype=...)` before
`predict` runs (mlflow/utils/proto_json_utils.py `convert_data_type`), which for uint8
turns 0.99 into 0, true into 1 and "7" into 7 without a word, and the loaded model then
compares dtypes strictly (mlflow/models/utils.py `_enforce_tensor_spec`), so no other
dtype would take a uint8 array. Without an input schema MLflow keeps the JSON values'
own dtype (int64, float64, bool, str) and `predict` checks them. The accepted input is
stated in the MLmodel metadata (`input`), the input example and the output schema.
Models logged before this keep their uint8 input schema, and MLflow keeps casting their
floats (and booleans, numeric strings) before any of this code runs: re-log them
(`log_upscaler` on their generator) to get the check.

Bounded: `ServingLimits` (max LR pixels per request, max batch, tile and overlap range,
a time budget) are fixed when the model is logged, stated in its MLmodel metadata
(`serving_limits`) and handed to the model as its artifact `serving_limits.json` (not as
a model_config, which MLflow would also log as run params, crowding the hyper-parameters;
models logged with a model_config still load it). A request over a limit
is refused before any work with MlflowException INVALID_PARAMETER_VALUE, which the
scoring server answers with HTTP 400 and a message naming the limit; work past the
time budget stops between tiles (HTTP 503). Every image goes through srcore.upscale's
tiled inference, so the generator's memory depends on the tile, not the image.

`mlflow models serve` parses and converts the whole JSON body before `predict` (and so
before these limits): serve it only behind an ingress that caps body size, concurrency
and time, or use srcore.server, the project's bounded server, which answers the same
`/invocations` payload.

Logged as MLflow "models from code" (srcore/upscaler_model.py builds the model), so
nothing is cloudpickled.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

log = logging.getLogger(__name__)

SRCORE_DIR = Path(__file__).resolve().parent
MODEL_CODE = SRCORE_DIR / "upscaler_model.py"
GENERATOR_ARTIFACT = "generator"
LIMITS_ARTIFACT = "serving_limits"
ENCODINGS = ("array", "png")
# The project's tested set (pyproject.toml): the serving environment must be able to
# load a Keras 3 .keras file written by this exact Keras, and protobuf is pinned there
# because tensorflow and mlflow only agree on that range.
SERVING_REQUIREMENTS = [
    "tensorflow==2.21.0",
    "keras==3.15.1",
    "mlflow==3.17.2",
    "protobuf>=6.33,<6.34",
    "numpy>=1.26,<3",
    "pillow>=10.4",
]
_EXAMPLE_SIZE = (8, 8)


PREFIX = "serve_"  # of the limits' keys in the model's metadata and model_config


@dataclass(frozen=True)
class ServingLimits:
    """What one request may ask of the served model (defaults = Config's serve_* fields).

    max_pixels bounds the LR pixels of a whole request (the sum over its images): the
    JSON answer holds 16 x 3 values per LR pixel at x4, so it bounds the answer's memory
    too (262,144 LR pixels, e.g. one 512x512 image, answer in ~0.2 GB of JSON)."""

    max_pixels: int = 262_144
    max_batch: int = 16
    min_tile: int = 32
    max_tile: int = 256
    max_overlap: int = 64
    max_seconds: float = 55.0  # below the scoring server's 60 s request timeout

    @classmethod
    def from_config(cls, cfg: Any) -> "ServingLimits":
        return cls(max_pixels=cfg.serve_max_pixels, max_batch=cfg.serve_max_batch, min_tile=cfg.serve_min_tile,
                   max_tile=cfg.serve_max_tile, max_seconds=cfg.serve_max_seconds)

    @classmethod
    def from_dict(cls, values: dict | None) -> "ServingLimits":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k.removeprefix(PREFIX): v for k, v in (values or {}).items()}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """Keys named like the Config fields (serve_*): MLflow logs a model_config as params of
        the run, where a bare `max_pixels` would clash with Config.max_pixels."""
        return {f"{PREFIX}{k}": v for k, v in dataclasses.asdict(self).items()}

    def default_tiling(self) -> tuple[int, int]:
        """upscale's default tile and overlap, brought within these limits."""
        from srcore.upscale import DEFAULT_OVERLAP, DEFAULT_TILE

        return min(max(DEFAULT_TILE, self.min_tile), self.max_tile), min(DEFAULT_OVERLAP, self.max_overlap)

    def check(self, sizes: list[tuple[int, int]], tile: int, overlap: int, encoding: str) -> None:
        """Refuse (HTTP 400, naming the limit) a request over any limit; cheap, before work."""
        if len(sizes) > self.max_batch:
            _refuse(f"the request holds {len(sizes)} images, more than the limit max_batch={self.max_batch}")
        pixels = sum(h * w for h, w in sizes)
        if pixels > self.max_pixels:
            largest = max(sizes, key=lambda s: s[0] * s[1])
            _refuse(
                f"the request holds {pixels} input pixels (largest image {largest[1]}x{largest[0]}), more than "
                f"the limit max_pixels={self.max_pixels}; send smaller images or fewer per request"
            )
        if not self.min_tile <= tile <= self.max_tile:
            _refuse(f"tile={tile} is outside the limits min_tile={self.min_tile}..max_tile={self.max_tile}")
        if not 0 <= overlap <= self.max_overlap:
            _refuse(f"overlap={overlap} is outside the limits 0..max_overlap={self.max_overlap}")
        if encoding not in ENCODINGS:
            _refuse(f"encoding={encoding!r} is not one of {', '.join(ENCODINGS)}")


class RequestRefused(MlflowException, ValueError):
    """A request the model will not run (HTTP 400); also a ValueError for direct callers."""


def _refuse(message: str) -> None:
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    raise RequestRefused(message, error_code=INVALID_PARAMETER_VALUE)


class SRUpscaler(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper around a `.keras` generator (artifact `generator`); its
    artifact `serving_limits` holds the ServingLimits."""

    def __init__(self, limits: ServingLimits | None = None):
        self.limits = limits or ServingLimits()

    def load_context(self, context) -> None:
        from srcore.models import load_generator

        if getattr(context, "model_config", None):  # models logged before the limits became an artifact
            self.limits = ServingLimits.from_dict(context.model_config)
        if LIMITS_ARTIFACT in (context.artifacts or {}):
            self.limits = ServingLimits.from_dict(json.loads(Path(context.artifacts[LIMITS_ARTIFACT]).read_text()))
        self.generator = load_generator(context.artifacts[GENERATOR_ARTIFACT])

    # np.ndarray is a hint MLflow infers no schema from, so it adds no pydantic check of its own
    # (which would take true and "7" as pixels) and no warning asking for hints: every pixel is
    # checked here (uint8_pixels). DataFrames and lists are accepted too.
    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None):
        from srcore.upscale import UpscaleTimeout, check_image_array, upscale_array

        params = params or {}
        default_tile, default_overlap = self.limits.default_tiling()
        tile = _int_param(params, "tile", default_tile)
        overlap = _int_param(params, "overlap", default_overlap)
        encoding = str(params.get("encoding") or "array")
        try:
            images, shape = _as_images(model_input)
        except (ValueError, TypeError) as err:  # a clear 400, not "unexpected error"
            _refuse(str(err))
        self.limits.check([img.shape[:2] for img in images], tile, overlap, encoding)
        for i, img in enumerate(images):
            try:
                check_image_array(img, f"input image {i}")
            except (ValueError, TypeError) as err:
                _refuse(str(err))
        log.debug("predict: %s input, %d image(s)", shape, len(images))
        deadline = time.monotonic() + self.limits.max_seconds
        try:
            outputs = [
                upscale_array(self.generator, img, tile=tile, overlap=overlap, name=f"input image {i}", deadline=deadline)
                for i, img in enumerate(images)
            ]
        except UpscaleTimeout as err:
            from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

            raise MlflowException(
                f"{err}: the request took longer than the limit max_seconds={self.limits.max_seconds}",
                error_code=TEMPORARILY_UNAVAILABLE,
            ) from None
        if encoding == "png":
            return [png_base64(img) for img in outputs]
        if shape == "single":
            return outputs[0]
        if shape == "batch":
            return np.stack(outputs)
        return outputs


def _int_param(params: dict[str, Any], name: str, default: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        _refuse(f"{name}={value!r} is not an integer")
        raise  # unreachable: _refuse raises


def png_base64(img: np.ndarray) -> str:
    """A uint8 image as a base64 PNG string (the compact `encoding=png` answer)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png_base64(text: str) -> np.ndarray:
    """The inverse of png_base64, for clients and tests."""
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(text))) as img:
        return np.asarray(img)


def _as_images(model_input: Any) -> tuple[list[np.ndarray], str]:
    """Normalise every accepted input form to (list of uint8 arrays, "single" | "batch" | "list")."""
    import pandas as pd

    if isinstance(model_input, dict):
        if len(model_input) != 1:
            raise ValueError(f"expected one named tensor of images, got keys {sorted(model_input)}")
        model_input = next(iter(model_input.values()))
    if isinstance(model_input, pd.DataFrame):
        if model_input.shape[1] != 1:
            raise ValueError(f"expected a one-column DataFrame of images, got columns {list(model_input.columns)}")
        return [uint8_pixels(cell, f"row {i}") for i, cell in enumerate(model_input.iloc[:, 0])], "list"
    if isinstance(model_input, (list, tuple)) and not model_input:  # MLflow passes `"inputs": []` on as is
        raise ValueError("the request holds no images")
    if isinstance(model_input, (list, tuple)) and all(isinstance(x, np.ndarray) for x in model_input):
        return [uint8_pixels(img, f"input image {i}") for i, img in enumerate(model_input)], "list"
    dense = _dense_or_none(model_input)
    if dense is None:  # ragged nesting: images of different sizes
        return [uint8_pixels(img, f"input image {i}") for i, img in enumerate(model_input)], "list"
    if dense.ndim == 4:
        return [uint8_pixels(img, f"input image {i}") for i, img in enumerate(dense)], "batch"
    if dense.ndim in (2, 3):
        return [uint8_pixels(dense, "input image")], "single"
    raise ValueError(f"expected an HxWx3 image or an NxHxWx3 batch, got an array of shape {dense.shape}")


def _dense_or_none(model_input: Any) -> np.ndarray | None:
    if isinstance(model_input, np.ndarray) and model_input.dtype != object:
        return model_input
    try:
        dense = np.asarray(model_input)
    except ValueError:  # numpy >= 1.24 refuses ragged nesting
        return None
    return None if dense.dtype == object else dense


_KINDS = {"f": "floats", "c": "complex numbers", "b": "booleans", "U": "strings", "S": "bytes",
          "O": "mixed or nested values"}


def uint8_pixels(value: Any, what: str) -> np.ndarray:
    """Pixel values as uint8: uint8 as is, other integer arrays (JSON gives int64) if all in
    0..255; anything else is a ValueError naming `what` and the dtype. Nothing is cast."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):  # numpy >= 1.24 refuses ragged nesting
        raise ValueError(f"{what}: expected an array of integers 0..255 (rows of equal length)") from None
    if arr.dtype == np.uint8:
        return arr
    if arr.size == 0:
        raise ValueError(f"{what}: holds no pixel values (shape {arr.shape})")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):  # bool is no integer to numpy, but say so
        kind = _KINDS.get(arr.dtype.kind, "values")
        raise ValueError(f"{what}: pixel values must be uint8 integers 0..255, got {kind} (dtype {arr.dtype}); "
                         "nothing is cast")
    low, high = arr.min(), arr.max()
    if low < 0 or high > 255:
        raise ValueError(f"{what}: pixel values must be uint8 integers 0..255, got {low}..{high} (dtype {arr.dtype})")
    return arr.astype(np.uint8)


def image_batch(images: list[np.ndarray]) -> np.ndarray:
    """Images -> what the loaded pyfunc model accepts: an NxHxWx3 array when all have one
    size, else a 1-D object array (MLflow's schema check passes ragged tensors only in
    that form; a plain list of different sizes is refused before predict runs)."""
    if len({np.shape(img) for img in images}) == 1:
        return np.stack(images)
    ragged = np.empty(len(images), dtype=object)
    for i, img in enumerate(images):  # element-wise: np.array(images) would try to broadcast
        ragged[i] = img
    return ragged


#: what the model takes, stated in its MLmodel metadata (the signature has no input schema)
INPUT_DESCRIPTION = ("uint8 NxHxWx3: a batch of RGB images, pixel values integers 0..255 (over REST "
                     '{"inputs": [image, ...]} with each image an HxWx3 nested list); floats, booleans, '
                     "strings and values outside 0..255 are refused, never cast")


def upscaler_signature(limits: ServingLimits | None = None) -> ModelSignature:
    """Outputs and params only: an input schema would make MLflow's scoring server cast the
    JSON pixels to its dtype before `predict` can check them (see the module docstring)."""
    limits = limits or ServingLimits()
    tile, overlap = limits.default_tiling()
    return ModelSignature(
        inputs=None,
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        params=ParamSchema([
            ParamSpec("tile", "long", tile), ParamSpec("overlap", "long", overlap),
            ParamSpec("encoding", "string", "array"),
        ]),
    )


def log_upscaler(
    generator_path: str | Path,
    name: str = "upscaler",
    input_example: np.ndarray | None = None,
    limits: ServingLimits | None = None,
) -> ModelInfo:
    """Log the pyfunc upscaler (to the active run, if any) as models-from-code, with its
    `limits` (default ServingLimits(); pass ServingLimits.from_config(cfg)) as an artifact
    and in the metadata; returns MLflow's ModelInfo, whose `.model_uri` (`models:/m-...`)
    is what srcore.registry.register takes."""
    generator_path = Path(generator_path)
    if not generator_path.is_file():
        raise FileNotFoundError(f"generator_path {generator_path} is not a .keras file")
    limits = limits or ServingLimits()
    with tempfile.TemporaryDirectory(prefix="srcore-code-") as tmp:
        limits_file = Path(tmp) / f"{LIMITS_ARTIFACT}.json"
        limits_file.write_text(json.dumps(limits.to_dict()))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),
            artifacts={GENERATOR_ARTIFACT: str(generator_path), LIMITS_ARTIFACT: str(limits_file)},
            code_paths=[str(_clean_package_copy(Path(tmp)))],
            metadata={"serving_limits": limits.to_dict(), "input": INPUT_DESCRIPTION},
            signature=upscaler_signature(limits),
            input_example=_example_batch(input_example),
            pip_requirements=SERVING_REQUIREMENTS,
        )


def _clean_package_copy(tmp: Path) -> Path:
    # ship srcore's sources without bytecode caches (they are Python-version specific)
    target = tmp / SRCORE_DIR.name
    shutil.copytree(SRCORE_DIR, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def _example_batch(example: np.ndarray | None) -> np.ndarray:
    """A 1xHxWx3 uint8 example: the signature is a batch, so a single image is wrapped."""
    if example is None:
        h, w = _EXAMPLE_SIZE
        gradient = np.linspace(0, 255, h * w * 3).reshape(h, w, 3)
        example = gradient.astype(np.uint8)
    example = np.asarray(example)
    if example.dtype != np.uint8 or example.shape[-1] != 3 or example.ndim not in (3, 4):
        raise ValueError(f"input_example must be a uint8 HxWx3 image, got {example.dtype} {example.shape}")
    return example if example.ndim == 4 else example[None]
