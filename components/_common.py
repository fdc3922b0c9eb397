"""Compile-time settings shared by the components: the one base image.

Nothing here runs inside the containers: a lightweight component embeds only its own
function body, which imports `srcore` from the project's image.
"""

from __future__ import annotations

import os
from typing import Callable

from kfp import dsl

import srcore

IMAGE_ENV = "SRGAN_IMAGE"
IMAGE_REPOSITORY = "ghcr.io/your-org/srgan-celeba"


def default_image() -> str:
    """`$SRGAN_IMAGE`, else the project's image tagged with the package version."""
    return os.environ.get(IMAGE_ENV) or f"{IMAGE_REPOSITORY}:{srcore.__version__}"


BASE_IMAGE = default_image()


def component(func: Callable | None = None, *, base_image: str | None = None):
    """`dsl.component` for the project's image: lightweight (SubprocessRunner can run it),
    no packages to install (the image has srcore, kfp and TensorFlow)."""
    def wrap(f: Callable):
        return dsl.component(f, base_image=base_image or BASE_IMAGE, install_kfp_package=False)

    return wrap(func) if func is not None else wrap


def with_image(comp, image: str):
    """The same component built for another image (a pipeline build option)."""
    return dsl.component(comp.python_func, base_image=image, install_kfp_package=False)
