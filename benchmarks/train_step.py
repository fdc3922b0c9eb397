"""Train-step throughput: the project's compiled SRGAN step vs a seed-faithful eager step.

Both run the full-size models (G: 16 blocks x 64, D: 64..512, VGG19 to block5_conv4
with random weights so nothing is downloaded) at batch 8 in the same process, one
after the other. The seed-faithful step is what the tutorial does: plain
`GradientTape`, float32, no `tf.function`, the loss read back after every step.

By default (under 10 minutes on 2 cores) it measures the eager baseline, the graph step
in float32, the graph step with the `precision: auto` policy this machine resolves to,
and the float32 graph step with a host sync after every step (what the trainer did
before it kept its loss sums on the device). It prints the CPU model and the flags
`auto` decides on. XLA and explicit bf16 variants are behind flags.

    python benchmarks/train_step.py [--batch 8] [--steps 6] [--xla] [--bf16]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from srcore.config import build_config  # noqa: E402
from srcore.losses import RANDOM_WEIGHTS, build_vgg_extractor  # noqa: E402
from srcore.models import build_discriminator, build_generator  # noqa: E402
from srcore.train import Trainer  # noqa: E402

CONFIGS = {
    "graph": dict(precision="float32", jit_compile=False),
    "graph-auto": dict(precision="auto", jit_compile=False),
    "graph-bf16": dict(precision="mixed_bfloat16", jit_compile=False),
    "xla": dict(precision="float32", jit_compile=True),
    "xla-auto": dict(precision="auto", jit_compile=True),
}


def forward_flops(model: keras.Model, input_hw: tuple[int, int]) -> float:
    """2 x multiply-adds of every Conv2D/Dense layer for one image of size input_hw.

    Walks the layers in order, tracking the spatial size through strides, pooling and
    pixel shuffles ('same' padding everywhere in these models)."""
    from srcore.models import PixelShuffle

    h, w = input_hw
    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            h, w = -(-h // layer.strides[0]), -(-w // layer.strides[1])
            total += 2.0 * h * w * np.prod(layer.kernel.shape)
        elif isinstance(layer, keras.layers.MaxPooling2D):
            h, w = h // layer.strides[0], w // layer.strides[1]
        elif isinstance(layer, PixelShuffle):
            h, w = h * layer.factor, w * layer.factor
        elif isinstance(layer, keras.layers.Flatten):
            h = w = 1
        elif isinstance(layer, keras.layers.Dense):
            total += 2.0 * h * w * np.prod(layer.kernel.shape)
    return total


def analytic_gflop_per_image(g, d, vgg) -> float:
    """Training FLOPs ~ 3x forward for G and D (forward + two backward matmuls);
    D sees real and fake images; VGG runs forward on HR and forward+input-grad on SR."""
    g_f = forward_flops(g, (32, 32))
    d_f = forward_flops(d, (128, 128))
    v_f = forward_flops(vgg, (128, 128))
    return (3 * g_f + 2 * 3 * d_f + 3 * v_f) / 1e9


def seed_eager_step_factory(batch: int):
    keras.mixed_precision.set_global_policy("float32")
    g = build_generator(64, 16)
    d = build_discriminator(128, 64)
    vgg = build_vgg_extractor(RANDOM_WEIGHTS)
    g_opt = keras.optimizers.Adam(1e-4)
    d_opt = keras.optimizers.Adam(1e-4)
    bce = keras.losses.BinaryCrossentropy(from_logits=True)

    def step(lr, hr):
        with tf.GradientTape() as gt, tf.GradientTape() as dt:
            sr = g(lr, training=True)
            real, fake = d(hr, training=True), d(sr, training=True)
            content = tf.reduce_mean(tf.square(vgg(hr) - vgg(sr)))
            g_loss = content + 1e-3 * bce(tf.ones_like(fake), fake)
            d_loss = bce(tf.ones_like(real), real) + bce(tf.zeros_like(fake), fake)
        g_opt.apply_gradients(zip(gt.gradient(g_loss, g.trainable_variables), g.trainable_variables))
        d_opt.apply_gradients(zip(dt.gradient(d_loss, d.trainable_variables), d.trainable_variables))
        return g_loss

    return step, (g, d, vgg)


def project_step_factory(name: str, batch: int):
    """(step, read): the trainer's GAN step and the host read of its device-side loss sums."""
    cfg = build_config("seed", overrides=dict(batch_size=batch, vgg_weights=RANDOM_WEIGHTS, epochs=1,
                                              content_loss="vgg19_54", **CONFIGS[name]))
    trainer = Trainer(cfg, None, tempfile.mkdtemp(prefix="bench-train-"), steps_per_epoch=1)
    return trainer.gan_step, trainer.read_sums, trainer.cfg.precision


