"""The x4 degradation and the [-1, 1] scaling, shared by training, evaluation and the
bicubic baseline so that all three see exactly the same LR images.

LR = bicubic downsampling of the uint8 HR crop **with antialiasing** (Keys a=-0.5
kernel widened by the scale factor, as PIL and MATLAB's imresize do), rounded back to
uint8 as a saved LR image would be. The seed tutorial's aliased variant
(`antialias=False`: plain bicubic interpolation, the TF1 default) is kept as an option
for comparison; its numbers are not comparable with the literature.
"""

from __future__ import annotations

import tensorflow as tf


def _to_uint8(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def downscale(hr: tf.Tensor, scale: int = 4, antialias: bool = True) -> tf.Tensor:
    """uint8 HR image(s) [..., H, W, 3] -> uint8 LR image(s) [..., H/scale, W/scale, 3]."""
    hr = tf.convert_to_tensor(hr)
    h, w = tf.shape(hr)[-3], tf.shape(hr)[-2]
    lr = tf.image.resize(
        tf.cast(hr, tf.float32), (h // scale, w // scale), method="bicubic", antialias=antialias
    )
    return _to_uint8(lr)


def bicubic_upscale(lr: tf.Tensor, scale: int = 4) -> tf.Tensor:
    """uint8 LR image(s) -> uint8 bicubic upscaling by `scale` (the baseline)."""
    lr = tf.convert_to_tensor(lr)
    h, w = tf.shape(lr)[-3], tf.shape(lr)[-2]
    up = tf.image.resize(tf.cast(lr, tf.float32), (h * scale, w * scale), method="bicubic")
    return _to_uint8(up)


def to_unit(x: tf.Tensor) -> tf.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return tf.cast(x, tf.float32) / 127.5 - 1.0


def from_unit(x: tf.Tensor) -> tf.Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounded (never min-max rescaled)."""
    return _to_uint8((tf.cast(x, tf.float32) + 1.0) * 127.5)
