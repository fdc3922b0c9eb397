"""The Kubeflow pipeline: ingest -> train -> evaluate -> register.

`build_pipeline(image=None, cluster=True, settings=None)` returns the pipeline
(a KFP GraphComponent); `srgan_pipeline` is the default build. Cluster settings (GPU
type and count, resources, GPU node selector and toleration, the MLflow credentials
Secret) are module defaults overridable by environment variables at compile time, see
`ClusterSettings.from_env`. `cluster=False` leaves out the Kubernetes platform config
(node selector, toleration, Secret); the local SubprocessRunner ignores it anyway, so
`run-local` runs the same build that `compile` writes.

Every pipeline parameter is a string where '' means "not given": the preset (and
`config_overrides`, a JSON object of Config fields) decide, exactly as for `srgan`
flags and MLproject parameters.
"""


import dataclasses
import os
from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Artifact, Dataset, Metrics, Model

import components

PIPELINE_NAME = "srgan-celeba"
PIPELINE_DESCRIPTION = "SRGAN x4 face super-resolution (32x32 -> 128x128 CelebA): ingest, train, evaluate, register."

# MLflow credentials come from this Secret (never from parameters).
MLFLOW_SECRET_KEYS = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclasses.dataclass(frozen=True)
class Resources:
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    gpu_type: str = "nvidia.com/gpu"  # the Kubernetes extended resource of NVIDIA's device plugin
    gpu_count: int = 1
    # label of NVIDIA GPU feature discovery / the GPU operator; "" = no node selector
    gpu_node_selector: str = "nvidia.com/gpu.present=true"
    # key:operator[:value]:effect of the GPU nodes' taint; "" = no toleration
    gpu_toleration: str = "nvidia.com/gpu:Exists:NoSchedule"
    mlflow_secret: str = "mlflow-credentials"  # "" = no Secret
    mlflow_secret_optional: bool = False
    mlflow_tracking_uri: str = ""  # default of the pipeline parameter
    ingest: Resources = Resources("2", "4", "4Gi", "8Gi")
    train: Resources = Resources("4", "8", "16Gi", "32Gi")
    evaluate: Resources = Resources("2", "4", "8Gi", "12Gi")
    register: Resources = Resources("500m", "1", "2Gi", "4Gi")
    ingest_retries: int = 3
    register_retries: int = 3

    @classmethod
    def from_env(cls) -> "ClusterSettings":
        """Defaults overridden by SRGAN_GPU_TYPE, SRGAN_GPU_COUNT, SRGAN_GPU_NODE_SELECTOR,
        SRGAN_GPU_TOLERATION, SRGAN_MLFLOW_SECRET, SRGAN_MLFLOW_SECRET_OPTIONAL,
        SRGAN_MLFLOW_TRACKING_URI, SRGAN_TRAIN_CPU / SRGAN_TRAIN_MEMORY ("request[,limit]")."""
        d = cls()

        def res(name: str, base: Resources) -> Resources:
            cpu = _env(f"SRGAN_{name}_CPU", "")
            mem = _env(f"SRGAN_{name}_MEMORY", "")
            out = base
            if cpu:
                req, _, lim = cpu.partition(",")
                out = dataclasses.replace(out, cpu_request=req, cpu_limit=lim or req)
            if mem:
                req, _, lim = mem.partition(",")
                out = dataclasses.replace(out, memory_request=req, memory_limit=lim or req)
            return out

        return cls(
            gpu_type=_env("SRGAN_GPU_TYPE", d.gpu_type),
            gpu_count=int(_env("SRGAN_GPU_COUNT", str(d.gpu_count))),
            gpu_node_selector=_env("SRGAN_GPU_NODE_SELECTOR", d.gpu_node_selector),
            gpu_toleration=_env("SRGAN_GPU_TOLERATION", d.gpu_toleration),
            mlflow_secret=_env("SRGAN_MLFLOW_SECRET", d.mlflow_secret),
            mlflow_secret_optional=_env("SRGAN_MLFLOW_SECRET_OPTIONAL", "false").lower() in ("1", "true", "yes"),
            mlflow_tracking_uri=_env("SRGAN_MLFLOW_TRACKING_URI", d.mlflow_tracking_uri),
            ingest=res("INGEST", d.ingest),
            train=res("TRAIN", d.train),
            evaluate=res("EVALUATE", d.evaluate),
            register=res("REGISTER", d.register),
        )


