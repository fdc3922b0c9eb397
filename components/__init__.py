"""One thin KFP v2 component per step: parse the inputs, call srcore.

The component objects live in the submodules (`components.ingest.ingest`, ...), which
keep their step names so the compiled tasks are named ingest, train, evaluate and
register. The base image is one setting for all of them: `$SRGAN_IMAGE` at import
(compile) time, else `ghcr.io/your-org/srgan-celeba:<package version>`.
"""

from components._common import BASE_IMAGE, IMAGE_ENV, default_image, with_image

__all__ = ["BASE_IMAGE", "IMAGE_ENV", "default_image", "with_image", "all_components"]


def all_components(image: str | None = None) -> dict:
    """{step: component}, rebuilt for `image` when given."""
    from components.evaluate import evaluate
    from components.ingest import ingest
    from components.register import register
    from components.train import train

    comps = {"ingest": ingest, "train": train, "evaluate": evaluate, "register": register}
    if image:
        comps = {k: with_image(c, image) for k, c in comps.items()}
    return comps
