"""The compiled Kubeflow pipeline: tasks, edges, resources, platform config, volume, retry,
exit handler, no secrets; and the srcore glue the components call (srcore.kfp_glue)."""

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

STEPS = {"ingest", "train", "evaluate", "register"}
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
    """The step tasks: inside the exit handler's DAG on a cluster build, else at the root."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for name, task in list(tasks.items()):
        if name.startswith("exit-handler"):
            tasks.update(spec["components"][task["componentRef"]["name"]]["dag"]["tasks"])
    return {k: v for k, v in tasks.items() if k in STEPS}


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
    # artifacts (small pointers to the volume) for lineage; the Config, model URI and parent run as parameters
    assert tasks["train"]["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"] == {
        "outputArtifactKey": "dataset", "producerTask": "ingest"}
    assert tasks["evaluate"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"] == "train"
    assert tasks["register"]["inputs"]["artifacts"]["metrics"]["taskOutputArtifact"]["producerTask"] == "evaluate"
    reg_params = tasks["register"]["inputs"]["parameters"]
    assert reg_params["model_uri"]["taskOutputParameter"] == {"outputParameterKey": "model_uri", "producerTask": "train"}
    assert reg_params["parent_run_id"]["taskOutputParameter"]["producerTask"] == "ingest"
    assert tasks["train"]["inputs"]["parameters"]["parent_run_id"]["taskOutputParameter"]["producerTask"] == "ingest"
    # the resolved Config travels once: ingest -> train -> evaluate, register
    config_from = {name: t["inputs"]["parameters"]["config_json"]["taskOutputParameter"]["producerTask"]
                   for name, t in tasks.items() if name != "ingest"}
    assert config_from == {"train": "ingest", "evaluate": "train", "register": "train"}


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
                "mlflow_tracking_uri", "experiment_name", "registered_model_name", "config_overrides", "require_gpu",
                "volume_root", "checkpoint_dir", "pvc_name", "pvc_size", "storage_class", "delete_pvc",
                "deploy", "deploy_namespace", "deploy_service_name", "run_key"}
    assert set(params) == expected
    assert all(p["parameterType"] == "STRING" for p in params.values())
    assert params["preset"]["defaultValue"] == "seed"
    assert params["epochs"]["defaultValue"] == ""  # '' = the preset decides
    assert params["require_gpu"]["defaultValue"] == "true" and params["volume_root"]["defaultValue"] == "/mnt/srgan"
    # after ingest, no step repeats the Config parameters: config_json carries them
    for comp in (f"comp-{s}" for s in STEPS - {"ingest"}):
        inputs = set(spec["components"][comp]["inputDefinitions"]["parameters"])
        assert {"config_json", "mlflow_tracking_uri", "parent_run_id"} <= inputs
        assert not ({"preset", "config_overrides", "epochs", "source", "experiment_name"} & inputs), comp


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
    # no node selector by default: the nvidia.com/gpu limit alone schedules train on a GPU node
    assert "nodeSelector" not in train
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
    # ingest opens the run's MLflow parent, so it is never cached; re-ingest on the
    # volume is a no-op when the manifest matches
    for step in STEPS:
        assert not tasks[step]["cachingOptions"].get("enableCache"), step
    assert tasks["ingest"]["retryPolicy"]["maxRetryCount"] == 3
    assert tasks["register"]["retryPolicy"]["maxRetryCount"] == 3
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 2  # resumes from its checkpoints on the volume


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


def test_image_pull_secret_on_every_task_of_both_pipelines(tmp_path, monkeypatch):
    from kfp import compiler

    from pipeline.sweep import build_sweep_pipeline

    monkeypatch.setenv("SRGAN_IMAGE_PULL_SECRET", "regcred, other")
    _, platform, _ = _compile(tmp_path)
    assert platform and all([p["secretName"] for p in e.get("imagePullSecret", [])] == ["regcred", "other"]
                            for e in platform.values())
    out = tmp_path / "sweep.yaml"
    compiler.Compiler().compile(build_sweep_pipeline(image="registry.example/srgan:abc", cluster=True), str(out))
    executors = list(yaml.safe_load_all(out.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors and all("imagePullSecret" in e for e in executors.values())
    monkeypatch.delenv("SRGAN_IMAGE_PULL_SECRET")
    assert not any("imagePullSecret" in e for e in _compile(tmp_path)[1].values())


def test_cli_compile_writes_yaml(tmp_path):
    from pipeline.__main__ import main

    out = tmp_path / "srgan_pipeline.yaml"
    assert main(["compile", "--image", "registry.example/srgan:abc", "--out", str(out)]) == 0
    assert next(yaml.safe_load_all(out.read_text()))["pipelineInfo"]["name"] == "srgan-celeba"


def test_volume_retry_gpu_and_exit_handler_in_compiled_ir(tmp_path):
    """`python -m pipeline compile --image example.org/srgan:abc --out p.yaml` (issue 10's check)."""
    out = tmp_path / "p.yaml"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "compile", "--image", "example.org/srgan:abc", "--out",
                           str(out)], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec, platform_doc = list(yaml.safe_load_all(out.read_text()))[:2]
    executors = platform_doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for step in ("ingest", "train", "evaluate"):
        (mount,) = executors[f"exec-{step}"]["pvcMount"]
        assert mount["mountPath"] == "/mnt/srgan"
        # the field every supported backend reads (pvcNameParameter fails drivers before 2.5)
        assert mount == {"componentInputParameter": "pipelinechannel--pvc_name", "mountPath": "/mnt/srgan"}
    assert "pvcMount" not in executors["exec-register"]  # reads nothing from the volume
    assert int(executors["exec-train"]["activeDeadlineSeconds"]) > 0  # timeout
    tasks = _tasks(spec)
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 2
    assert spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]["accelerator"][
        "resourceType"] == "nvidia.com/gpu"
    root = spec["root"]["dag"]["tasks"]
    handlers = [name for name in root if name.startswith("exit-handler")]
    assert handlers and set(_tasks(spec)) == STEPS
    finish = root["finish"]
    assert finish["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert finish["dependentTasks"] == handlers
    # no PipelineTaskFinalStatus (KFP < 2.14 refuses the run): finish reads the steps' MLflow runs
    finish_inputs = spec["components"]["comp-finish"]["inputDefinitions"]["parameters"]
    assert all(p["parameterType"] != "TASK_FINAL_STATUS" for p in finish_inputs.values())
    assert root["finish"]["inputs"]["parameters"]["pipeline_run_id"]["runtimeValue"]["constant"] == \
        "{{$.pipeline_job_uuid}}"
    # the run key every version resolves: a pipeline parameter (submit always sets it)
    assert root["finish"]["inputs"]["parameters"]["run_key"]["componentInputParameter"] == "run_key"
    ingest = _tasks(spec)["ingest"]["inputs"]["parameters"]
    assert ingest["run_key"]["componentInputParameter"] == "pipelinechannel--run_key"


def test_created_claim_is_mounted_and_deleted_on_request(tmp_path):
    from pipeline.dag import ClusterSettings

    spec, platform, _ = _compile(tmp_path, settings=ClusterSettings(create_pvc=True))
    mount = platform["exec-train"]["pvcMount"][0]
    # the claim created before the exit handler, handed into it
    assert mount["pvcNameParameter"]["componentInputParameter"] == "pipelinechannel--createpvc-name"
    assert "createpvc" in spec["root"]["dag"]["tasks"]
    text = yaml.safe_dump(spec)
    assert "deletepvc" in text and "delete_pvc" in text


# ---- srcore.kfp_glue: the glue inside the components ---------------------------------

def test_pipeline_config_layers():
    from srcore.config import ConfigError
    from srcore.kfp_glue import pipeline_config

    cfg = pipeline_config("smoke", json.dumps({"epochs": 5, "gen_blocks": 3}), epochs="", batch_size="4", limit=None)
    assert (cfg.epochs, cfg.gen_blocks, cfg.batch_size, cfg.limit) == (5, 3, 4, 48)
    assert pipeline_config("smoke", '{"epochs": 5}', epochs="7").epochs == 7  # the named parameter wins
    assert pipeline_config("", "", source="demo").epochs == 60
    with pytest.raises(ConfigError, match="JSON object"):
        pipeline_config("smoke", "[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        pipeline_config("smoke", "{epochs: 5}")
    with pytest.raises(ConfigError, match="unknown parameter"):
        pipeline_config("smoke", '{"no_such_field": 1}')


def test_metrics_and_html(tmp_path):
    from PIL import Image

    from srcore.kfp_glue import html_report, read_metrics, scalar_metrics, write_metrics

    result = {"test_psnr": 25.5, "test_ssim": 0.8, "test_lpips": None, "count": 8, "ok": True,
              "nan": float("nan"), "model": "x.keras"}
    assert scalar_metrics(result) == {"test_psnr": 25.5, "test_ssim": 0.8, "count": 8.0}
    write_metrics(tmp_path / "m" / "metrics", result)
    assert read_metrics(tmp_path / "m" / "metrics")["model"] == "x.keras"
    assert read_metrics(tmp_path / "missing", {"test_psnr": 1.0}) == {"test_psnr": 1.0}
    Image.new("RGB", (8, 4), (255, 0, 0)).save(tmp_path / "grid.png")
    page = html_report(result, tmp_path)
    assert page.count("data:image/png;base64,") == 1 and "test_psnr" in page and "25.5000" in page


def test_pipeline_parent_run_lifecycle(tracking, monkeypatch):
    """Without the plugin: ingest opens a RUNNING parent tagged with the run key; later
    steps join it as children; the exit task ends it FAILED or FINISHED from the steps'
    own runs (no PipelineTaskFinalStatus), and nothing under it stays RUNNING."""
    import mlflow

    from srcore import tracking as tr
    from srcore.config import build_config
    from srcore.kfp_glue import connect, finish

    cfg = build_config("smoke", overrides={"experiment_name": "kfp-glue"})
    client = mlflow.tracking.MlflowClient()
    parent = connect(cfg, tracking, pipeline_run_id="kfp-run-1", first=True)  # ingest
    run = client.get_run(parent)
    assert run.info.status == "RUNNING" and run.data.tags[tr.KFP_RUN_TAG] == "kfp-run-1"
    assert run.data.params["epochs"] == str(cfg.epochs) and "" not in run.data.params.values()
    assert run.info.run_name == "demo p1+e2 mse bs8"
    try:
        assert connect(cfg, tracking, parent) == parent  # train, evaluate, register
        with tr.step_run(cfg, "ingest"):
            pass
        with pytest.raises(RuntimeError):  # train fails on its first attempt ...
            with tr.step_run(cfg, "train"):
                raise RuntimeError("OOM")
        with tr.step_run(cfg, "train"):  # ... and succeeds on its retry
            pass
        with tr.step_run(cfg, "register") as child:
            pass
        child = client.get_run(child.info.run_id)
        assert child.data.tags["mlflow.parentRunId"] == parent and child.info.experiment_id == run.info.experiment_id
        assert child.info.run_name == "register demo p1+e2 mse bs8"
        # a killed pod's evaluate run stays RUNNING: the pipeline failed, and the run is ended
        killed = client.create_run(run.info.experiment_id, tags={tr.PARENT_TAG: parent, tr.STEP_TAG: "evaluate"})
        (ended,) = finish(tracking, "{{$.pipeline_job_uuid}}", "kfp-run-1")  # KFP < 2.5: the key is run_key
        assert ended["failed"] and ended["why"] == "evaluate RUNNING"
        assert client.get_run(parent).info.status == "FAILED"
        assert client.get_run(killed.info.run_id).info.status == "FAILED"
        assert finish(tracking, "kfp-run-1") == []  # ended parents are left alone

        other = connect(cfg, tracking, pipeline_run_id="kfp-run-2", first=True)
        with tr.step_run(cfg, "train"):
            pass
        (ended,) = finish(tracking, "kfp-run-2")  # register never ran
        assert ended["failed"] and "register never ran" in ended["why"]
        third = connect(cfg, tracking, pipeline_run_id="kfp-run-3", first=True)
        for step in ("ingest", "train", "evaluate", "register"):
            with tr.step_run(cfg, step):
                pass
        assert finish(tracking, "kfp-run-3") == [{"run_id": third, "failed": False, "why": "every step finished"}]
        assert client.get_run(third).info.status == "FINISHED" and client.get_run(other).info.status == "FAILED"
        assert finish(tracking, "{{$.pipeline_job_uuid}}") == []  # no key: nothing to end, nothing wrong ended
    finally:
        tr.join_parent("")
    # KFP's MLflow plugin: nothing is created or changed
    monkeypatch.setenv("MLFLOW_RUN_ID", "plugin-run")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    assert connect(cfg, "http://ignored:5000", "", "kfp-run-4", first=True) == ""
    assert os.environ["MLFLOW_TRACKING_URI"] == tracking
    assert finish("http://ignored:5000", "kfp-run-4") == []


def test_run_key_exists_on_every_backend():
    """KFP before 2.5 passes {{$.pipeline_job_uuid}} through literally (#11599): every run
    would share runs/{{$.pipeline_job_uuid}}/model. The run key is run_key, else the
    resolved run id; an unresolved one without run_key is refused, naming the fix."""
    from srcore.config import ConfigError
    from srcore.kfp_glue import pipeline_config, run_key

    assert run_key("nightly-1a2b", "{{$.pipeline_job_uuid}}") == "nightly-1a2b"
    assert run_key("", "7c0e5e9e-uuid") == "7c0e5e9e-uuid"  # KFP >= 2.5 resolved it
    assert run_key("", "") == ""  # not a KFP run
    with pytest.raises(ConfigError, match="run_key=''.*KFP before 2.5.*submit sets one"):
        run_key("", "{{$.pipeline_job_uuid}}")
    with pytest.raises(ConfigError, match="run_key='../x'"):
        run_key("../x")
    cfg = pipeline_config("smoke", "", "/mnt/srgan", run_key("a-1", "{{$.pipeline_job_uuid}}"))
    assert cfg.model_dir == "/mnt/srgan/runs/a-1/model"


# ---- the support matrix and the IR type check --------------------------------------------


@pytest.fixture(scope="module")
def compiled_irs(tmp_path_factory):
    """Every pipeline as a cluster compiles it: main and sweep, each with and without
    SRGAN_CREATE_PVC=true (read from the environment like `python -m pipeline compile`)."""
    from kfp import compiler

    from pipeline.dag import ClusterSettings, build_pipeline
    from pipeline.sweep import build_sweep_pipeline

    out, tmp = {}, tmp_path_factory.mktemp("irs")
    mp = pytest.MonkeyPatch()
    try:
        for create in ("false", "true"):
            mp.setenv("SRGAN_CREATE_PVC", create)
            for name, build in (("main", build_pipeline), ("sweep", build_sweep_pipeline)):
                path = tmp / f"{name}-{create}.yaml"
                compiler.Compiler().compile(build(image="registry.example/srgan:abc", cluster=True,
                                                  settings=ClusterSettings.from_env()), str(path))
                out[(name, create)] = next(yaml.safe_load_all(path.read_text()))
    finally:
        mp.undo()
    assert any("createpvc" in spec["root"]["dag"]["tasks"] for spec in out.values())
    return out


def test_every_pipeline_passes_the_ir_type_check(compiled_irs):
    """For every task input fed by another task's output, a loop item or a pipeline
    parameter, the declared types match (the KFP driver checks them; kfp.local does not)."""
    from pipeline.support import type_mismatches

    for key, spec in compiled_irs.items():
        assert type_mismatches(spec) == [], key
    # the sweep's loop item is the STRUCT start_trial takes (a bare `list` made it a STRING)
    sweep = compiled_irs[("sweep", "false")]
    body = next(c for n, c in sweep["components"].items() if n.startswith("comp-for-loop"))
    items = [t for t, p in body["inputDefinitions"]["parameters"].items() if t.endswith("-loop-item")]
    assert [body["inputDefinitions"]["parameters"][i]["parameterType"] for i in items] == ["STRUCT"]


def test_ir_type_check_catches_a_loop_item_of_the_wrong_type(tmp_path):
    """The sweep's old bug, in a pipeline of its own: `trials: list` feeding `trial: dict`."""
    from kfp import compiler

    from pipeline.support import type_mismatches
    from helpers_ir_pipelines import loop_item_mismatch

    out = tmp_path / "wrong.yaml"
    compiler.Compiler().compile(loop_item_mismatch, str(out))
    spec = next(yaml.safe_load_all(out.read_text()))
    (problem,) = type_mismatches(spec)
    assert "parameter trial is STRUCT" in problem and "loop-item" in problem and problem.endswith("is STRING")
    # the check compares the declared types: a consumer declaring STRING would pass
    comp = next(c for n, c in spec["components"].items() if n.startswith("comp-takes-dict"))
    comp["inputDefinitions"]["parameters"]["trial"]["parameterType"] = "STRING"
    assert type_mismatches(spec) == []


def test_support_matrix_is_what_the_ir_uses(compiled_irs):
    """pipeline/support.py's table: the main pipeline uses no IR feature KFP 2.2 lacks
    (no PipelineTaskFinalStatus, no dsl.Collected); the sweep's minimum is forced by what
    its IR uses; the features older backends drop silently are listed as such."""
    from pipeline.support import DEGRADED, FEATURES, FLOOR, SUPPORT, ir_features, required_version

    for (name, _), spec in compiled_irs.items():
        features = ir_features(spec)
        assert required_version(features) == (SUPPORT[name].min_version, SUPPORT[name].forced_by), name
        assert {f for f in features if not FEATURES[f].hard} == set(DEGRADED[name]), name
    main = ir_features(compiled_irs[("main", "false")])
    assert not {f for f in main if FEATURES[f].hard} and SUPPORT["main"].min_version == FLOOR == (2, 2, 0)
    assert "task_final_status" not in main and "collected" not in ir_features(compiled_irs[("sweep", "false")])


def test_ir_features_detect_final_status_and_collected(tmp_path):
    """The scanner sees what forces KFP 2.14: an exit task taking PipelineTaskFinalStatus and
    a fan-in with dsl.Collected (what the pipelines used before)."""
    from kfp import compiler

    from pipeline.support import ir_features, required_version
    from helpers_ir_pipelines import needs_kfp_2_14

    out = tmp_path / "old.yaml"
    compiler.Compiler().compile(needs_kfp_2_14, str(out))
    features = ir_features(next(yaml.safe_load_all(out.read_text())))
    assert {"task_final_status", "collected", "exit_handler"} <= features
    assert required_version(features) == ((2, 14, 0), ("collected", "task_final_status"))


def _platform_keys(node, found=None) -> set:
    found = set() if found is None else found
    if isinstance(node, dict):
        for k, v in node.items():
            found.add(k if k != "optional" else f"optional={v}")
            _platform_keys(v, found)
    elif isinstance(node, list):
        for v in node:
            _platform_keys(v, found)
    return found


def test_compiled_packages_have_no_platform_field_kfp_before_2_5_refuses(tmp_path, monkeypatch):
    """kfp-kubernetes 2.x writes secretNameParameter / pvcNameParameter beside the old
    secretName / componentInputParameter; KFP 2.2-2.4 drivers unmarshal the platform spec
    strictly and fail every such task (#11662). What compile/submit/upload write keeps only
    the old fields, with the same meaning."""
    from pipeline.run import check_server, compile_pipeline
    from pipeline.support import BackendTooOld, legacy_platform_spec
    from pipeline.sweep import compile_sweep

    for k, v in (("SRGAN_CREATE_PVC", "true"), ("SRGAN_S3_SECRET", "mlflow-s3"), ("SRGAN_IMAGE_PULL_SECRET", "regcred"),
                 ("SRGAN_GPU_NODE_SELECTOR", "a=b")):
        monkeypatch.setenv(k, v)
    for name, fn in (("main", compile_pipeline), ("sweep", compile_sweep)):
        text = fn(tmp_path / f"{name}.yaml", image="registry.example/srgan:abc").read_text()
        assert text.startswith("# PIPELINE DEFINITION"), name  # the compiler's header stays
        spec, platform = list(yaml.safe_load_all(text))
        keys = _platform_keys(platform)
        assert not {"secretNameParameter", "pvcNameParameter", "optional=False"} & keys, (name, keys)
        assert {"secretName", "componentInputParameter", "secretAsEnv", "pvcMount", "imagePullSecret"} <= keys, name
        assert spec["pipelineInfo"]["name"].startswith("srgan-celeba")
        secrets = {s["secretName"] for ex in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
                   for s in ex.get("secretAsEnv", [])}
        assert secrets == {"mlflow-credentials", "mlflow-s3"}, name
    # an optional Secret: a field old drivers do not know, reported (and warned about)
    monkeypatch.setenv("SRGAN_MLFLOW_SECRET_OPTIONAL", "true")
    from pipeline.support import legacy_package

    assert legacy_package(compile_pipeline(tmp_path / "opt.yaml", image="registry.example/srgan:abc")) == \
        {"platform_parameters"}
    # a twin that says more than the old field (a Secret name from a parameter) needs 2.5
    plat = {"secretAsEnv": [{"secretName": "", "secretNameParameter": {"componentInputParameter": "s"}}]}
    assert legacy_platform_spec(plat)[1] == {"platform_parameters"}

    class Healthz:  # what kfp.Client's healthz API answers a 2.3.0 server with (raw body, see server_tag)
        def healthz_service_get_healthz(self, _preload_content=False):
            return type("R", (), {"data": b'{"tag_name": "2.3.0"}'})()

    class Client:  # a package compiled elsewhere is judged by its platform spec too
        _healthz_api = Healthz()

    pkg = tmp_path / "other.yaml"
    pkg.write_text(yaml.safe_dump_all([spec, {"platforms": {"kubernetes": {"deploymentSpec": {"executors": {
        "exec-x": plat}}}}}]))
    with pytest.raises(BackendTooOld, match=r"needs KFP backend 2\.5\.0 or later.*2\.3\.0"):
        check_server(Client(), "main", "http://h", pkg)
