"""The generator as an MLflow pyfunc model: uint8 images in, uint8 x4 images out.

Inputs `SRUpscaler.predict` accepts (called directly, e.g. via `unwrap_python_model()`;
the loaded pyfunc model first enforces the signature, so there only batches and ragged
object arrays get through):
- a single HxWx3 uint8 array -> one HxWx3 output;
- a batch NxHxWx3 -> a batch N x sH x sW x 3;
- images of different sizes: a list of arrays, or a 1-D object array of arrays (the
  only ragged form MLflow's schema check lets through; see `image_batch`) -> a list;
- a one-column pandas DataFrame of images, or a one-key dict (a named tensor).
Nested Python lists are accepted wherever arrays are.

Over REST (`mlflow models serve`) the tensor signature (uint8, (-1, -1, -1, 3)) is
enforced before `predict` runs: `{"inputs": [image]}` (a batch, even of one image) arrives
as a uint8 NxHxWx3 ndarray and is answered as `{"predictions": [sr_image]}`. A bare
`{"inputs": image}` (3-D) and ragged batches are rejected by MLflow with HTTP 400, so REST
clients send one batch per image size. Optional params: `{"params": {"tile": 64}}`.

Every image goes through srcore.upscale's tiled inference, so large inputs stay bounded.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

log = logging.getLogger(__name__)

SRCORE_DIR = Path(__file__).resolve().parent
GENERATOR_ARTIFACT = "generator"
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


class SRUpscaler(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper around a `.keras` generator (artifact `generator`)."""

    def load_context(self, context) -> None:
        from srcore.models import load_generator

        self.generator = load_generator(context.artifacts[GENERATOR_ARTIFACT])

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        from srcore.upscale import DEFAULT_OVERLAP, DEFAULT_TILE, upscale_array

        params = params or {}
        tile = int(params.get("tile", DEFAULT_TILE))
        overlap = int(params.get("overlap", DEFAULT_OVERLAP))
        images, shape = _as_images(model_input)
        log.debug("predict: %s input, %d image(s)", shape, len(images))
        outputs = [
            upscale_array(self.generator, img, tile=tile, overlap=overlap, name=f"input image {i}")
            for i, img in enumerate(images)
        ]
        if shape == "single":
            return outputs[0]
        if shape == "batch":
            return np.stack(outputs)
        return outputs


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
        return [_uint8(cell, f"row {i}") for i, cell in enumerate(model_input.iloc[:, 0])], "list"
    if isinstance(model_input, (list, tuple)) and all(isinstance(x, np.ndarray) for x in model_input):
        return [_uint8(img, f"input image {i}") for i, img in enumerate(model_input)], "list"
    dense = _dense_or_none(model_input)
    if dense is None:  # ragged nesting: images of different sizes
        return [_uint8(img, f"input image {i}") for i, img in enumerate(model_input)], "list"
    if dense.ndim == 4:
        return [_uint8(img, f"input image {i}") for i, img in enumerate(dense)], "batch"
    if dense.ndim in (2, 3):
        return [_uint8(dense, "input image")], "single"
    raise ValueError(f"expected an HxWx3 image or an NxHxWx3 batch, got an array of shape {dense.shape}")


def _dense_or_none(model_input: Any) -> np.ndarray | None:
    if isinstance(model_input, np.ndarray) and model_input.dtype != object:
        return model_input
    try:
        dense = np.asarray(model_input)
    except ValueError:  # numpy >= 1.24 refuses ragged nesting
        return None
    return None if dense.dtype == object else dense


def _uint8(img: Any, what: str) -> np.ndarray:
    """uint8 as is; other integer arrays (JSON without a schema gives int64) if in 0..255."""
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.integer) and arr.size and 0 <= arr.min() and arr.max() <= 255:
        return arr.astype(np.uint8)
    raise ValueError(f"{what}: expected uint8 pixel values 0..255, got dtype {arr.dtype}")


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


def upscaler_signature() -> ModelSignature:
    image_batch = TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))
    return ModelSignature(
        inputs=Schema([image_batch]),
        outputs=Schema([image_batch]),
        params=ParamSchema([_param("tile"), _param("overlap")]),
    )


def _param(name: str) -> ParamSpec:
    from srcore import upscale

    default = {"tile": upscale.DEFAULT_TILE, "overlap": upscale.DEFAULT_OVERLAP}[name]
    return ParamSpec(name, "long", default)


def log_upscaler(
    generator_path: str | Path,
    name: str = "upscaler",
    input_example: np.ndarray | None = None,
) -> ModelInfo:
    """Log the pyfunc upscaler (to the active run, if any); returns MLflow's ModelInfo,
    whose `.model_uri` (`models:/m-...`) is what srcore.registry.register takes."""
    generator_path = Path(generator_path)
    if not generator_path.is_file():
        raise FileNotFoundError(f"generator_path {generator_path} is not a .keras file")
    with tempfile.TemporaryDirectory(prefix="srcore-code-") as tmp:
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=SRUpscaler(),
            artifacts={GENERATOR_ARTIFACT: str(generator_path)},
            code_paths=[str(_clean_package_copy(Path(tmp)))],
            signature=upscaler_signature(),
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
