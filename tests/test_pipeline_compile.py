"""The compiled Kubeflow pipeline: tasks, edges, resources, platform config, no secrets;
and the srcore glue the components call (srcore.steps_env)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

STEPS = ("ingest", "train", "evaluate", "register")
SECRET_VALUES = {"MLFLOW_TRACKING_USERNAME": "user-d0-not-leak", "MLFLOW_TRACKING_PASSWORD": "pw-d0-not-leak",
                 "KFP_TOKEN": "token-d0-not-leak"}


def _compile(tmp_path: Path, **kw) -> tuple[dict, dict | None, str]:
    from kfp import compiler

    from pipeline.dag import build_pipeline

    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(build_pipeline(**kw), str(out))
    text = out.read_text()
    docs = list(yaml.safe_load_all(text))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else None
    return docs[0], platform, text


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    for k, v in SECRET_VALUES.items():
        mp.setenv(k, v)
    try:
        return _compile(tmp_path_factory.mktemp("compile"))
    finally:
        mp.undo()


def _tasks(spec: dict) -> dict:
    return spec["root"]["dag"]["tasks"]


def _executors(spec: dict) -> dict:
    return spec["deploymentSpec"]["executors"]


def test_four_tasks_and_edges(compiled):
    spec, _, _ = compiled
    tasks = _tasks(spec)
    assert set(tasks) == set(STEPS)
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}
    assert deps["ingest"] == set()
    assert "ingest" in deps["train"]
    assert "train" in deps["evaluate"]
    assert "evaluate" in deps["register"]
    # the data flows as artifacts, the model URI and parent run as parameters
    assert tasks["train"]["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"] == {
        "outputArtifactKey": "dataset", "producerTask": "ingest"}
    assert tasks["evaluate"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"] == "train"
    assert tasks["register"]["inputs"]["artifacts"]["metrics"]["taskOutputArtifact"]["producerTask"] == "evaluate"
    reg_params = tasks["register"]["inputs"]["parameters"]
    assert reg_params["model_uri"]["taskOutputParameter"] == {"outputParameterKey": "model_uri", "producerTask": "train"}
    assert reg_params["parent_run_id"]["taskOutputParameter"]["producerTask"] == "train"
    assert tasks["train"]["inputs"]["parameters"]["parent_run_id"]["taskOutputParameter"]["producerTask"] == "ingest"


def test_typed_artifacts(compiled):
    spec, _, _ = compiled
    comps = spec["components"]

    def art(comp: str, side: str, name: str) -> str:
        return comps[f"comp-{comp}"][f"{side}Definitions"]["artifacts"][name]["artifactType"]["schemaTitle"]

    assert art("ingest", "output", "dataset") == "system.Dataset"
    assert art("train", "input", "dataset") == "system.Dataset"
    assert art("train", "output", "model") == "system.Model"
    assert art("evaluate", "input", "model") == "system.Model"
    assert art("evaluate", "output", "metrics") == "system.Metrics"
    assert art("evaluate", "output", "report") == "system.HTML"
    assert art("register", "input", "metrics") == "system.Metrics"
    out = comps["comp-register"]["outputDefinitions"]["parameters"]
    assert out["version"]["parameterType"] == "STRING"
    assert out["champion"]["parameterType"] == "BOOLEAN"
    assert comps["comp-train"]["outputDefinitions"]["parameters"]["model_uri"]["parameterType"] == "STRING"
    assert comps["comp-ingest"]["outputDefinitions"]["parameters"]["parent_run_id"]["parameterType"] == "STRING"


def test_pipeline_parameters(compiled):
    spec, _, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    expected = {"source", "limit", "test_count", "epochs", "pretrain_epochs", "batch_size", "content_loss", "preset",
                "mlflow_tracking_uri", "experiment_name", "registered_model_name", "config_overrides"}
    assert set(params) == expected
    assert all(p["parameterType"] == "STRING" for p in params.values())
    assert params["preset"]["defaultValue"] == "seed"
    assert params["epochs"]["defaultValue"] == ""  # '' = the preset decides
    for comp in (f"comp-{s}" for s in STEPS):
        inputs = spec["components"][comp]["inputDefinitions"]["parameters"]
        assert {"preset", "config_overrides", "mlflow_tracking_uri", "experiment_name", "parent_run_id"} <= set(inputs)
    # ingest sees only what shapes the data (its cache survives training changes)
    ingest_inputs = set(spec["components"]["comp-ingest"]["inputDefinitions"]["parameters"])
    assert not ({"epochs", "batch_size", "pipeline_run_id"} & ingest_inputs)


def test_one_image_lightweight_components(compiled):
    spec, _, _ = compiled
    import srcore

    images = {e["container"]["image"] for e in _executors(spec).values()}
    assert images == {f"ghcr.io/your-org/srgan-celeba:{srcore.__version__}"}
    for e in _executors(spec).values():
        cmd = " ".join(e["container"]["command"])
        assert "kfp.dsl.executor_main" in cmd  # lightweight: SubprocessRunner can run it
        assert "pip install" not in cmd  # the image has everything


def test_gpu_on_train_only(compiled):
    spec, _, _ = compiled
    ex = _executors(spec)
    acc = ex["exec-train"]["container"]["resources"]["accelerator"]
    assert acc["resourceType"] == "nvidia.com/gpu"
    assert acc["resourceCount"] == "1"
    for step in ("ingest", "evaluate", "register"):
        assert "accelerator" not in ex[f"exec-{step}"]["container"].get("resources", {})
    for step in STEPS:
        res = ex[f"exec-{step}"]["container"]["resources"]
        for key in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"):
            assert res[key], (step, key)
    assert ex["exec-train"]["container"]["resources"]["resourceMemoryLimit"] == "32Gi"


def test_node_selector_toleration_and_secret(compiled):
    _, platform, _ = compiled
    assert platform is not None
    train = platform["exec-train"]
    assert train["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert train["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    for step in STEPS:
        (secret,) = platform[f"exec-{step}"]["secretAsEnv"]
        assert secret["secretName"] == "mlflow-credentials"
        assert {(m["secretKey"], m["envVar"]) for m in secret["keyToEnv"]} == {
            ("username", "MLFLOW_TRACKING_USERNAME"), ("password", "MLFLOW_TRACKING_PASSWORD")}
    for step in ("ingest", "evaluate", "register"):
        assert "nodeSelector" not in platform[f"exec-{step}"]
        assert "tolerations" not in platform[f"exec-{step}"]


def test_no_secret_values_in_yaml(compiled):
    spec, _, text = compiled
    for value in SECRET_VALUES.values():
        assert value not in text
    for e in _executors(spec).values():
        env = {v["name"] for v in e["container"].get("env", [])}
        assert not ({"MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME"} & env)
    for comp in spec["components"].values():
        names = set(comp.get("inputDefinitions", {}).get("parameters", {}))
        assert not any("password" in n or "token" in n or "secret" in n for n in names)


def test_cache_and_retry(compiled):
    spec, _, _ = compiled
    tasks = _tasks(spec)
    assert tasks["ingest"]["cachingOptions"].get("enableCache") is True
    for step in ("train", "evaluate", "register"):
        assert not tasks[step]["cachingOptions"].get("enableCache"), step
    assert tasks["ingest"]["retryPolicy"]["maxRetryCount"] == 3
    assert tasks["register"]["retryPolicy"]["maxRetryCount"] == 3
    assert "retryPolicy" not in tasks["train"]


def test_local_build_has_no_platform_config(tmp_path):
    spec, platform, _ = _compile(tmp_path, cluster=False)
    assert platform is None
    assert _executors(spec)["exec-train"]["container"]["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"


def test_image_option_and_env(tmp_path):
    spec, _, _ = _compile(tmp_path, image="registry.example/srgan:abc")
    assert {e["container"]["image"] for e in _executors(spec).values()} == {"registry.example/srgan:abc"}
    # SRGAN_IMAGE at compile time, through the CLI
    out = tmp_path / "env.yaml"
    env = {**os.environ, "SRGAN_IMAGE": "registry.example/srgan:from-env"}
    subprocess.run([sys.executable, "-m", "pipeline", "compile", "--out", str(out)], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=120)
    spec = next(yaml.safe_load_all(out.read_text()))
    assert {e["container"]["image"] for e in _executors(spec).values()} == {"registry.example/srgan:from-env"}


def test_cluster_settings_from_env(tmp_path, monkeypatch):
    from pipeline.dag import ClusterSettings

    monkeypatch.setenv("SRGAN_GPU_NODE_SELECTOR", "cloud.google.com/gke-accelerator=nvidia-l4")
    monkeypatch.setenv("SRGAN_GPU_TOLERATION", "gpu:Equal:yes:NoExecute")
    monkeypatch.setenv("SRGAN_TRAIN_MEMORY", "20Gi,40Gi")
    monkeypatch.setenv("SRGAN_GPU_COUNT", "2")
    monkeypatch.setenv("SRGAN_MLFLOW_SECRET", "other-secret")
    spec, platform, _ = _compile(tmp_path, settings=ClusterSettings.from_env())
    train = platform["exec-train"]
    assert train["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert train["tolerations"] == [{"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoExecute"}]
    assert train["secretAsEnv"][0]["secretName"] == "other-secret"
    res = _executors(spec)["exec-train"]["container"]["resources"]
    assert (res["resourceMemoryRequest"], res["resourceMemoryLimit"]) == ("20Gi", "40Gi")
    assert res["accelerator"]["resourceCount"] == "2"


def test_cli_compile_writes_yaml(tmp_path):
    from pipeline.__main__ import main

    out = tmp_path / "srgan_pipeline.yaml"
    assert main(["compile", "--out", str(out)]) == 0
    assert next(yaml.safe_load_all(out.read_text()))["pipelineInfo"]["name"] == "srgan-celeba"


# ---- srcore.steps_env: the glue inside the components ---------------------------------

def test_step_config_layers():
    from srcore.config import ConfigError
    from srcore.steps_env import step_config

    cfg = step_config("smoke", json.dumps({"epochs": 5, "gen_blocks": 3}), epochs="", batch_size="4", limit=None)
    assert (cfg.epochs, cfg.gen_blocks, cfg.batch_size, cfg.limit) == (5, 3, 4, 48)
    assert step_config("smoke", '{"epochs": 5}', epochs="7").epochs == 7  # the named parameter wins
    assert step_config("", "").epochs == 60
    with pytest.raises(ConfigError, match="JSON object"):
        step_config("smoke", "[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        step_config("smoke", "{epochs: 5}")
    with pytest.raises(ConfigError, match="unknown parameter"):
        step_config("smoke", '{"no_such_field": 1}')


def test_metrics_and_html(tmp_path):
    from PIL import Image

    from srcore.steps_env import html_report, read_metrics, scalar_metrics, write_metrics

    result = {"test_psnr": 25.5, "test_ssim": 0.8, "test_lpips": None, "count": 8, "ok": True,
              "nan": float("nan"), "model": "x.keras"}
    assert scalar_metrics(result) == {"test_psnr": 25.5, "test_ssim": 0.8, "count": 8.0}
    write_metrics(tmp_path / "m" / "metrics", result)
    assert read_metrics(tmp_path / "m" / "metrics")["model"] == "x.keras"
    assert read_metrics(tmp_path / "missing", {"test_psnr": 1.0}) == {"test_psnr": 1.0}
    Image.new("RGB", (8, 4), (255, 0, 0)).save(tmp_path / "grid.png")
    page = html_report(result, tmp_path)
    assert page.count("data:image/png;base64,") == 1 and "test_psnr" in page and "25.5000" in page


def test_prepare_step_parent_runs(tracking, monkeypatch):
    """Without the plugin: ingest opens the parent; train claims it for its KFP run; a parent
    handed down by a cached ingest (another KFP run's) is replaced."""
    import mlflow

    from srcore.config import build_config
    from srcore.steps_env import KFP_RUN_TAG, prepare_step
    from srcore.tracking import PARENT_ENV

    cfg = build_config("smoke", overrides={"experiment_name": "steps-env"})
    monkeypatch.delenv(PARENT_ENV, raising=False)
    parent = prepare_step(cfg, tracking)  # ingest
    assert os.environ[PARENT_ENV] == parent
    client = mlflow.tracking.MlflowClient()
    assert KFP_RUN_TAG not in client.get_run(parent).data.tags
    assert prepare_step(cfg, tracking, parent, "kfp-run-1") == parent  # train claims it
    run = client.get_run(parent)
    assert run.data.tags[KFP_RUN_TAG] == "kfp-run-1" and run.data.params["epochs"] == str(cfg.epochs)
    assert prepare_step(cfg, tracking, parent, "kfp-run-1") == parent  # evaluate, register
    fresh = prepare_step(cfg, tracking, parent, "kfp-run-2")  # cached ingest from run 1
    assert fresh != parent and os.environ[PARENT_ENV] == fresh
    assert client.get_run(fresh).data.tags["srgan.cached_ingest_parent_run_id"] == parent
    # KFP's MLflow plugin: nothing is created or changed
    monkeypatch.setenv("MLFLOW_RUN_ID", "plugin-run")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    assert prepare_step(cfg, "http://ignored:5000", "", "kfp-run-3") == ""
    assert os.environ["MLFLOW_TRACKING_URI"] == tracking and os.environ[PARENT_ENV] == fresh
