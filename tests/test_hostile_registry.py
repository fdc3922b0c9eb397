"""The registry under hostile input (issue 18): every metric it reads is finite and in its
range or refused in one line naming the file and key; bad model URIs, names and keys are
one line too; registering is idempotent under real concurrency and for any model name."""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from helpers_store import store, tracked  # noqa: F401 - fixtures

from srcore import cli
from srcore.config import Config
from srcore.registry import MODEL_URI_TAG, REGISTRATION_KEY_TAG, TEST_SPLIT_TAG, register


class _Identity(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def stub_model() -> str:
    with mlflow.start_run():
        return mlflow.pyfunc.log_model(name="model", python_model=_Identity(), pip_requirements=["mlflow"]).model_uri


def name(suffix: str = "") -> str:
    return f"srgan-hostile-{uuid.uuid4().hex[:8]}{suffix}"


def versions(model: str) -> list[str]:
    """Every version of `model`, found without a filter (no filter can quote every name)."""
    everything = MlflowClient().search_model_versions(max_results=10_000)
    return sorted(str(v.version) for v in everything if v.name == model)


GOOD = {"test_psnr_y": 25.0, "bicubic_psnr_y": 20.0, "test_ssim_y": 0.8, "test_lpips_alex": 0.2}

BAD_METRICS = {
    "a JSON list": ([GOOD], "holds a JSON list, not an object"),
    "a JSON string": ("test_psnr_y", "holds a JSON string, not an object"),
    "inf gate metric": (GOOD | {"test_psnr_y": float("inf")}, "test_psnr_y=inf is not a finite number"),
    "-inf baseline": (GOOD | {"bicubic_psnr_y": float("-inf")}, "bicubic_psnr_y=-inf is not a finite number"),
    "negative PSNR": (GOOD | {"test_psnr_y": -3.0}, r"test_psnr_y=-3.0 is not a PSNR"),
    "PSNR over 100 dB": (GOOD | {"bicubic_psnr_y": 1e9}, r"bicubic_psnr_y=1000000000.0 is not a PSNR"),
    "SSIM over 1": (GOOD | {"test_ssim_y": 1.5}, r"test_ssim_y=1.5 is not an SSIM"),
    "negative LPIPS": (GOOD | {"test_lpips_alex": -0.1}, r"test_lpips_alex=-0.1 is not an LPIPS"),
    "a key over 250 characters": (GOOD | {"k" * 300: 1.0}, r"metric key 'kkk.*\(300 characters\) does not fit"),
}


def run_cli(caplog, *args: str) -> tuple[int, list[str]]:
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        code = cli.main(["register", *args])
    return code, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("case", BAD_METRICS)
def test_bad_metrics_are_one_line_naming_file_and_key_and_register_nothing(case, tracked, tmp_path, caplog):
    content, message = BAD_METRICS[case]
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(content))  # json.dumps writes inf as Infinity, as a hostile file would
    model = name()
    code, errors = run_cli(caplog, "--model-uri", stub_model(), "--metrics", str(path),
                           "--registered-model-name", model)
    assert code != 0 and len(errors) == 1 and "\n" not in errors[0] and "Traceback" not in errors[0]
    assert str(path) in errors[0]
    assert re.search(message, errors[0]), errors[0]
    assert versions(model) == []


@pytest.mark.parametrize("uri, model, message", [
    ("bogus", None, "model_uri='bogus': not an MLflow model"),
    # a newcomer's guess: the file train wrote; the line names the URI form train prints
    ("runs/srgan/generator.keras", None, r"not an MLflow model .*model_uri train printed \(models:/m-<id>\)"),
    ("runs:/0123456789abcdef0123456789abcdef/upscaler", None, "not an MLflow model .*Run .* not found"),
    ("models:/no-such-model@champion", None, "not an MLflow model"),
    ("", None, "model_uri"),
    (None, "   ", "registered_model_name='   ': blank"),
])
def test_bad_uri_or_name_is_one_line_and_registers_nothing(uri, model, message, tracked, tmp_path, caplog):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(GOOD))
    model = model or name()
    code, errors = run_cli(caplog, "--model-uri", stub_model() if uri is None else uri or " ",
                           "--metrics", str(path), "--registered-model-name", model)
    assert code != 0 and len(errors) == 1 and "\n" not in errors[0], errors
    assert re.search(message, errors[0]), errors[0]
    assert versions(model) == []


