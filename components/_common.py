"""Compile-time settings shared by the components: the one image and its pull secret.

Nothing here runs inside the containers: a lightweight component embeds only its own
function body, which imports `srcore` from the project's image.

The image: `--image`, else `$SRGAN_IMAGE`, else `$SRGAN_IMAGE_REPOSITORY:<git commit>`
(the tag the documented `docker build` uses, so that a code change never reuses a tag
a node has cached). `resolve_image` refuses the placeholder registry that the component
objects are built with at import time: nobody can pull it.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Callable

from kfp import dsl

import srcore

log = logging.getLogger(__name__)

IMAGE_ENV = "SRGAN_IMAGE"
IMAGE_REPOSITORY_ENV = "SRGAN_IMAGE_REPOSITORY"
PULL_SECRET_ENV = "SRGAN_IMAGE_PULL_SECRET"
PLACEHOLDER_REPOSITORY = "ghcr.io/your-org/srgan-celeba"
IMAGE_REPOSITORY = PLACEHOLDER_REPOSITORY  # kept for callers of the old name
# what the component objects carry until a pipeline is built for a real image (refused
# by resolve_image; the version tag is only a name here, never a build's tag)
PLACEHOLDER_IMAGE = f"{PLACEHOLDER_REPOSITORY}:{srcore.__version__}"
# run-local: kfp.local's SubprocessRunner never pulls the image, it only needs a name
LOCAL_IMAGE = "srgan-celeba:local"
REPO_ROOT = Path(__file__).resolve().parents[1]


class ImageNotSetError(ValueError):
    """No usable image for a cluster build."""


def checkout_commit(short: int = 12) -> str | None:
    """HEAD's commit of this checkout (None outside git), '-dirty' when tracked files
    changed. Unlike srcore.tracking.git_commit (what a running container reports, from
    $SRGAN_GIT_COMMIT), this names the code being compiled here."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=20,
                              check=True).stdout.strip()
    try:
        commit = git("rev-parse", f"--short={short}", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def default_image() -> str | None:
    """`$SRGAN_IMAGE`, else `$SRGAN_IMAGE_REPOSITORY:<git commit>` (without '-dirty': the
    tag the build command uses), else None."""
    if os.environ.get(IMAGE_ENV):
        return os.environ[IMAGE_ENV]
    repository = os.environ.get(IMAGE_REPOSITORY_ENV, "").strip()
    commit = checkout_commit()
    if repository and commit:
        if commit.endswith("-dirty"):
            log.warning("the working tree has uncommitted changes: image tag %s names HEAD, which lacks them",
                        commit.removesuffix("-dirty"))
        return f"{repository}:{commit.removesuffix('-dirty')}"
    return None


def resolve_image(image: str | None = None) -> str:
    """The image a cluster pipeline runs: `image`, else default_image(); refuses none or
    the placeholder registry with what to do."""
    image = image or default_image()
    if not image:
        raise ImageNotSetError(
            "no component image: build and push the project's image, then pass --image <registry>/srgan-celeba:"
            "<git commit>, or set SRGAN_IMAGE to it, or SRGAN_IMAGE_REPOSITORY=<registry>/srgan-celeba to tag it "
            "with this checkout's commit (see pipeline/README.md, 'Image')")
    if image.startswith(PLACEHOLDER_REPOSITORY + ":") or image == PLACEHOLDER_REPOSITORY:
        raise ImageNotSetError(
            f"image {image} is the placeholder registry, which no cluster can pull: pass --image or set "
            "SRGAN_IMAGE to the image you built and pushed (see pipeline/README.md, 'Image')")
    return image


def image_pull_secrets() -> list[str]:
    """Names of the Kubernetes Secrets for pulling the image (`$SRGAN_IMAGE_PULL_SECRET`,
    comma-separated; empty = none) for `kfp.kubernetes.set_image_pull_secrets`."""
    return [s.strip() for s in os.environ.get(PULL_SECRET_ENV, "").split(",") if s.strip()]


BASE_IMAGE = os.environ.get(IMAGE_ENV) or PLACEHOLDER_IMAGE


def component(func: Callable | None = None, *, base_image: str | None = None):
    """`dsl.component` for the project's image: lightweight (SubprocessRunner can run it),
    no packages to install (the image has srcore, kfp and TensorFlow)."""
    def wrap(f: Callable):
        return dsl.component(f, base_image=base_image or BASE_IMAGE, install_kfp_package=False)

    return wrap(func) if func is not None else wrap


def with_image(comp, image: str):
    """The same component built for another image (a pipeline build option)."""
    return dsl.component(comp.python_func, base_image=image, install_kfp_package=False)
