"""The served upscaler is bounded (issue 13): limits in its metadata, a request over a
limit is refused with HTTP 400 naming it before any work, a time budget stops work,
a compact PNG answer, and a bounded load test against a real `mlflow models serve`."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import yaml
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server

from conftest import models_serve
from srcore.models import load_generator
from srcore.serving import SRUpscaler, ServingLimits, decode_png_base64, log_upscaler
from srcore.upscale import upscale_array

LIMITS = ServingLimits(max_pixels=4096, max_batch=3, min_tile=8, max_tile=64, max_overlap=8)


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def bounded(tiny_generator, tmp_path_factory):
    """(local model dir, loaded pyfunc) of the tiny generator logged with LIMITS."""
    root = tmp_path_factory.mktemp("bounded")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
            mp.delenv(var, raising=False)
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run():
            info = log_upscaler(tiny_generator, input_example=image(6, 5), limits=LIMITS)
        local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(root / "model")))
    return local, mlflow.pyfunc.load_model(str(local))


def invoke(model, payload: dict):
    schema = model.metadata.get_input_schema()
    return scoring_server.invocations(json.dumps(payload), "application/json", model, schema)


def test_limits_are_in_the_metadata_and_nothing_is_pickled(bounded):
    local, model = bounded
    assert model.metadata.metadata["serving_limits"] == LIMITS.to_dict()
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc.get("model_code_path") and not list(local.rglob("*.pkl"))
    assert model.unwrap_python_model().limits == LIMITS  # the limits artifact reached load_context


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ({"inputs": [image(70, 60).tolist()]}, "max_pixels=4096"),
        ({"inputs": [image(8, 8, s).tolist() for s in range(4)]}, "max_batch=3"),
        ({"inputs": [image(16, 16).tolist()], "params": {"tile": 1}}, "min_tile=8"),
        ({"inputs": [image(16, 16).tolist()], "params": {"tile": 0}}, "min_tile=8"),
        ({"inputs": [image(16, 16).tolist()], "params": {"tile": 4096}}, "max_tile=64"),
        ({"inputs": [image(16, 16).tolist()], "params": {"overlap": 100}}, "max_overlap=8"),
        ({"inputs": [image(16, 16).tolist()], "params": {"encoding": "gif"}}, "encoding"),
    ],
)
def test_over_a_limit_is_a_400_naming_it_before_any_work(bounded, payload, named, monkeypatch):
    model = bounded[1]
    import srcore.upscale

    def no_work(*args, **kwargs):
        raise AssertionError("the generator ran for a refused request")

    monkeypatch.setattr(srcore.upscale, "upscale_array", no_work)
    with pytest.raises(MlflowException, match=named) as err:
        invoke(model, payload)
    assert err.value.get_http_status_code() == 400


@pytest.mark.parametrize(
    ("pixels", "named"),
    [
        (np.full((8, 8, 3), 0.99), "floats (dtype float64)"),
        (np.full((8, 8, 3), -1), "got -1..-1 (dtype int64)"),
        (np.full((8, 8, 3), 256), "got 256..256"),
        (np.full((8, 8, 3), True), "booleans (dtype bool)"),
        (np.full((8, 8, 3), "7"), "strings"),
        (np.concatenate([image(8, 8)[:4], np.full((4, 8, 3), 0.5)]), "floats"),  # one float among integers
    ],
)
def test_pixels_that_are_not_uint8_are_a_400_never_cast(bounded, pixels, named, monkeypatch):
    """MLflow's JSON parser keeps the values' own dtype (the model has no input schema to
    cast to), so predict sees the floats, booleans, strings and out-of-range integers."""
    import srcore.upscale

    def no_work(*args, **kwargs):
        raise AssertionError("the generator ran for a refused request")

    monkeypatch.setattr(srcore.upscale, "upscale_array", no_work)
    for key in ("inputs", "instances"):
        with pytest.raises(MlflowException, match=re.escape(named)) as err:
            invoke(bounded[1], {key: [pixels.tolist()]})
        assert err.value.get_http_status_code() == 400
    with pytest.raises(MlflowException, match="holds no images"):
        invoke(bounded[1], {"inputs": []})


def test_png_encoding_answers_the_same_pixels_compactly(bounded, tiny_generator):
    model = bounded[1]
    img = image(20, 24)
    response = invoke(model, {"inputs": [img.tolist()], "params": {"encoding": "png", "tile": 8}})
    assert response.status == 200
    [encoded] = json.loads(response.response)["predictions"]
    expected = upscale_array(load_generator(str(tiny_generator)), img, tile=8)
    np.testing.assert_array_equal(decode_png_base64(encoded), expected)
    as_array = invoke(model, {"inputs": [img.tolist()], "params": {"tile": 8}})
    print(f"answer size: PNG {len(response.response)} bytes, JSON array {len(as_array.response)} bytes")
    assert len(response.response) < len(as_array.response) / 2


def test_the_time_budget_stops_work_between_tiles(tiny_generator):
    sr = SRUpscaler(ServingLimits(min_tile=4, max_seconds=0.0))
    sr.generator = load_generator(str(tiny_generator))
    with pytest.raises(MlflowException, match="max_seconds=0.0") as err:
        sr.predict(None, image(16, 16)[None], params={"tile": 4})
    assert err.value.get_http_status_code() == 503


# ---- a bounded load test against the real scoring server ---------------------------------


def tree_rss_kib(pid: int) -> int:
    """Resident memory of `pid` and all its descendants (the server forks its workers)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, StopIteration):
            continue
    return total


