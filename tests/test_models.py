import keras
import numpy as np
import pytest
import tensorflow as tf

from srcore.models import PixelShuffle, build_discriminator, build_generator, generator_scale, load_generator


@pytest.fixture(scope="module")
def small_gen():
    return build_generator(filters=8, blocks=2, scale=4)


@pytest.mark.parametrize("h,w", [(32, 32), (37, 51), (1, 1), (8, 20)])
def test_generator_is_fully_convolutional(small_gen, h, w):
    out = small_gen(np.random.default_rng(0).uniform(-1, 1, (2, h, w, 3)).astype("float32"))
    assert out.shape == (2, 4 * h, 4 * w, 3)
    assert out.dtype == tf.float32
    assert float(tf.reduce_max(tf.abs(out))) <= 1.0


def test_full_size_generator_matches_seed_architecture():
    g = build_generator()
    assert g.output_shape == (None, None, None, 3)
    assert g(np.zeros((1, 32, 32, 3), "float32")).shape == (1, 128, 128, 3)
    assert sum(1 for l in g.layers if l.name.endswith("_conv1")) == 16
    assert g.get_layer("head_conv").kernel.shape == (9, 9, 3, 64)
    assert g.get_layer("up0_conv").kernel.shape == (3, 3, 64, 256)
    assert not g.get_layer("res0_conv1").use_bias
    assert g.get_layer("head_prelu").alpha.shape == (1, 1, 64)  # shared over H, W
    assert generator_scale(g) == 4


def test_pixel_shuffle_matches_reference_reshape_transpose():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 7, 12)).astype("float32")
    r, c = 2, 3
    # reference: channel index = (dy * r + dx) * c + ch  (TF/DCR depth_to_space order)
    ref = x.reshape(2, 5, 7, r, r, c).transpose(0, 1, 3, 2, 4, 5).reshape(2, 5 * r, 7 * r, c)
    np.testing.assert_array_equal(PixelShuffle(r)(x).numpy(), ref)


def test_keras_round_trip_with_safe_mode(small_gen, tmp_path):
    path = tmp_path / "g.keras"
    small_gen.save(path)
    loaded = load_generator(str(path))
    x = np.random.default_rng(2).uniform(-1, 1, (1, 9, 11, 3)).astype("float32")
    np.testing.assert_allclose(small_gen(x).numpy(), loaded(x).numpy(), atol=1e-6)
    assert generator_scale(loaded) == 4


def test_discriminator_patch_and_flatten_outputs():
    d = build_discriminator(128, 8)
    assert d.output_shape == (None, 8, 8, 1)  # the seed's per-patch logits
    assert build_discriminator(128, 8, flatten=True).output_shape == (None, 1)
    strides = [l.strides[0] for l in d.layers if l.name.startswith("conv")]
    assert strides == [1, 2] * 4


def test_unsupported_scale_is_refused():
    with pytest.raises(ValueError, match="scale"):
        build_generator(scale=3)