def _resources(task: dsl.PipelineTask, r: Resources) -> dsl.PipelineTask:
    return (task.set_cpu_request(r.cpu_request).set_cpu_limit(r.cpu_limit)
            .set_memory_request(r.memory_request).set_memory_limit(r.memory_limit))


def _toleration(spec: str) -> dict:
    parts = spec.split(":")
    if len(parts) == 3:
        key, operator, effect = parts
        value = None
    elif len(parts) == 4:
        key, operator, value, effect = parts
    else:
        raise ValueError(f"GPU toleration {spec!r}: expected key:operator[:value]:effect")
    return {"key": key or None, "operator": operator or None, "value": value or None, "effect": effect or None}


class PipelineOutputs(NamedTuple):
    dataset: Dataset
    model: Model
    metrics: Metrics
    report: HTML
    evaluation: Artifact
    model_uri: str
    model_version: str
    champion: bool


def build_pipeline(image: str | None = None, cluster: bool = True, settings: ClusterSettings | None = None):
    """The pipeline for `image` (default: components.BASE_IMAGE, i.e. $SRGAN_IMAGE)."""
    s = settings or ClusterSettings.from_env()
    comps = components.all_components(image)

    def platform(task: dsl.PipelineTask, gpu: bool = False) -> None:
        if not cluster:
            return
        if s.mlflow_secret:
            kubernetes.use_secret_as_env(task, secret_name=s.mlflow_secret, secret_key_to_env=MLFLOW_SECRET_KEYS,
                                         optional=s.mlflow_secret_optional)
        if gpu and s.gpu_node_selector:
            key, _, value = s.gpu_node_selector.partition("=")
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        if gpu and s.gpu_toleration:
            kubernetes.add_toleration(task, **_toleration(s.gpu_toleration))

    @dsl.pipeline(name=PIPELINE_NAME, description=PIPELINE_DESCRIPTION)
    def srgan_pipeline(
        source: str = "",
        limit: str = "",
        test_count: str = "",
        epochs: str = "",
        pretrain_epochs: str = "",
        batch_size: str = "",
        content_loss: str = "",
        preset: str = "seed",
        mlflow_tracking_uri: str = s.mlflow_tracking_uri,
        experiment_name: str = "",
        registered_model_name: str = "",
        config_overrides: str = "",
    ) -> PipelineOutputs:
        tracking = dict(experiment_name=experiment_name, mlflow_tracking_uri=mlflow_tracking_uri)
        common = dict(
            preset=preset, config_overrides=config_overrides, source=source, limit=limit, test_count=test_count,
            epochs=epochs, pretrain_epochs=pretrain_epochs, batch_size=batch_size, content_loss=content_loss,
            registered_model_name=registered_model_name, pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **tracking,
        )

        # only what shapes the data, so that training parameters keep the ingest cache
        ingest = comps["ingest"](preset=preset, config_overrides=config_overrides, source=source, limit=limit,
                                 test_count=test_count, **tracking)
        _resources(ingest, s.ingest).set_caching_options(True)
        ingest.set_retry(num_retries=s.ingest_retries, backoff_duration="60s", backoff_factor=2.0)
        platform(ingest)

        train = comps["train"](dataset=ingest.outputs["dataset"], parent_run_id=ingest.outputs["parent_run_id"],
                               **common)
        _resources(train, s.train).set_caching_options(False)
        if s.gpu_count > 0:
            train.set_accelerator_type(s.gpu_type).set_accelerator_limit(s.gpu_count)
        platform(train, gpu=True)

        evaluate = comps["evaluate"](dataset=ingest.outputs["dataset"], model=train.outputs["model"],
                                     parent_run_id=train.outputs["parent_run_id"], **common)
        _resources(evaluate, s.evaluate).set_caching_options(False)
        platform(evaluate)

        register = comps["register"](metrics=evaluate.outputs["metrics"], model_uri=train.outputs["model_uri"],
                                     manifest_hash=ingest.outputs["content_hash"],
                                     parent_run_id=train.outputs["parent_run_id"], **common)
        _resources(register, s.register).set_caching_options(False)
        register.set_retry(num_retries=s.register_retries, backoff_duration="30s", backoff_factor=2.0)
        platform(register)

        return PipelineOutputs(
            dataset=ingest.outputs["dataset"], model=train.outputs["model"], metrics=evaluate.outputs["metrics"],
            report=evaluate.outputs["report"], evaluation=evaluate.outputs["evaluation"], model_uri=train.outputs["model_uri"],
            model_version=register.outputs["version"], champion=register.outputs["champion"],
        )

    return srgan_pipeline


srgan_pipeline = build_pipeline()
