"""The Kubeflow pipeline: ingest -> train -> evaluate -> register, inside an exit handler.

`build_pipeline(image=None, cluster=True, settings=None)` returns the pipeline
(a KFP GraphComponent); `srgan_pipeline` is the default build. Cluster settings (GPU
type and count, resources, GPU node selector and toleration, the MLflow credentials
Secret) are module defaults overridable by environment variables at compile time, see
`ClusterSettings.from_env`. `cluster=False` leaves out the Kubernetes platform config
(node selector, toleration, Secret); the local SubprocessRunner ignores it anyway, so
`run-local` runs the same build that `compile` writes.

Every pipeline parameter is a string where '' means "not given": the preset (and
`config_overrides`, a JSON object of Config fields) decide, exactly as for `srgan`
flags and MLproject parameters. Ingest resolves them into one Config and hands it on as
`config_json`; train re-emits it (with its `overrides`) for evaluate and register.

Data lives on a shared volume mounted at `volume_root` in ingest, train and evaluate
(layout: srcore/kfp_glue.py): by default the existing claim `pvc_name`, or with
`ClusterSettings.create_pvc` (SRGAN_CREATE_PVC=true) a claim created for the run of
`pvc_size` / `storage_class`, deleted at the end when `delete_pvc` is true. KFP cannot
choose between the two at run time (a created claim's name cannot leave a condition
branch into `mount_pvc`), hence a compile-time choice. The KFP artifacts stay small
pointers (volume path and content hash in their metadata). Under kfp.local (no volume)
`volume_root` is a local folder.

Train checkpoints to `<volume_root>/runs/<run key>/model` (or `checkpoint_dir`, to
resume across pipeline runs) and has a retry policy and a timeout: a retried pod
resumes from its last checkpoint into the same MLflow run. The run key is the
`run_key` parameter (`python -m pipeline submit` always sets one), else the KFP run id
(srcore.kfp_glue.run_key: KFP before 2.5 leaves that placeholder unresolved). The exit
task `finish` ends the MLflow parent run (tagged with the run key) FAILED or FINISHED
as the steps' own MLflow runs say: it takes no PipelineTaskFinalStatus, so the pipeline
runs on KFP 2.2+ (the support matrix: pipeline/support.py).
"""


import dataclasses
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Artifact, Dataset, Metrics, Model

import components
from components._common import image_pull_secrets

PIPELINE_NAME = "srgan-celeba"
PIPELINE_DESCRIPTION = "SRGAN x4 face super-resolution (32x32 -> 128x128 CelebA): ingest, train, evaluate, register."

# Credentials come from Secrets, never from parameters: {Secret key: environment variable}.
# MLflow's own (SRGAN_MLFLOW_SECRET; other key names: SRGAN_MLFLOW_SECRET_KEYS):
MLFLOW_SECRET_KEYS = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}
# A direct S3/MinIO artifact store (server run with `--default-artifact-root s3://... --no-serve-artifacts`:
# the pods write to the bucket themselves), SRGAN_S3_SECRET; by default its keys are named like the
# variables (other names, or fewer keys, e.g. no endpoint on AWS: SRGAN_S3_SECRET_KEYS). A proxying
# server (`--artifacts-destination s3://...`, clients see `mlflow-artifacts:`) needs none of them.
S3_ENV_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION")
S3_SECRET_KEYS = {name: name for name in S3_ENV_VARS}


