"""The pyfunc upscaler (srcore.serving): logging, loading, the REST payload forms, a real
`mlflow models serve` process, and the registered champion used by `upscale_files`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server
from PIL import Image

from conftest import models_serve
from srcore.config import Config
from srcore.models import load_generator
from srcore.registry import register
from srcore.serving import ServingLimits, image_batch, log_upscaler
from srcore.upscale import upscale_array, upscale_files


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def generator(tiny_generator):
    return load_generator(str(tiny_generator))


#: the tests tile tiny images with tiny tiles: allow them (the default minimum is 32)
TEST_LIMITS = ServingLimits(min_tile=4)


def log_in_run(generator_path: Path, limits: ServingLimits = TEST_LIMITS) -> mlflow.models.model.ModelInfo:
    with mlflow.start_run():
        return log_upscaler(generator_path, input_example=image(6, 5), limits=limits)


@pytest.fixture(scope="module")
def upscaler(tiny_generator, tmp_path_factory):
    """(local model dir, loaded pyfunc model) of the tiny generator logged once to a
    module-wide SQLite store; loaded from a local copy so that later tests switching the
    tracking URI cannot affect it."""
    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # a SQLite store's default artifact root is ./mlruns
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
            mp.delenv(var, raising=False)
        mlflow.set_tracking_uri(uri)
        info = log_in_run(tiny_generator)
        assert info.model_uri.startswith("models:/m-")
        local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(root / "model")))
    return local, mlflow.pyfunc.load_model(str(local))


def test_log_and_load_round_trip(upscaler, generator):
    model = upscaler[1]
    batch = image(20, 24)[None]
    out = model.predict(batch)
    assert out.shape == (1, 80, 96, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], upscale_array(generator, batch[0]))


def test_logged_model_carries_srcore_signature_and_pins(upscaler):
    local, model = upscaler
    assert (local / "code" / "srcore" / "serving.py").is_file()
    assert not list((local / "code").rglob("__pycache__"))
    assert (local / "artifacts" / "generator.keras").is_file()
    requirements = (local / "requirements.txt").read_text()
    assert "tensorflow==2.21.0" in requirements and "keras==3.15.1" in requirements
    assert "mlflow==3.17.2" in requirements
    # no input schema (MLflow would cast JSON pixels to its dtype); the metadata says what to send
    assert model.metadata.get_input_schema() is None
    assert "uint8 NxHxWx3" in model.metadata.metadata["input"]
    spec = model.metadata.get_output_schema().inputs[0]
    assert (str(spec.type), spec.shape) == ("uint8", (-1, -1, -1, 3))
    assert {p.name for p in model.metadata.get_params_schema().params} == {"tile", "overlap", "encoding"}


def test_python_model_accepts_single_batch_list_and_dataframe(upscaler):
    sr = upscaler[1].unwrap_python_model()
    small, wide = image(10, 12), image(6, 20, seed=1)
    assert sr.predict(None, small).shape == (40, 48, 3)
    assert [o.shape for o in sr.predict(None, [small, wide])] == [(40, 48, 3), (24, 80, 3)]
    frame = pd.DataFrame({"image": [small, wide]})
    assert [o.shape for o in sr.predict(None, frame)] == [(40, 48, 3), (24, 80, 3)]
    assert sr.predict(None, small.tolist()).dtype == np.uint8  # JSON-like int lists
    with pytest.raises(ValueError, match="uint8"):
        sr.predict(None, small.astype(np.float32) / 255)


def test_pyfunc_takes_images_of_different_sizes_as_an_object_array(upscaler):
    out = upscaler[1].predict(image_batch([image(10, 12), image(6, 20)]), params={"tile": 4})
    assert [o.shape for o in out] == [(40, 48, 3), (24, 80, 3)]


def test_what_the_rest_layer_passes(upscaler, generator):
    """The scoring server's own parser, in process: a batch in `inputs` works (predict
    receives the JSON's int64 NxHxWx3 ndarray, nothing cast); a bare 3-D image is answered
    with one image; a ragged batch fails MLflow's parser (HTTP 400)."""
    model = upscaler[1]
    schema = model.metadata.get_input_schema()
    img = image(20, 24)
    payload = json.dumps({"inputs": [img.tolist()], "params": {"tile": 8}})
    response = scoring_server.invocations(payload, "application/json", model, schema)
    assert response.status == 200
    predictions = np.asarray(json.loads(response.response)["predictions"])
    assert predictions.shape == (1, 80, 96, 3)
    np.testing.assert_array_equal(predictions[0], upscale_array(generator, img, tile=8))
    bare = scoring_server.invocations(json.dumps({"inputs": img.tolist()}), "application/json", model, schema)
    assert np.asarray(json.loads(bare.response)["predictions"]).shape == (80, 96, 3)
    with pytest.raises(MlflowException, match="inhomogeneous") as err:
        ragged = {"inputs": [img.tolist(), image(8, 8).tolist()]}
        scoring_server.invocations(json.dumps(ragged), "application/json", model, schema)
    assert err.value.get_http_status_code() == 400


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(server_tracking, tiny_generator, generator, tmp_path):
    """A real `mlflow models serve` from the registry's model: uint8 pixels are answered
    exactly as upscale_array does; pixels that are not integers 0..255 are a 400 naming
    them, never cast (MLflow used to turn 0.99 into 0 before predict ran)."""
    info = log_in_run(tiny_generator)
    env = {**os.environ, "MLFLOW_TRACKING_URI": server_tracking}
    with models_serve(info.model_uri, tmp_path, env) as (url, _):
        img = image(20, 24)
        r = requests.post(f"{url}/invocations", json={"inputs": [img.tolist()]}, timeout=120)
        assert r.status_code == 200, r.text[:500]
        predictions = np.asarray(r.json()["predictions"])
        assert predictions.shape == (1, 80, 96, 3)
        np.testing.assert_array_equal(predictions[0], upscale_array(generator, img))
        refused = {
            "floats (dtype float64)": {"inputs": [np.full((8, 8, 3), 0.99).tolist()]},
            "got -1..-1": {"instances": [np.full((8, 8, 3), -1).tolist()]},
            "got 300..300": {"inputs": [np.full((8, 8, 3), 300).tolist()]},
            "booleans (dtype bool)": {"inputs": [np.full((8, 8, 3), True).tolist()]},
            "strings (dtype <U1)": {"inputs": [np.full((8, 8, 3), "7").tolist()]},
        }
        for named, payload in refused.items():
            r = requests.post(f"{url}/invocations", json=payload, timeout=60)
            assert r.status_code == 400 and named in r.json()["message"], (named, r.status_code, r.text[-300:])
            assert "pixel values must be uint8 integers 0..255" in r.json()["message"]


def test_registered_champion_upscales_files(server_tracking, tiny_generator, tmp_path, monkeypatch):
    """The acceptance path: log -> register (champion) -> `upscale_files` from the alias."""
    monkeypatch.chdir(tmp_path)
    info = log_in_run(tiny_generator)
    # the gate needs the bicubic score of the same split: a champion must beat bicubic
    result = register(Config(), info.model_uri, {"test_psnr_y": 24.0, "bicubic_psnr_y": 23.0}, manifest_hash="cafe")
    assert result.champion, result.reason
    face = tmp_path / "face.png"
    Image.fromarray(image(32, 32)).save(face)
    written = upscale_files("models:/srgan-celeba@champion", [face], tmp_path / "out", scale=4)
    assert written == [tmp_path / "out" / "face_x4.png"]
    with Image.open(written[0]) as out:
        assert (out.mode, out.size) == ("RGB", (128, 128))
