"""Operator defaults and the docs that describe them: no GPU node selector by default, the
slim CPU image for every task but train, and pipeline/README.md's parameter table equal
to the compiled pipeline's parameters (names and defaults)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "pipeline" / "README.md"
GPU_IMAGE, CPU_IMAGE = "registry.example/srgan:abc", "registry.example/srgan:abc-cpu"


def _compile(tmp_path: Path, **kw) -> tuple[dict, dict]:
    from kfp import compiler

    from pipeline.dag import build_pipeline

    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(build_pipeline(**kw), str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def default_build(tmp_path_factory):
    from pipeline.dag import ClusterSettings

    return _compile(tmp_path_factory.mktemp("default"), image=GPU_IMAGE, cluster=True, settings=ClusterSettings())


def test_no_gpu_node_selector_by_default_the_accelerator_limit_schedules_train(default_build):
    spec, platform = default_build
    assert all("nodeSelector" not in executor for executor in platform.values())
    train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]["accelerator"]
    assert (train["resourceType"], train["resourceCount"]) == ("nvidia.com/gpu", "1")
    assert platform["exec-train"]["tolerations"][0]["key"] == "nvidia.com/gpu"  # a toleration never blocks


def test_one_image_for_all_tasks_unless_a_cpu_image_is_given(default_build, tmp_path):
    import dataclasses

    from pipeline.dag import ClusterSettings

    spec, _ = default_build
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {GPU_IMAGE}

    settings = dataclasses.replace(ClusterSettings(), cpu_image=CPU_IMAGE)
    spec, _ = _compile(tmp_path, image=GPU_IMAGE, cluster=True, settings=settings)
    images = {name: e["container"]["image"] for name, e in spec["deploymentSpec"]["executors"].items()}
    assert images.pop("exec-train") == GPU_IMAGE
    assert images and set(images.values()) == {CPU_IMAGE}, images  # ingest, evaluate, register, deploy, finish


def test_sweep_trains_on_the_gpu_image_and_runs_the_rest_on_the_cpu_image(tmp_path):
    import dataclasses

    from kfp import compiler

    from pipeline.dag import ClusterSettings
    from pipeline.sweep import build_sweep_pipeline

    settings = dataclasses.replace(ClusterSettings(), cpu_image=CPU_IMAGE)
    out = tmp_path / "sweep.yaml"
    compiler.Compiler().compile(build_sweep_pipeline(image=GPU_IMAGE, cluster=True, settings=settings), str(out))
    spec = next(yaml.safe_load_all(out.read_text()))
    images = {name: e["container"]["image"] for name, e in spec["deploymentSpec"]["executors"].items()}
    assert {n for n, i in images.items() if i == GPU_IMAGE} == {"exec-train"}, images
    assert {"exec-start-trial", "exec-pick-best", "exec-ingest"} <= {n for n, i in images.items() if i == CPU_IMAGE}


def test_cpu_image_from_env_and_placeholder_refused(monkeypatch, tmp_path):
    from components._common import PLACEHOLDER_IMAGE, ImageNotSetError
    from pipeline.dag import ClusterSettings, build_pipeline

    monkeypatch.setenv("SRGAN_CPU_IMAGE", CPU_IMAGE)
    assert ClusterSettings.from_env().cpu_image == CPU_IMAGE
    monkeypatch.setenv("SRGAN_CPU_IMAGE", PLACEHOLDER_IMAGE)
    with pytest.raises(ImageNotSetError, match="placeholder"):
        build_pipeline(image=GPU_IMAGE, cluster=True, settings=ClusterSettings.from_env())


# ---- pipeline/README.md ------------------------------------------------------------------


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _readme_parameters() -> dict[str, str]:
    """{parameter: default} from the table in 'Parameters' (first backticked value of the
    default cell, one per parameter when the row lists several; `''` = empty)."""
    table: dict[str, str] = {}
    for line in _section("Parameters").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([a-z_]+)`", cells[0])
        defaults = [("" if d == "''" else d) for d in re.findall(r"`([^`]*)`", cells[1].split("(")[0])]
        if len(defaults) == 1:
            defaults *= len(names)
        assert len(defaults) == len(names), f"README row {cells[0]}: {len(names)} names, defaults {defaults}"
        for name, default in zip(names, defaults):
            assert name not in table, f"{name} twice in the README's parameter table"
            table[name] = default
    return table


def test_readme_parameter_table_is_the_compiled_pipelines(default_build):
    spec, _ = default_build
    compiled = {name: p.get("defaultValue", "") for name, p in spec["root"]["inputDefinitions"]["parameters"].items()}
    documented = _readme_parameters()
    assert set(documented) == set(compiled), (
        f"pipeline/README.md 'Parameters' lacks {sorted(set(compiled) - set(documented))}, "
        f"documents unknown {sorted(set(documented) - set(compiled))}")
    assert documented == compiled


def test_readme_states_what_is_retried_and_the_current_auth_names():
    retries = _section("What is retried, and what is not")
    assert "**not retried**" in retries and "checkpoint_dir" in retries
    from pipeline.dag import ClusterSettings

    s = ClusterSettings()
    assert f"ingest {s.ingest_retries}x, train {s.train_retries}x, register {s.register_retries}x" in retries
    assert "preempted train pod is retried" not in README.read_text()
    auth = _section("Multi-user Kubeflow: tokens and cookies")
    assert "kubectl -n $NS create token default-editor --audience=pipelines.kubeflow.org" in auth
    assert "oauth2_proxy_kubeflow" in auth
    for code in ("pipeline/client.py", "pipeline/__main__.py"):
        assert "authservice_session" not in (REPO / code).read_text(), code
    assert "kubectl apply -k pipeline/k8s" in _section("From an empty cluster to a served model")


def test_a_bad_cluster_setting_is_one_line_from_the_cli_not_an_import_traceback(tmp_path):
    """The default pipeline is built on first use, so `python -m pipeline` reports a bad
    SRGAN_* compile setting as its own one-line error (exit 2) and writes nothing."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "SRGAN_S3_SECRET_KEYS": "bogus", "PYTHONPATH": str(repo)}
    out = tmp_path / "p.yaml"
    done = subprocess.run([sys.executable, "-m", "pipeline", "compile", "--image", "reg/srgan-celeba:abc",
                           "--out", str(out)], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "SRGAN_S3_SECRET_KEYS='bogus'" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()