@pytest.mark.slow
def test_load_oversized_requests_fail_fast_normal_ones_succeed_memory_bounded(bounded, tmp_path):
    local = bounded[0]
    with models_serve(str(local), tmp_path) as (url, proc):
        normal = {"inputs": [image(20, 24).tolist()], "params": {"tile": 16}}
        assert requests.post(f"{url}/invocations", json=normal, timeout=60).status_code == 200  # warm up
        baseline = tree_rss_kib(proc.pid)

        hostile = [
            {"inputs": [image(300, 300).tolist()]},  # 90,000 pixels > 4,096
            {"inputs": [image(8, 8, s).tolist() for s in range(10)]},  # batch 10 > 3
            {"inputs": [image(16, 16).tolist()], "params": {"tile": 1}},  # minutes of work without the limit
        ]

        def send(payload: dict) -> tuple[int, float, str]:
            start = time.monotonic()
            r = requests.post(f"{url}/invocations", json=payload, timeout=60)
            return r.status_code, time.monotonic() - start, r.text[-2000:]

        requests_sent = [hostile[i % 3] if i % 2 else normal for i in range(24)]
        peak = baseline
        with ThreadPoolExecutor(4) as pool:
            results = []
            for result in pool.map(send, requests_sent):
                results.append(result)
                peak = max(peak, tree_rss_kib(proc.pid))
        for payload, (status, seconds, text) in zip(requests_sent, results):
            if payload is normal:
                assert status == 200, text
            else:
                assert status == 400 and ("max_" in text or "min_tile" in text), (status, text)
        refused = [seconds for payload, (_, seconds, _) in zip(requests_sent, results) if payload is not normal]
        served = [seconds for payload, (_, seconds, _) in zip(requests_sent, results) if payload is normal]
        print(f"refused in at most {max(refused):.2f} s (median served {sorted(served)[len(served) // 2]:.2f} s); "
              f"server RSS {baseline // 1024} MiB -> peak {peak // 1024} MiB")
        assert peak - baseline < 512 * 1024, f"server memory grew by {(peak - baseline) // 1024} MiB"


def test_a_degenerate_image_is_a_400_that_says_why(bounded):
    with pytest.raises(MlflowException, match="too small") as err:
        invoke(bounded[1], {"inputs": [image(1, 1).tolist()], "params": {"tile": 8}})
    assert err.value.get_http_status_code() == 400