def test_a_champion_with_an_invalid_tag_is_not_compared_and_reregistering_drops_stale_tags(tracked):
    cfg, client = Config(registered_model_name=name("'s")), MlflowClient()
    model, old_uri = cfg.registered_model_name, stub_model()
    # a champion registered before values were checked: inf PSNR, and an inf LPIPS tag
    client.create_registered_model(model)
    legacy = client.create_model_version(model, old_uri, tags={
        MODEL_URI_TAG: old_uri, TEST_SPLIT_TAG: "split-a", "metric.test_psnr_y": "inf",
        "metric.bicubic_psnr_y": "25.0", "metric.test_lpips_alex": "inf"})
    client.set_registered_model_alias(model, "champion", legacy.version)

    new = register(cfg, stub_model(), GOOD | {"data_manifest_hash": "split-a"})
    assert not new.champion and "tag metric.test_psnr_y=inf is not a finite number" in new.reason
    assert "not compared" in new.reason

    again = register(cfg, old_uri, {"test_psnr_y": 26.0, "bicubic_psnr_y": 20.0, "data_manifest_hash": "split-a"})
    assert again.version == str(legacy.version) and again.champion  # found (no key yet), re-tagged, not duplicated
    tags = client.get_model_version(model, again.version).tags
    assert tags["metric.test/psnr_y"] == "26.0" and tags["metric.test/bicubic/psnr_y"] == "20.0"
    assert not {"metric.test_psnr_y", "metric.test_lpips_alex"} & set(tags) and REGISTRATION_KEY_TAG in tags
    assert "26" in tags["gate.reason"] and versions(model) == ["1", "2"]


def test_concurrent_registrations_of_one_uri_make_one_version_for_any_name(server_tracking, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for model in (name("'s model"), name(" it's \"quoted\"")):
        cfg, uri = Config(registered_model_name=model), stub_model()
        start, results, errors = threading.Barrier(6), [], []

        def one() -> None:
            start.wait()
            try:
                results.append(register(cfg, uri, GOOD | {"data_manifest_hash": "split-a"}))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert len({r.version for r in results}) == 1 and len(results) == 6
        (version,) = {r.version for r in results}
        assert versions(model) == [version]
        assert str(MlflowClient().get_model_version_by_alias(model, "champion").version) == version
        assert register(cfg, uri, GOOD | {"data_manifest_hash": "split-a"}).version == version  # sequential too
        assert versions(model) == [version]


@pytest.mark.parametrize("text, message", [
    ('{"test_psnr_y": 1%s, "bicubic_psnr_y": 20}' % ("0" * 400), "test_psnr_y=inf is not a finite number"),
    ('{"test_psnr_y": -1%s, "bicubic_psnr_y": 20}' % ("0" * 5000), "test_psnr_y=-inf is not a finite number"),
    ('{"test_psnr_y": 25, "bicubic_psnr_y": 20, "test_psnr_y": 99}', "key 'test_psnr_y' appears more than once"),
    ('{"test_psnr_y": 99, "test/psnr_y": 25, "bicubic_psnr_y": 20}', "two spellings of one metric .test/psnr_y."),
    ('{"bicubic_psnr_y": 9, "test/bicubic_psnr_y": 20}', "two spellings of one metric .test/bicubic/psnr_y."),
])
def test_huge_integers_and_duplicate_keys_are_refused_naming_file_and_key(text, message, tmp_path):
    from srcore.registry import _as_number, read_evaluation
    path = tmp_path / "metrics.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        read_evaluation(path)
    assert str(path) in str(err.value)
    assert _as_number(10 ** 400) == float("inf") and _as_number(-(10 ** 400)) == float("-inf")


def test_a_metrics_path_that_is_not_a_small_regular_file_is_refused_at_once(tmp_path):
    import os

    from srcore.registry import MAX_METRICS_BYTES, read_evaluation
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # reading it would block forever
    for path in (tmp_path, fifo):
        with pytest.raises(ValueError, match=f"metrics file {re.escape(str(path))} is not a regular file"):
            read_evaluation(path)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_METRICS_BYTES + 1))
    with pytest.raises(ValueError, match="larger than"):
        read_evaluation(big)