def images_per_sec(step, batch: int, steps: int, warmup: int = 2, read=None) -> float:
    """Host sync after every step (eager, or `read=None`), else once at the end via `read`."""
    rng = np.random.default_rng(0)
    lr = tf.constant(rng.uniform(-1, 1, (batch, 32, 32, 3)).astype(np.float32))
    hr = tf.constant(rng.uniform(-1, 1, (batch, 128, 128, 3)).astype(np.float32))
    for _ in range(warmup):
        _block(step(lr, hr))
    t0 = time.perf_counter()
    for _ in range(steps):
        result = step(lr, hr)
        if read is None:
            _block(result)
    if read is not None:
        read()
    return steps * batch / (time.perf_counter() - t0)


def _block(result) -> None:
    tf.nest.map_structure(lambda t: t.numpy(), result)


def main() -> None:
    from srcore.precision import NATIVE_BF16_CPU_FLAGS, cpu_flags, cpu_model, resolve_precision

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--xla", action="store_true", help="also XLA-compiled steps (float32 and auto)")
    ap.add_argument("--bf16", action="store_true", help="also the graph step in mixed_bfloat16, whatever auto says")
    args = ap.parse_args()

    flags = cpu_flags()
    auto, reason = resolve_precision("auto")
    shown = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; flags: {' '.join(shown) or 'n/a'}")
    print(f"native bf16 flags ({', '.join(NATIVE_BF16_CPU_FLAGS)}): "
          f"{', '.join(sorted(set(NATIVE_BF16_CPU_FLAGS) & flags)) or 'none'}; precision auto -> {auto} ({reason})")

    names = ["graph", "graph-auto"] + (["graph-bf16"] if args.bf16 else []) + (["xla", "xla-auto"] if args.xla else [])
    seed_step, (g, d, vgg) = seed_eager_step_factory(args.batch)
    gflop = analytic_gflop_per_image(g, d, vgg)
    base = images_per_sec(seed_step, args.batch, args.steps)
    rows = [("seed-faithful eager fp32", base)]
    for name in names:
        step, read, precision = project_step_factory(name, args.batch)
        rows.append((f"project {name} ({precision})", images_per_sec(step, args.batch, args.steps, read=read)))
        if name == "graph":
            # the same compiled step, but the losses read back to the host after every step
            rows.append(("project graph, host sync every step", images_per_sec(step, args.batch, args.steps)))
    keras.mixed_precision.set_global_policy("float32")

    print(f"\nSRGAN train step, batch {args.batch}, {args.steps} timed steps, {os.cpu_count()} CPU cores")
    print(f"analytic training cost: {gflop:.2f} GFLOP per image")
    print(f"{'configuration':44s} {'images/s':>9s} {'GFLOP/s':>9s} {'vs eager':>9s}")
    for name, ips in rows:
        print(f"{name:44s} {ips:9.2f} {ips * gflop:9.1f} {ips / base:8.2f}x")
    best = max(rows[1:], key=lambda r: r[1])
    auto_row = next(r for r in rows if r[0].startswith("project graph-auto"))
    print(f"auto: {auto_row[1] / base:.2f}x the eager seed-faithful step; fastest: {best[0]} at {best[1] / base:.2f}x")


if __name__ == "__main__":
    main()
