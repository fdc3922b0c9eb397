"""The Kubeflow pipeline (`pipeline.dag`) and its CLI (`python -m pipeline`)."""

from pipeline.dag import PIPELINE_NAME, ClusterSettings, build_pipeline, srgan_pipeline

__all__ = ["PIPELINE_NAME", "ClusterSettings", "build_pipeline", "srgan_pipeline"]
