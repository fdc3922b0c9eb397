"""SRGAN generator and discriminator (Keras 3 functional models).

Both serialize to `.keras` and load with `safe_mode=True`: no Lambda layers; the one
custom layer (PixelShuffle) is registered.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf
from keras import layers


@keras.saving.register_keras_serializable(package="srcore")
class PixelShuffle(layers.Layer):
    """Sub-pixel convolution rearrangement: (H, W, C*r^2) -> (H*r, W*r, C)."""

    def __init__(self, factor: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, x):
        return tf.nn.depth_to_space(x, self.factor)

    def compute_output_shape(self, shape):
        b, h, w, c = shape
        r = self.factor
        return (b, None if h is None else h * r, None if w is None else w * r, c // (r * r))

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="srcore")
class ICNR(keras.initializers.Initializer):
    """ICNR (Aitken et al. 2017, "Checkerboard artifact free sub-pixel convolution"):
    initialise a convolution followed by PixelShuffle(r) so that all r*r sub-pixel
    positions of an output channel start with the same kernel. The shuffle then starts
    as a nearest-neighbour upsampling of a normal convolution: no checkerboard at
    initialisation, so training does not have to undo one.

    tf.nn.depth_to_space (NHWC) sends input channel d to output channel d % C, so the
    base kernel of C = filters / r^2 channels is tiled r^2 times along the last axis.
    """

    def __init__(self, base: keras.initializers.Initializer | str | dict = "glorot_uniform", factor: int = 2):
        self.base = keras.initializers.get(base)
        self.factor = int(factor)

    def __call__(self, shape, dtype=None):
        *kernel, channels = shape
        groups = self.factor * self.factor
        if channels % groups:
            raise ValueError(f"ICNR needs a multiple of {groups} output channels, got {channels}")
        base = self.base((*kernel, channels // groups), dtype=dtype)
        return tf.tile(base, [1] * len(kernel) + [groups])

    def get_config(self):
        return {"base": keras.initializers.serialize(self.base), "factor": self.factor}


TAPS = np.arange(-2, 3)  # every output position of any integer factor reads input i-2..i+2


def _keys_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (a = -0.5, as TF's ResizeBicubic); 0 from |t| >= 2."""
    t = np.abs(t)
    near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    far = ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
    return np.where(t <= 1.0, near, np.where(t < 2.0, far, 0.0))


def bicubic_phases(factor: int) -> np.ndarray:
    """(5, factor) weights: output factor*i + p is sum_d w[d, p] * x[i + d - 2]. With
    half-pixel centres output factor*i + p sits at input i + (p + 0.5)/factor - 0.5."""
    centres = (np.arange(factor) + 0.5) / factor - 0.5
    return _keys_cubic(centres[None, :] - TAPS[:, None])


def _upscale_axis(x: tf.Tensor, axis: int, factor: int) -> tf.Tensor:
    """Bicubic upscaling of axis 1 (rows) or 2 (columns) as one depthwise convolution
    (a channel per output phase) and an interleave of the phases."""
    phases = bicubic_phases(factor)
    channels = x.shape[-1]
    kernel = phases[:, None, None, :] if axis == 1 else phases[None, :, None, :]
    kernel = tf.constant(np.tile(kernel, (1, 1, channels, 1)), tf.float32)
    # zero padding: taps outside the image contribute nothing ...
    y = tf.nn.depthwise_conv2d(x, kernel, strides=[1, 1, 1, 1], padding="SAME")
    # ... and the taps inside are renormalized to sum 1 (TF's convention; not an edge clamp)
    n = tf.shape(x)[axis]
    inside = tf.cast(tf.range(n)[:, None] + TAPS[None, :] >= 0, tf.float32) * tf.cast(
        tf.range(n)[:, None] + TAPS[None, :] < n, tf.float32)
    norm = tf.reshape(tf.matmul(inside, tf.constant(phases, tf.float32)), [-1])  # (n * factor,) in output order
    s = tf.shape(x)
    y = tf.reshape(y, [s[0], s[1], s[2], channels, factor])
    if axis == 1:
        y = tf.reshape(tf.transpose(y, [0, 1, 4, 2, 3]), [s[0], s[1] * factor, s[2], channels])
        return y / tf.reshape(norm, [1, -1, 1, 1])
    y = tf.reshape(tf.transpose(y, [0, 1, 2, 4, 3]), [s[0], s[1], s[2] * factor, channels])
    return y / tf.reshape(norm, [1, 1, -1, 1])


@keras.saving.register_keras_serializable(package="srcore")
class BicubicUpsample(layers.Layer):
    """Bicubic upscaling by `factor` of [-1, 1] images, any size (the global skip of
    `bicubic_skip`): the network then learns only the residual over bicubic.

    Equal (within float32 rounding) to tf.image.resize(method="bicubic"), but as a fixed
    convolution: XLA has no ResizeBicubic kernel on CPU, so jit_compile could not
    compile a generator that used it."""

    def __init__(self, factor: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, x):
        y = tf.cast(x, tf.float32)
        y = _upscale_axis(y, 1, self.factor)  # rows first, then columns, as ResizeBicubic
        y = _upscale_axis(y, 2, self.factor)
        return tf.cast(y, self.compute_dtype)

    def compute_output_shape(self, shape):
        b, h, w, c = shape
        return (b, None if h is None else h * self.factor, None if w is None else w * self.factor, c)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def _prelu(name: str) -> layers.Layer:
    # alpha shared over height and width: one slope per channel, any input size works
    return layers.PReLU(shared_axes=[1, 2], name=name)


