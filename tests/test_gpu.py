"""GPU preflight (srcore.gpu) on this GPU-less machine: a required GPU fails at once with
a clear message, before training touches data; not required, nothing changes."""

from __future__ import annotations

import pytest

from srcore import gpu
from srcore.config import Config


def test_required_gpu_missing_fails_with_a_clear_message():
    with pytest.raises(gpu.GPUUnavailableError) as e:
        gpu.preflight(require_gpu=True)
    message = str(e.value)
    assert "requested 1 nvidia.com/gpu but TensorFlow sees none" in message
    assert "tensorflow[and-cuda]" in message and "NVIDIA driver" in message
    assert "require_gpu=false" in message


def test_not_required_returns_the_build_as_tags():
    tags = gpu.preflight(require_gpu=False)
    assert tags["gpu.count"] == "0" and tags["gpu.required"] == "false"
    assert tags["tf.version"].startswith("2.")
    assert tags["tf.is_cuda_build"] in ("true", "false")
    assert all(isinstance(v, str) for v in tags.values())  # MLflow tags


def test_train_refuses_before_reading_any_data(tmp_path):
    from srcore.train import train

    cfg = Config(require_gpu=True)
    # the data folder does not exist: the GPU check must come first, within seconds
    with pytest.raises(gpu.GPUUnavailableError, match="sees none"):
        train(cfg, data_dir=tmp_path / "missing", model_dir=tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_require_gpu_is_a_config_field():
    from srcore.config import apply_overrides

    assert Config().require_gpu is False
    assert apply_overrides(Config(), {"require_gpu": "true"}).require_gpu is True
