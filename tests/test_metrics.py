"""PSNR/SSIM agree with scikit-image, Y is BT.601, crop_border crops, and the bicubic
baseline equals an independent float64 bicubic implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from srcore import metrics as M

skm = pytest.importorskip("skimage.metrics")

# scikit-image settings that define the SSIM of the SR literature (Wang et al. 2004)
SKIMAGE_SSIM = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)


def _skimage_scores(sr: np.ndarray, hr: np.ndarray, border: int) -> dict[str, float]:
    crop = (slice(border, -border or None), slice(border, -border or None))
    sr, hr = sr[crop].astype(np.float64), hr[crop].astype(np.float64)
    y_sr, y_hr = M.rgb_to_y(sr), M.rgb_to_y(hr)
    return {
        "psnr_rgb": skm.peak_signal_noise_ratio(hr, sr, data_range=255),
        "ssim_rgb": skm.structural_similarity(sr, hr, channel_axis=-1, **SKIMAGE_SSIM),
        "psnr_y": skm.peak_signal_noise_ratio(y_hr, y_sr, data_range=255),
        "ssim_y": skm.structural_similarity(y_sr, y_hr, **SKIMAGE_SSIM),
    }


def _assert_matches_skimage(sr: np.ndarray, hr: np.ndarray, border: int) -> None:
    ours = M.batch_metrics(sr, hr, border)
    for i in range(len(sr)):
        ref = _skimage_scores(sr[i], hr[i], border)
        for key in ("psnr_rgb", "psnr_y"):
            assert abs(ours[key][i] - ref[key]) < 0.01, (key, i, ours[key][i], ref[key])
        for key in ("ssim_rgb", "ssim_y"):
            assert abs(ours[key][i] - ref[key]) < 0.001, (key, i, ours[key][i], ref[key])
    # the single-image functions agree with the batch
    assert M.psnr(sr[0], hr[0], border) == pytest.approx(ours["psnr_rgb"][0], abs=1e-9)
    assert M.ssim(sr[0], hr[0], border, test_y_channel=True) == pytest.approx(ours["ssim_y"][0], abs=1e-9)


def _synthetic_pairs(n: int = 4, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    smooth = np.stack([128 + 100 * np.sin(6 * xx + c) * np.cos(4 * yy) for c in range(3)], -1)
    hr = np.clip(smooth[None] + rng.normal(0, 20, (n, size, size, 3)), 0, 255).astype(np.uint8)
    sr = np.clip(hr + rng.normal(0, 12, hr.shape), 0, 255).astype(np.uint8)
    return sr, hr


@pytest.mark.parametrize("border", [0, 4])
def test_matches_skimage_on_synthetic_images(border):
    _assert_matches_skimage(*_synthetic_pairs(), border)


@pytest.mark.celeba
def test_matches_skimage_on_real_bicubic_faces(celeba_dir):
    from PIL import Image

    from srcore.data import degrade

    files = sorted(celeba_dir.glob("*.jpg"))[:6]
    hr = np.stack([np.asarray(Image.open(f).convert("RGB").crop((25, 45, 153, 173))) for f in files])
    sr = degrade.bicubic_upscale(degrade.downscale(hr, 4, True), 4).numpy()
    _assert_matches_skimage(sr, hr, border=4)


def test_y_channel_is_bt601_on_known_colours():
    colours = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 100, 200]], np.uint8)
    expected = [16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255 for r, g, b in colours.astype(float)]
    assert M.rgb_to_y(colours) == pytest.approx(expected, abs=1e-9)
    assert M.rgb_to_y(colours)[:2] == pytest.approx([16.0, 235.0])  # video range of BT.601


def test_crop_border_ignores_differences_in_the_border():
    rng = np.random.default_rng(1)
    hr = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    sr = hr.copy()
    sr[:, :4] = 255 - sr[:, :4]  # change only the 4-pixel border rows/columns
    sr[:, :, -4:] = 0
    cropped = M.batch_metrics(sr, hr, crop_border=4)
    assert np.all(np.isinf(cropped["psnr_rgb"])) and np.all(np.isinf(cropped["psnr_y"]))
    assert cropped["ssim_rgb"] == pytest.approx([1.0, 1.0]) and cropped["ssim_y"] == pytest.approx([1.0, 1.0])
    full = M.batch_metrics(sr, hr, crop_border=0)
    assert np.all(np.isfinite(full["psnr_rgb"])) and np.all(full["ssim_rgb"] < 0.99)
    # and a border of 3 still sees the changed 4th row
    assert np.all(np.isfinite(M.batch_metrics(sr, hr, crop_border=3)["psnr_rgb"]))


def test_psnr_formula_on_a_constant_error():
    hr = np.full((16, 16, 3), 100, np.uint8)
    sr = hr + np.uint8(5)  # MSE 25
    assert M.psnr(sr, hr, crop_border=0) == pytest.approx(10 * math.log10(255**2 / 25))


def test_clear_errors():
    a = np.zeros((1, 16, 16, 3), np.uint8)
    with pytest.raises(TypeError, match="uint8"):
        M.batch_metrics(a.astype(np.float32), a)
    with pytest.raises(ValueError, match="shape"):
        M.batch_metrics(a, np.zeros((1, 16, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="too small"):
        M.batch_metrics(a, a, crop_border=8)
    with pytest.raises(ValueError, match="at least 11"):
        M.ssim(a[0], a[0], crop_border=3)


def test_metric_labels_and_how_state_the_conventions():
    assert M.metric_label("psnr", "y", 4) == "psnr_y_b4"
    assert M.metric_label("ssim", "rgb", 0) == "ssim_rgb_b0"
    how = M.how(4)
    assert how["crop_border"] == 4 and how["data_range"] == 255
    assert "BT.601" in how["y"] and "uint8" in how["rounding"]


# ---- the bicubic baseline against independent implementations ------------------------


def _keys_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = (a + 2) * x**3 - (a + 3) * x**2 + 1
    far = a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _resize_matrix(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """Half-pixel-centred Keys bicubic (a=-0.5) as a matrix; the kernel is widened by the
    scale when antialiasing a downscale; taps outside the image are dropped and the rest
    renormalised (what TF, PIL and MATLAB do at the edges)."""
    scale = n_in / n_out
    width = scale if (antialias and scale > 1) else 1.0
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale - 0.5
        taps = np.arange(math.floor(center - 2 * width), math.ceil(center + 2 * width) + 1)
        taps = taps[(taps >= 0) & (taps < n_in)]
        w = _keys_cubic((taps - center) / width)
        m[i, taps] = w / w.sum()
    return m


def _reference_resize(img: np.ndarray, size: int, antialias: bool) -> np.ndarray:
    rows = _resize_matrix(img.shape[0], size, antialias)
    cols = _resize_matrix(img.shape[1], size, antialias)
    out = np.einsum("ih,hwc,jw->ijc", rows, img.astype(np.float64), cols)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _faces_or_synthetic(request) -> np.ndarray:
    try:
        celeba = request.getfixturevalue("celeba_dir")
    except pytest.skip.Exception:
        return _synthetic_pairs(4, 128)[1]
    from PIL import Image

    files = sorted(celeba.glob("*.jpg"))[-8:]
    return np.stack([np.asarray(Image.open(f).convert("RGB").crop((25, 45, 153, 173))) for f in files])


def test_bicubic_baseline_equals_independent_float_implementation(request):
    import tensorflow as tf

    from srcore.data import degrade

    hr = _faces_or_synthetic(request)
    lr = degrade.downscale(hr, 4, antialias=True).numpy()
    up = degrade.bicubic_upscale(lr, 4).numpy()
    # TF called directly
    direct = tf.image.resize(tf.cast(hr, tf.float32), (32, 32), method="bicubic", antialias=True)
    assert np.array_equal(lr, np.clip(np.round(direct.numpy()), 0, 255).astype(np.uint8))
    # float64 Keys-cubic reference: LR identical; upscale off by at most 1 level on a
    # handful of pixels (TF tabulates the cubic weights in 1/1024 steps)
    assert np.array_equal(lr, np.stack([_reference_resize(h, 32, True) for h in hr]))
    ref_up = np.stack([_reference_resize(x, 128, False) for x in lr])
    diff = np.abs(up.astype(int) - ref_up)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_bicubic_baseline_close_to_pil(request):
    """PIL resizes in two passes with a uint8 intermediate, so pixels differ by a few
    levels at strong edges (measured on faces: mean |diff| 0.28, max 9); the scores
    differ by about 0.003 dB PSNR and 0.0003 SSIM (at most 0.01 dB / 0.0007 per image)."""
    from PIL import Image

    from srcore.data import degrade

    hr = _faces_or_synthetic(request)
    ours = degrade.bicubic_upscale(degrade.downscale(hr, 4, True), 4).numpy()
    pil = np.stack([
        np.asarray(Image.fromarray(h).resize((32, 32), Image.BICUBIC).resize((128, 128), Image.BICUBIC)) for h in hr
    ])
    a, b = M.batch_metrics(ours, hr, 4), M.batch_metrics(pil, hr, 4)
    assert np.abs(a["psnr_rgb"] - b["psnr_rgb"]).max() < 0.03
    assert np.abs(a["ssim_rgb"] - b["ssim_rgb"]).max() < 0.002
    assert np.abs(ours.astype(int) - pil).mean() < 0.5
