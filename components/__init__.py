"""One thin KFP v2 component per step: parse the inputs, call srcore.

The component objects live in the submodules (`components.ingest.ingest`, ...), which
keep their step names so the compiled tasks are named ingest, train, evaluate and
register (plus the exit task `finish`). The base image is one setting for all of them: `$SRGAN_IMAGE` at import
(compile) time, else `ghcr.io/your-org/srgan-celeba:<package version>`.
"""

# Known repeats (`duplicates`): the components' signatures look alike (artifacts,
# config_json, mlflow_tracking_uri, parent_run_id) because KFP reads each component's
# explicit signature and embeds only its own body; tests/test_steps.py checks them
# against srcore.steps.STEPS and srcore.kfp_glue.STEP_PARAMS instead.
from components._common import BASE_IMAGE, IMAGE_ENV, default_image, with_image

__all__ = ["BASE_IMAGE", "IMAGE_ENV", "default_image", "with_image", "all_components"]


def all_components(image: str | None = None) -> dict:
    """{name: component} for every step that runs on Kubeflow (a row of srcore.steps.STEPS
    with a module here) plus the exit task `finish`, rebuilt for `image` when given."""
    import importlib

    from srcore.steps import STEPS

    comps = {}
    for name in [*STEPS, "finish"]:
        try:
            module = importlib.import_module(f"components.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"components.{name}":
                raise
            continue  # a step that runs only locally (upscale, main)
        comps[name] = getattr(module, name)
    if image:
        comps = {k: with_image(c, image) for k, c in comps.items()}
    return comps
