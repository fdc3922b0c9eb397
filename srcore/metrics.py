"""PSNR and SSIM the way the SR literature computes them (BasicSR conventions).

Every number this module produces is defined by the same few choices, spelled out by
`how()` so that metrics.json and MLflow tags can state them:

- inputs are uint8 images (model outputs are clipped and rounded to uint8 first, as a
  saved image would be); arithmetic is float64 with data range 255;
- `crop_border` pixels are removed on every side before anything is measured
  (the SR literature uses the scale factor, 4 for x4);
- Y channel: BT.601 luma of the 0..255 RGB values,
  Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 (MATLAB `rgb2ycbcr`, BasicSR),
  kept as float (not re-rounded, as in BasicSR);
- PSNR = 10 log10(255^2 / MSE) per image over all pixels and channels;
- SSIM: Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, population (co)variances,
  statistics over the valid region of the window, mean per channel, then mean over
  channels. This equals scikit-image's `structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1)` and
  BasicSR's `calculate_ssim`;
- a data set's score is the mean of the per-image scores.

Everything is vectorised over a batch in numpy (float64): SSIM's Gaussian filtering is
two matrix products with a banded matrix, about 10 ms per 128x128 image on one core.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

DATA_RANGE = 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# BT.601 luma weights for R, G, B on 0..255 input (MATLAB rgb2ycbcr, BasicSR)
Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
Y_OFFSET = 16.0
Y_FORMULA = "BT.601: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 on 0..255 RGB (MATLAB rgb2ycbcr / BasicSR), float"


def how(crop_border: int) -> dict[str, Any]:
    """The definition of every PSNR/SSIM number, for metrics.json and MLflow tags."""
    return {
        "crop_border": int(crop_border),
        "data_range": int(DATA_RANGE),
        "rounding": "uint8 (outputs clipped to [0, 255] and rounded before measuring; Y not re-rounded)",
        "y": Y_FORMULA,
        "psnr": "10*log10(255^2/MSE) per image over all pixels and channels; mean over images",
        "ssim": (
            f"gaussian window {SSIM_WINDOW}, sigma {SSIM_SIGMA}, K1 {SSIM_K1}, K2 {SSIM_K2}, population "
            "covariance, valid region, mean per channel then over channels (= skimage gaussian_weights=True, "
            "use_sample_covariance=False); mean over images"
        ),
    }


def metric_label(kind: str, channel: str, crop_border: int) -> str:
    """Self-describing metric name, e.g. ('psnr', 'y', 4) -> 'psnr_y_b4'."""
    if kind not in ("psnr", "ssim") or channel not in ("rgb", "y"):
        raise ValueError(f"unknown metric {kind!r} on channel {channel!r}: use psnr|ssim on rgb|y")
    return f"{kind}_{channel}_b{int(crop_border)}"


# ---- conversions ------------------------------------------------------------------


def rgb_to_y(img: Any) -> np.ndarray:
    """BT.601 luma of 0..255 RGB image(s) [..., 3] -> float64 [...], range 16..235."""
    rgb = np.asarray(img, dtype=np.float64)
    if rgb.shape[-1] != 3:
        raise ValueError(f"rgb_to_y needs RGB images with 3 channels last, got shape {rgb.shape}")
    return rgb @ Y_WEIGHTS + Y_OFFSET


def _prepare(a: Any, b: Any, crop_border: int, test_y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Validate, crop the border, optionally take Y; returns float64 [N, H, W, C] pairs."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (3, 4) or a.shape[-1] not in (1, 3):
        raise ValueError(f"expected HxWxC or NxHxWxC images with C = 1 or 3, got shape {a.shape}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if a.ndim == 3:
        a, b = a[None], b[None]
    if crop_border:
        if min(a.shape[1:3]) <= 2 * crop_border:
            raise ValueError(f"images of {a.shape[1]}x{a.shape[2]} are too small for crop_border {crop_border}")
        a = a[:, crop_border:-crop_border, crop_border:-crop_border]
        b = b[:, crop_border:-crop_border, crop_border:-crop_border]
    a, b = a.astype(np.float64), b.astype(np.float64)
    if test_y_channel:
        if a.shape[-1] != 3:
            raise ValueError("test_y_channel needs RGB images")
        a, b = rgb_to_y(a)[..., None], rgb_to_y(b)[..., None]
    return a, b


# ---- PSNR -----------------------------------------------------------------------


def _psnr_batch(a: np.ndarray, b: np.ndarray, data_range: float = DATA_RANGE) -> np.ndarray:
    mse = np.mean((a - b) ** 2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        # identical images: MSE 0 -> inf, as skimage and BasicSR report it
        return 10.0 * np.log10(data_range**2 / mse)


def psnr(a: Any, b: Any, crop_border: int = 4, test_y_channel: bool = False, data_range: float = DATA_RANGE) -> float:
    """PSNR in dB of one pair of 0..255 images (HxWx3); inf when identical."""
    x, y = _prepare(a, b, crop_border, test_y_channel)
    return float(_psnr_batch(x, y, data_range)[0])


# ---- SSIM -----------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _valid_gaussian_matrix(n: int) -> np.ndarray:
    """(n - 10) x n banded matrix M: M @ x is x filtered by the normalised 11-tap
    Gaussian (sigma 1.5) at every position where the window fits ('valid')."""
    radius = SSIM_WINDOW // 2
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / SSIM_SIGMA) ** 2)
    taps /= taps.sum()
    m = np.zeros((n - 2 * radius, n))
    for i in range(n - 2 * radius):
        m[i, i : i + SSIM_WINDOW] = taps
    m.setflags(write=False)
    return m


def _filter_valid(x: np.ndarray) -> np.ndarray:
    """Gaussian-filter [..., H, W] maps, keeping only the valid region."""
    rows = _valid_gaussian_matrix(x.shape[-2])
    cols = _valid_gaussian_matrix(x.shape[-1])
    # einsum turns this into two large GEMMs; numpy's broadcasting matmul would loop
    # over thousands of small (often non-contiguous) matrices, ~10x slower
    return np.einsum("ih,...hw,jw->...ij", rows, x, cols, optimize=True)


def _ssim_batch(a: np.ndarray, b: np.ndarray, data_range: float = DATA_RANGE) -> np.ndarray:
    """Per-image SSIM of float64 [N, H, W, C] batches (mean over channels)."""
    if min(a.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} after border cropping, "
            f"got {a.shape[1]}x{a.shape[2]}"
        )
    # a few images at a time keep the five float64 maps in cache (~14 MB for 8 RGB faces)
    return np.concatenate([_ssim_chunk(a[i : i + 8], b[i : i + 8], data_range) for i in range(0, len(a), 8)])


def _ssim_chunk(a: np.ndarray, b: np.ndarray, data_range: float) -> np.ndarray:
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    # channels first so the filter works on the last two axes; five maps in one go
    a = np.moveaxis(a, -1, 1)
    b = np.moveaxis(b, -1, 1)
    mu_a, mu_b, aa, bb, ab = _filter_valid(np.stack([a, b, a * a, b * b, a * b]))
    var_a = aa - mu_a**2
    var_b = bb - mu_b**2
    cov = ab - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean(axis=(2, 3)).mean(axis=1)


def ssim(a: Any, b: Any, crop_border: int = 4, test_y_channel: bool = False) -> float:
    """SSIM of one pair of 0..255 images (HxWx3), mean over channels."""
    x, y = _prepare(a, b, crop_border, test_y_channel)
    return float(_ssim_batch(x, y)[0])


# ---- batches ----------------------------------------------------------------------


def batch_metrics(sr_uint8: Any, hr_uint8: Any, crop_border: int = 4) -> dict[str, np.ndarray]:
    """Per-image PSNR and SSIM on RGB and Y for uint8 batches [N, H, W, 3].

    Returns float64 arrays of length N keyed psnr_rgb, ssim_rgb, psnr_y, ssim_y.
    """
    sr, hr = np.asarray(sr_uint8), np.asarray(hr_uint8)
    if sr.dtype != np.uint8 or hr.dtype != np.uint8:
        raise TypeError(
            f"batch_metrics expects uint8 images (round model outputs first), got {sr.dtype} and {hr.dtype}"
        )
    if sr.ndim != 4 or sr.shape[-1] != 3:
        raise ValueError(f"batch_metrics expects [N, H, W, 3] batches, got shape {sr.shape}")
    rgb = _prepare(sr, hr, crop_border, test_y_channel=False)
    y = (rgb_to_y(rgb[0])[..., None], rgb_to_y(rgb[1])[..., None])
    return {
        "psnr_rgb": _psnr_batch(*rgb),
        "ssim_rgb": _ssim_batch(*rgb),
        "psnr_y": _psnr_batch(*y),
        "ssim_y": _ssim_batch(*y),
    }
