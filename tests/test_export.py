"""The serving SavedModel (srcore.export): same pixels as `srgan upscale`, loadable by
TensorFlow alone, the TF Serving folder layout, atomic writes, the request-size limit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from srcore.config import build_config
from srcore.export import OUTPUT_NAME, SIGNATURE, export_savedmodel, export_step, log_savedmodel
from srcore.models import build_generator
from srcore.upscale import upscale_array


@pytest.fixture(scope="module")
def smoke_model(tmp_path_factory) -> Path:
    """A smoke-size generator (the smoke preset's width and depth) as a .keras file."""
    cfg = build_config("smoke")
    path = tmp_path_factory.mktemp("smoke-gen") / "generator.keras"
    # a non-trivial (non-identity-like) init so that rounding differences would show
    build_generator(cfg.gen_filters, cfg.gen_blocks, cfg.scale, init_scale=1.0).save(path)
    return path


@pytest.fixture(scope="module")
def exported(smoke_model, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("export")
    return export_step(build_config("smoke"), str(smoke_model), out)


def _serve(savedmodel_dir: str, images: np.ndarray) -> np.ndarray:
    fn = tf.saved_model.load(savedmodel_dir).signatures[SIGNATURE]
    return fn(images=tf.constant(images))[OUTPUT_NAME].numpy()


def test_layout_is_name_version_saved_model(exported):
    path = Path(exported["savedmodel_dir"])
    assert path.parts[-2:] == ("srgan-celeba", "1")
    assert (path / "saved_model.pb").is_file() and (path / "variables").is_dir()
    assert exported["model_base_path"] == str(path.parent)
    cfg = build_config("smoke")
    assert (exported["max_pixels"], exported["max_batch"]) == (cfg.serve_max_pixels, cfg.serve_max_batch)
    # nothing temporary left beside the version folder (TF Serving would see only "1")
    assert [p.name for p in path.parent.iterdir()] == ["1"]


@pytest.mark.parametrize("shape", [(2, 24, 20, 3), (1, 9, 13, 3)])
def test_savedmodel_equals_untiled_upscale(exported, smoke_model, shape):
    from srcore.models import load_generator

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    served = _serve(exported["savedmodel_dir"], images)
    n, h, w, _ = shape
    assert served.shape == (n, 4 * h, 4 * w, 3) and served.dtype == np.uint8

    generator = load_generator(str(smoke_model))
    reference = np.stack([upscale_array(generator, img, tile=0) for img in images])
    diff = np.abs(served.astype(np.int16) - reference.astype(np.int16))
    assert diff.max() <= 1 or (diff <= 1).mean() >= 0.999
    print(f"exact pixels {np.mean(diff == 0):.5f}, max diff {diff.max()}")


def test_loads_with_tensorflow_alone(exported, tmp_path):
    """A fresh interpreter where srcore and Keras cannot be imported still serves it."""
    images = np.random.default_rng(1).integers(0, 256, (1, 8, 12, 3), dtype=np.uint8)
    np.save(tmp_path / "in.npy", images)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["srcore"] = None  # any import of them raises ImportError
        sys.modules["keras"] = None
        import numpy as np, tensorflow as tf
        fn = tf.saved_model.load({exported["savedmodel_dir"]!r}).signatures["serving_default"]
        out = fn(images=tf.constant(np.load({str(tmp_path / "in.npy")!r})))["upscaled"].numpy()
        np.save({str(tmp_path / "out.npy")!r}, out)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("srcore", "keras") and sys.modules[m]))
    """)
    proc = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
                                             "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), _serve(exported["savedmodel_dir"], images))


def test_oversized_request_is_refused(tmp_path):
    path = export_savedmodel(build_generator(4, 1, 4), tmp_path, "tiny", 2, max_pixels=100, max_batch=2)
    fn = tf.saved_model.load(str(path)).signatures[SIGNATURE]
    assert fn(images=tf.zeros((2, 5, 10, 3), tf.uint8))[OUTPUT_NAME].shape == (2, 20, 40, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="more images than serve_max_batch"):
        fn(images=tf.zeros((3, 4, 4, 3), tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="more LR pixels .N.H.W. than serve_max_pixels"):
        fn(images=tf.zeros((2, 10, 6, 3), tf.uint8))  # 120 pixels in all, each image only 60


def test_reexport_replaces_version_atomically_and_checks_names(tmp_path):
    gen = build_generator(4, 1, 4)
    first = export_savedmodel(gen, tmp_path, "m", 7)
    second = export_savedmodel(gen, tmp_path, "m", "7")
    assert first == second and (second / "saved_model.pb").is_file()
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["7"]
    with pytest.raises(ValueError, match="positive integer"):
        export_savedmodel(gen, tmp_path, "m", "v1")
    with pytest.raises(ValueError, match="folder name"):
        export_savedmodel(gen, tmp_path, "../escape", 1)


def test_log_savedmodel_beside_the_run(tracking, tmp_path):
    import mlflow

    with mlflow.start_run() as run:
        uri = log_savedmodel(build_generator(4, 1, 4))
    assert uri.endswith("/savedmodel")
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="savedmodel",
                                                     dst_path=str(tmp_path)))
    assert (local / "1" / "saved_model.pb").is_file()
    assert mlflow.get_run(run.info.run_id).data.tags["savedmodel_uri"] == uri
