"""SRGAN generator and discriminator (Keras 3 functional models).

Both serialize to `.keras` and load with `safe_mode=True`: no Lambda layers; the one
custom layer (PixelShuffle) is registered.
"""

from __future__ import annotations

import math

import keras
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


@keras.saving.register_keras_serializable(package="srcore")
class BicubicUpsample(layers.Layer):
    """Bicubic upscaling by `factor` of [-1, 1] images, any size (the global skip of
    `bicubic_skip`): the network then learns only the residual over bicubic."""

    def __init__(self, factor: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, x):
        size = tf.shape(x)[1:3] * self.factor
        return tf.cast(tf.image.resize(tf.cast(x, tf.float32), size, method="bicubic"), self.compute_dtype)

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


def load_generator(path: str) -> keras.Model:
    """Load a `.keras` generator with safe_mode (no arbitrary code)."""
    return keras.saving.load_model(path, safe_mode=True, compile=False)