def _shuffle_period_energy(generator) -> float:
    """Energy of the output at the pixel-shuffle periods (2 and 4 px) for a constant input:
    what a checkerboard is. The interior is cropped beyond the reach of the zero padding."""
    lr = np.full((1, 96, 96, 3), 0.3, np.float32)
    out = generator(lr).numpy()[0, 160:-160, 160:-160].astype(np.float64)  # 64x64 interior
    spectrum = np.abs(np.fft.fft2(out - out.mean(axis=(0, 1)), axes=(0, 1))) ** 2
    n = out.shape[0]
    periodic = [k * n // 4 for k in range(4)]  # frequencies 0, 1/4, 1/2, 3/4 per pixel
    return float(spectrum[np.ix_(periodic, periodic)].sum())


@pytest.mark.parametrize("init_scale", [0.1, 1.0])
def test_icnr_generator_has_no_checkerboard_at_init(init_scale):
    keras.utils.set_random_seed(0)
    icnr = build_generator(16, 2, 4, init_scale)
    keras.utils.set_random_seed(0)
    plain = build_generator(16, 2, 4, init_scale, icnr=False)
    # the control shows the measure sees checkerboards; ICNR leaves none at all
    assert _shuffle_period_energy(plain) > 1e-6
    assert _shuffle_period_energy(icnr) < 1e-12


def test_icnr_kernel_repeats_over_subpixel_positions():
    from srcore.models import ICNR

    kernel = ICNR("he_normal", 2)((3, 3, 8, 16)).numpy()
    for group in range(1, 4):
        np.testing.assert_array_equal(kernel[..., group * 4:(group + 1) * 4], kernel[..., :4])


def test_bicubic_skip_generator_starts_near_bicubic_and_round_trips(tmp_path):
    from srcore.data import degrade

    keras.utils.set_random_seed(0)
    g = build_generator(16, 2, 4, 0.1, bicubic_skip=True)
    lr = np.random.default_rng(0).integers(0, 256, (1, 12, 12, 3), dtype=np.uint8)
    sr = degrade.from_unit(g(degrade.to_unit(lr))).numpy().astype(int)
    bicubic = degrade.bicubic_upscale(lr, 4).numpy().astype(int)
    assert np.abs(sr - bicubic).mean() < 2.0  # the residual starts close to zero
    path = tmp_path / "g.keras"
    g.save(path)
    again = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_allclose(again(degrade.to_unit(lr)), g(degrade.to_unit(lr)), atol=1e-6)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_bicubic_upsample_equals_tf_image_resize(factor):
    """The skip's fixed convolution is ResizeBicubic's arithmetic (Keys a=-0.5, half-pixel
    centres, outside taps dropped and the rest renormalized) on any size, 1-pixel edges too."""
    from srcore.models import BicubicUpsample

    rng = np.random.default_rng(factor)
    layer = BicubicUpsample(factor)
    for h, w in [(1, 1), (1, 6), (2, 3), (5, 2), (12, 12), (37, 51)]:
        x = rng.uniform(-1, 1, (2, h, w, 3)).astype("float32")
        want = tf.image.resize(x, (h * factor, w * factor), method="bicubic").numpy()
        np.testing.assert_allclose(layer(x).numpy(), want, atol=2e-6, err_msg=f"{h}x{w} x{factor}")


def test_bicubic_upsample_compiles_with_xla_and_runs_under_bf16():
    from srcore.models import BicubicUpsample

    x = np.random.default_rng(3).uniform(-1, 1, (2, 9, 13, 3)).astype("float32")
    want = tf.image.resize(x, (36, 52), method="bicubic").numpy()
    xla = tf.function(BicubicUpsample(4).__call__, jit_compile=True)  # XLA has no ResizeBicubic on CPU
    np.testing.assert_allclose(xla(x).numpy(), want, atol=2e-6)
    bf16 = BicubicUpsample(4, dtype="mixed_bfloat16")(x)
    assert bf16.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(bf16, tf.float32).numpy(), want, atol=1e-2)  # bf16 has 8 bits


def test_generator_built_and_saved_under_bf16_loads_as_float32(tmp_path):
    """A generator trained under mixed_bfloat16 keeps that policy per layer in its .keras
    config; load_generator gives the same weights computing in float32 (inference equal
    on every path), and building it left the process-wide policy float32."""
    from srcore.models import as_float32, dtype_policy

    with dtype_policy("mixed_bfloat16"):
        g = build_generator(8, 1, 4, 0.1, bicubic_skip=True)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert build_generator(8, 1).get_layer("res0_conv1").compute_dtype == "float32"
    assert g.get_layer("res0_conv1").compute_dtype == "bfloat16"
    path = tmp_path / "g.keras"
    g.save(path)
    assert keras.saving.load_model(path, compile=False).get_layer("res0_conv1").compute_dtype == "bfloat16"
    loaded = load_generator(str(path))
    assert {l.dtype_policy.name for l in loaded.layers} == {"float32"}
    assert generator_scale(loaded) == 4
    x = np.random.default_rng(4).uniform(-1, 1, (1, 9, 11, 3)).astype("float32")
    np.testing.assert_array_equal(loaded(x).numpy(), as_float32(g)(x).numpy())
    for a, b in zip(loaded.get_weights(), g.get_weights()):
        np.testing.assert_array_equal(a, b)