def _init(init_scale: float):
    """He-normal scaled by `init_scale` (BasicSR's MSRResNet uses 0.1): a deep residual
    stack without batch norm then starts close to identity and trains much faster.
    0 keeps Keras' default (Glorot uniform)."""
    if init_scale <= 0:
        return "glorot_uniform"
    return keras.initializers.VarianceScaling(scale=2.0 * init_scale**2, mode="fan_in", distribution="untruncated_normal")


def build_generator(
    filters: int = 64, blocks: int = 16, scale: int = 4, init_scale: float = 0.1, name: str = "generator",
    icnr: bool = True, bicubic_skip: bool = False,
) -> keras.Model:
    """SRResNet generator as in the seed: fully convolutional, [-1, 1] in and out.
    The sub-pixel convolutions start from ICNR (no checkerboard at initialisation).
    `bicubic_skip` adds the bicubic upscaling of the input to the output (global residual
    learning, as in VDSR): training starts from bicubic quality instead of from noise,
    which matters on a CPU budget; the output is then clipped to [-1, 1], not tanh'ed."""
    if scale not in (2, 4, 8):
        raise ValueError(f"scale must be 2, 4 or 8, got {scale}")
    init = _init(init_scale)

    def conv(n, k, name, bias=True, initializer=init):
        return layers.Conv2D(n, k, padding="same", use_bias=bias, kernel_initializer=initializer, name=name)

    lr = keras.Input(shape=(None, None, 3), name="lr")
    x = conv(filters, 9, "head_conv")(lr)
    skip = x = _prelu("head_prelu")(x)
    for i in range(blocks):
        y = conv(filters, 3, f"res{i}_conv1", bias=False)(x)
        y = _prelu(f"res{i}_prelu")(y)
        y = conv(filters, 3, f"res{i}_conv2", bias=False)(y)
        x = layers.Add(name=f"res{i}_add")([x, y])
    x = conv(filters, 3, "body_conv")(x)
    x = layers.Add(name="global_skip")([x, skip])
    for i in range(int(math.log2(scale))):
        x = conv(filters * 4, 3, f"up{i}_conv", initializer=ICNR(init, 2) if icnr else init)(x)
        x = PixelShuffle(2, name=f"up{i}_shuffle")(x)
        x = _prelu(f"up{i}_prelu")(x)
    x = conv(3, 9, "tail_conv")(x)
    # float32 output even under a mixed policy: losses and metrics stay exact
    if bicubic_skip:
        x = layers.Add(dtype="float32", name="bicubic_add")([x, BicubicUpsample(scale, dtype="float32", name="bicubic")(lr)])
        sr = layers.Activation("hard_tanh", dtype="float32", name="sr")(x)  # clip to [-1, 1]
    else:
        sr = layers.Activation("tanh", dtype="float32", name="sr")(x)
    model = keras.Model(lr, sr, name=name)
    model.scale = scale
    return model


def build_discriminator(hr_size: int = 128, filters: int = 64, flatten: bool = False, name: str = "discriminator") -> keras.Model:
    """The seed's discriminator: 8 convs with leaky ReLU, Dense(1024), Dense(1).

    Without `flatten` (the seed's behaviour) the Dense layers act on every spatial
    position, so the output is a map of logits, one per (hr/16)^2 patch: in effect a
    patch discriminator. `flatten=True` is the SRGAN paper's single logit per image.
    """
    hr = keras.Input(shape=(hr_size, hr_size, 3), name="hr")
    x = hr
    widths = [filters, filters, filters * 2, filters * 2, filters * 4, filters * 4, filters * 8, filters * 8]
    for i, (f, s) in enumerate(zip(widths, [1, 2] * 4)):
        x = layers.Conv2D(f, 3, strides=s, padding="same", name=f"conv{i}")(x)
        x = layers.LeakyReLU(0.2, name=f"lrelu{i}")(x)
    if flatten:
        x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(1024, name="fc")(x)
    x = layers.LeakyReLU(0.2, name="fc_lrelu")(x)
    logits = layers.Dense(1, dtype="float32", name="logits")(x)
    return keras.Model(hr, logits, name=name)


def generator_scale(model: keras.Model) -> int:
    """The model's upscaling factor, read from its PixelShuffle layers (or its
    `scale_factor`: a generator loaded from the serving SavedModel, srcore/server.py)."""
    if getattr(model, "scale_factor", None):
        return int(model.scale_factor)
    factor = 1
    for layer in model.layers:
        if isinstance(layer, PixelShuffle):
            factor *= layer.factor
    return factor


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build layers under the Keras dtype policy `name`, then restore the process-wide one:
    a layer keeps the policy it was constructed with, so the trainer's models compute in
    its precision while every model built later in the process (evaluate, export, upscale
    after training in one process; the next sweep trial) is float32 again."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _policy(layer: keras.layers.Layer) -> str:
    return getattr(layer.dtype_policy, "name", str(layer.dtype_policy))


def as_float32(model: keras.Model) -> keras.Model:
    """`model` itself when every layer computes in float32, else a float32 copy with the
    same weights (variables are float32 under mixed policies). A generator trained and
    saved under mixed_bfloat16 keeps that policy per layer in its .keras config; inference
    (evaluate, upscale, export, serving) must not round activations to 8 bits."""
    if all(_policy(layer) == "float32" for layer in model.layers):
        return model

    def float32_layer(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    copy = keras.models.clone_model(model, clone_function=float32_layer)
    copy.set_weights(model.get_weights())
    if hasattr(model, "scale"):
        copy.scale = model.scale
    return copy


def load_generator(path: str) -> keras.Model:
    """Load a `.keras` generator with safe_mode (no arbitrary code), computing in float32
    whatever precision it was trained in."""
    return as_float32(keras.saving.load_model(path, safe_mode=True, compile=False))
