"""The Kubeflow pipeline (`pipeline.dag`) and its CLI (`python -m pipeline`)."""

from pipeline.dag import PIPELINE_NAME, ClusterSettings, build_pipeline


def __getattr__(name: str):
    if name == "srgan_pipeline":  # built on first use (see pipeline.dag.__getattr__)
        from pipeline import dag

        return dag.srgan_pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["PIPELINE_NAME", "ClusterSettings", "build_pipeline", "srgan_pipeline"]