def parse_secret_keys(spec: str, setting: str) -> dict[str, str]:
    """`ENV_VAR=secret-key,...` (how SRGAN_*_SECRET_KEYS name them) -> {secret key: ENV_VAR}."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        env, sep, key = (x.strip() for x in item.partition("="))
        if not sep or not env or not key or not env.replace("_", "").isalnum() or env[0].isdigit():
            raise ValueError(f"{setting}={spec!r}: expected ENV_VAR=secret-key pairs separated by commas, "
                             f"e.g. AWS_ACCESS_KEY_ID=accesskey,AWS_SECRET_ACCESS_KEY=secretkey (bad item {item!r})")
        if key in out:
            raise ValueError(f"{setting}: secret key {key!r} is mapped twice")
        out[key] = env
    if not out:
        raise ValueError(f"{setting} is empty: name at least one ENV_VAR=secret-key pair (or unset it for the default)")
    return out


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
    # "" = none: the accelerator limit alone makes the scheduler pick a node whose device
    # plugin offers `gpu_type`. A label such as nvidia.com/gpu.present=true exists only
    # where GPU feature discovery (or the GPU operator) runs; elsewhere it would keep
    # train Pending forever.
    gpu_node_selector: str = ""
    # key:operator[:value]:effect of the GPU nodes' taint; "" = no toleration
    gpu_toleration: str = "nvidia.com/gpu:Exists:NoSchedule"
    mlflow_secret: str = "mlflow-credentials"  # "" = no Secret
    mlflow_secret_optional: bool = False
    mlflow_secret_keys: tuple[tuple[str, str], ...] = tuple(MLFLOW_SECRET_KEYS.items())  # (Secret key, env var)
    s3_secret: str = ""  # "" = no S3 credentials (a proxying MLflow server)
    s3_secret_keys: tuple[tuple[str, str], ...] = tuple(S3_SECRET_KEYS.items())
    mlflow_tracking_uri: str = ""  # default of the pipeline parameter
    # the slim CPU image (Dockerfile `--build-arg SRGAN_FLAVOR=cpu`, same lock, no CUDA
    # wheels) for every task but train; "" = the one (GPU) image for all
    cpu_image: str = ""
    ingest: Resources = Resources("2", "4", "4Gi", "8Gi")
    train: Resources = Resources("4", "8", "16Gi", "32Gi")
    evaluate: Resources = Resources("2", "4", "8Gi", "12Gi")
    register: Resources = Resources("500m", "1", "2Gi", "4Gi")
    ingest_retries: int = 3
    register_retries: int = 3
    train_retries: int = 2
    train_timeout_seconds: int = 48 * 3600  # the pod's activeDeadlineSeconds
    volume_mount: str = "/mnt/srgan"
    pvc_name: str = "srgan-data"  # default of the pipeline parameter: an existing claim
    create_pvc: bool = False  # compile-time: create a claim per run instead
    pvc_size: str = "50Gi"

    @classmethod
    def from_env(cls) -> "ClusterSettings":
        """Defaults overridden by SRGAN_GPU_TYPE, SRGAN_GPU_COUNT, SRGAN_GPU_NODE_SELECTOR,
        SRGAN_GPU_TOLERATION, SRGAN_MLFLOW_SECRET, SRGAN_MLFLOW_SECRET_OPTIONAL,
        SRGAN_MLFLOW_SECRET_KEYS, SRGAN_S3_SECRET, SRGAN_S3_SECRET_KEYS,
        SRGAN_MLFLOW_TRACKING_URI, SRGAN_CPU_IMAGE, SRGAN_TRAIN_CPU / SRGAN_TRAIN_MEMORY ("request[,limit]")."""
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
            mlflow_secret_keys=_secret_keys("SRGAN_MLFLOW_SECRET_KEYS", d.mlflow_secret_keys),
            s3_secret=_env("SRGAN_S3_SECRET", d.s3_secret),
            s3_secret_keys=_secret_keys("SRGAN_S3_SECRET_KEYS", d.s3_secret_keys),
            mlflow_tracking_uri=_env("SRGAN_MLFLOW_TRACKING_URI", d.mlflow_tracking_uri),
            cpu_image=_env("SRGAN_CPU_IMAGE", d.cpu_image),
            ingest=res("INGEST", d.ingest),
            train=res("TRAIN", d.train),
            evaluate=res("EVALUATE", d.evaluate),
            register=res("REGISTER", d.register),
            pvc_name=_env("SRGAN_PVC_NAME", d.pvc_name),
            create_pvc=_env("SRGAN_CREATE_PVC", "false").lower() in ("1", "true", "yes"),
        )


def _secret_keys(setting: str, default: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    spec = os.environ.get(setting)
    return tuple(parse_secret_keys(spec, setting).items()) if spec is not None else default


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


def running_locally() -> bool:
    """kfp.local is initialised in this process (run-local): no Kubernetes, no volume."""
    from kfp.local import config

    return config.LocalExecutionConfig.instance is not None


def local_volume_root() -> str:
    """Where the volume's folders live under kfp.local: $SRGAN_VOLUME_ROOT, else beside
    the temporary files (run-local keeps those under its --root)."""
    return os.environ.get("SRGAN_VOLUME_ROOT") or str(Path(tempfile.gettempdir()) / "srgan-volume")


def apply_platform(task: dsl.PipelineTask, s: ClusterSettings, gpu: bool = False, volume=None) -> None:
    """The Kubernetes side of a task on a cluster (main and sweep pipelines alike): image pull
    secrets, the MLflow credentials Secret, the volume, and for GPU tasks the GPU nodes'
    selector and toleration."""
    secrets = image_pull_secrets()
    if secrets:
        kubernetes.set_image_pull_secrets(task, secrets)
    if s.mlflow_secret:
        kubernetes.use_secret_as_env(task, secret_name=s.mlflow_secret, secret_key_to_env=dict(s.mlflow_secret_keys),
                                     optional=s.mlflow_secret_optional)
    if s.s3_secret:
        # every listed key must exist in the Secret: a missing one stops the pod at start
        # (CreateContainerConfigError), before any work, which is what we want
        kubernetes.use_secret_as_env(task, secret_name=s.s3_secret, secret_key_to_env=dict(s.s3_secret_keys))
    if volume is not None:
        kubernetes.mount_pvc(task, pvc_name=volume, mount_path=s.volume_mount)
    if gpu and s.gpu_node_selector:
        key, _, value = s.gpu_node_selector.partition("=")
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    if gpu and s.gpu_toleration:
        kubernetes.add_toleration(task, **_toleration(s.gpu_toleration))


# tasks that need the GPU image; every other task can run from the CPU image
GPU_STEPS = ("train",)


def on_cpu_image(comps: dict, s: ClusterSettings, cluster: bool) -> dict:
    """`comps` with every task but GPU_STEPS rebuilt for `s.cpu_image` (cluster builds
    with SRGAN_CPU_IMAGE set), so that CPU tasks do not pull the multi-GB CUDA image."""
    if not (cluster and s.cpu_image):
        return comps
    from components._common import resolve_image

    cpu_image = resolve_image(s.cpu_image)
    return {k: c if k in GPU_STEPS else components.with_image(c, cpu_image) for k, c in comps.items()}


def build_pipeline(image: str | None = None, cluster: bool | None = None, settings: ClusterSettings | None = None):
    """The pipeline for `image` (default: components.BASE_IMAGE, i.e. $SRGAN_IMAGE).
    `cluster` None: a cluster build unless kfp.local is initialised."""
    s = settings or ClusterSettings.from_env()
    if cluster is None:
        cluster = not running_locally()
    comps = on_cpu_image(components.all_components(image), s, cluster)

    def platform(task: dsl.PipelineTask, gpu: bool = False) -> None:
        if cluster:
            apply_platform(task, s, gpu=gpu)

    # Known repeat (`duplicates`): this signature spells out srcore.kfp_glue.PIPELINE_CONFIG_PARAMS
    # (source ... require_gpu) like components/ingest.py and pipeline/sweep.py, because KFP
    # reads explicit signatures; tests/test_steps.py keeps them equal.
    def srgan_pipeline(
        source: str = "",
        limit: str = "",
        test_count: str = "",
        epochs: str = "",
        pretrain_epochs: str = "",
        batch_size: str = "",
        content_loss: str = "",
        registered_model_name: str = "",
        experiment_name: str = "",
        require_gpu: str = "true" if cluster else "false",
        preset: str = "seed",
        config_overrides: str = "",
        mlflow_tracking_uri: str = s.mlflow_tracking_uri,
        volume_root: str = s.volume_mount if cluster else local_volume_root(),
        checkpoint_dir: str = "",
        pvc_name: str = s.pvc_name,
        pvc_size: str = s.pvc_size,
        storage_class: str = "",
        delete_pvc: str = "false",
        deploy: str = "false",
        deploy_namespace: str = "",
        deploy_service_name: str = "",
        run_key: str = "",
    ) -> PipelineOutputs:
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        finish = comps["finish"](mlflow_tracking_uri=mlflow_tracking_uri, pipeline_run_id=run_id, run_key=run_key,
                                 final_step="register")
        _resources(finish, s.register).set_caching_options(False)
        platform(finish)

        claim = pvc_name
        created = None
        if cluster and s.create_pvc:
            created = kubernetes.CreatePVC(pvc_name_suffix="-srgan", access_modes=["ReadWriteOnce"], size=pvc_size,
                                           storage_class_name=storage_class)
            claim = created.outputs["name"]

        def on_volume(task: dsl.PipelineTask) -> None:
            if cluster:
                kubernetes.mount_pvc(task, pvc_name=claim, mount_path=s.volume_mount)

        def steps() -> tuple[dsl.PipelineTask, PipelineOutputs]:
            ingest = comps["ingest"](
                preset=preset, config_overrides=config_overrides, source=source, limit=limit, test_count=test_count,
                epochs=epochs, pretrain_epochs=pretrain_epochs, batch_size=batch_size, content_loss=content_loss,
                registered_model_name=registered_model_name, experiment_name=experiment_name,
                require_gpu=require_gpu, mlflow_tracking_uri=mlflow_tracking_uri, pipeline_run_id=run_id,
                volume_root=volume_root, checkpoint_dir=checkpoint_dir, run_key=run_key,
            )
            # it opens this KFP run's MLflow parent run, and re-ingest on the volume is a
            # no-op when the manifest matches: never cached
            _resources(ingest, s.ingest).set_caching_options(False)
            ingest.set_retry(num_retries=s.ingest_retries, backoff_duration="60s", backoff_factor=2.0)
            on_volume(ingest)
            platform(ingest)

            tracking = dict(mlflow_tracking_uri=mlflow_tracking_uri, parent_run_id=ingest.outputs["parent_run_id"])
            train = comps["train"](dataset=ingest.outputs["dataset"], config_json=ingest.outputs["config_json"],
                                   **tracking)
            _resources(train, s.train).set_caching_options(False)
            train.set_retry(num_retries=s.train_retries, backoff_duration="120s", backoff_factor=2.0)
            if s.gpu_count > 0:
                train.set_accelerator_type(s.gpu_type).set_accelerator_limit(s.gpu_count)
            on_volume(train)
            if cluster:
                kubernetes.set_timeout(train, s.train_timeout_seconds)
            platform(train, gpu=True)

            evaluate = comps["evaluate"](dataset=ingest.outputs["dataset"], model=train.outputs["model"],
                                         config_json=train.outputs["config_json"], model_uri=train.outputs["model_uri"],
                                         **tracking)
            _resources(evaluate, s.evaluate).set_caching_options(False)
            on_volume(evaluate)
            platform(evaluate)

            register = comps["register"](metrics=evaluate.outputs["metrics"], config_json=train.outputs["config_json"],
                                         model_uri=train.outputs["model_uri"],
                                         manifest_hash=ingest.outputs["content_hash"], **tracking)
            _resources(register, s.register).set_caching_options(False)
            # idempotent: registering the same model URI again returns the existing version
            register.set_retry(num_retries=s.register_retries, backoff_duration="30s", backoff_factor=2.0)
            platform(register)

            # serve a new champion on KServe only when asked: clusters without KServe run the DAG too
            with dsl.If(deploy == "true", name="deploy-requested"):
                with dsl.If(register.outputs["champion"] == True, name="new-champion"):  # noqa: E712 - a KFP condition
                    # this version's SavedModel, in its own folder where KServe's storage initializer reads it
                    export = comps["export"](model=train.outputs["model"], config_json=train.outputs["config_json"],
                                             model_version=register.outputs["version"], volume_root=volume_root,
                                             volume_claim=claim, **tracking)
                    _resources(export, s.evaluate).set_caching_options(False)
                    on_volume(export)
                    platform(export)
                    # the predictor runs the pipeline's own image (srcore.server over that SavedModel): the
                    # CPU image, or train's (CUDA) image when deploy_gpus > 0
                    serve = comps["deploy"](config_json=train.outputs["config_json"],
                                            model_version=register.outputs["version"],
                                            storage_uri=export.outputs["storage_uri"], namespace=deploy_namespace,
                                            service_name=deploy_service_name,
                                            image=comps["deploy"].component_spec.implementation.container.image,
                                            gpu_image=comps["train"].component_spec.implementation.container.image,
                                            **tracking)
                    _resources(serve, s.register).set_caching_options(False)
                    platform(serve)

            if created is not None:
                with dsl.If(delete_pvc == "true"):
                    kubernetes.DeletePVC(pvc_name=claim).after(evaluate, register)
            return register, PipelineOutputs(
                dataset=ingest.outputs["dataset"], model=train.outputs["model"], metrics=evaluate.outputs["metrics"],
                report=evaluate.outputs["report"], evaluation=evaluate.outputs["evaluation"],
                model_uri=train.outputs["model_uri"], model_version=register.outputs["version"],
                champion=register.outputs["champion"],
            )

        if cluster:
            # KFP returns no pipeline outputs from inside an exit handler: every output is
            # still on its task in the UI
            with dsl.ExitHandler(finish, name="srgan-steps"):
                steps()
            return None
        # kfp.local: the steps at top level so that run-local gets the pipeline outputs;
        # `finish` runs last whatever the steps' fate (kfp.local also stops at a failure)
        register, outputs = steps()
        finish.after(register).ignore_upstream_failure()
        return outputs

    if cluster:
        del srgan_pipeline.__annotations__["return"]
    return dsl.pipeline(name=PIPELINE_NAME, description=PIPELINE_DESCRIPTION)(srgan_pipeline)


def __getattr__(name: str):
    # `srgan_pipeline`, the default build, is made on first use, not at import: a bad SRGAN_*
    # setting then reaches `python -m pipeline` as its one-line error instead of an import traceback
    if name == "srgan_pipeline":
        return build_pipeline()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
