"""The sweep pipeline: ingest once, then train + evaluate for every trial in parallel,
then pick the best trial and register only it.

    ingest -> sweep-trials: ParallelFor(trials, parallelism): start_trial -> train -> evaluate
           -> pick_best (after sweep-trials, whatever its fate; registers through the gate)

`trials` is a JSON list parameter of Config overrides (learning rates x content losses
by default). Each iteration's MLflow run is a child of the pipeline's parent run and
holds its train and evaluate runs (srcore/sweep.py has the structure). Compile it with
`python -m pipeline compile --pipeline sweep --out sweep.yaml`; `parallelism` is a
compile-time setting (KFP fixes it in the IR), default 2 or `$SRGAN_SWEEP_PARALLELISM`.

Cluster settings, the shared volume (the existing claim `pvc_name`), the MLflow Secret,
the run key and the exit task that ends the parent run are the main pipeline's
(pipeline/dag.py). Each trial trains into its own folder under the run's model_dir.

A failed trial does not stop the sweep: pick_best runs after the trials whatever their
fate (`ignore_upstream_failure`) and reads them from MLflow (the trial runs under the
parent run), not from the loop's outputs: no `dsl.Collected`, which KFP needs 2.14 for.
It picks among the trials that have a model and metrics, and ends every run a failed
trial left RUNNING. (On a cluster Argo stops starting further iterations after a
failure, its DAG failFast; the ones running finish.) The minimum backend is 2.5
(pipeline/support.py).
"""

import logging
import os
from pathlib import Path
from typing import List

from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Input

import components
from components.pick_best import pick_best
from components.start_trial import start_trial
from pipeline.dag import ClusterSettings, _resources, apply_platform, local_volume_root, on_cpu_image, running_locally
from pipeline.support import legacy_package

log = logging.getLogger(__name__)

SWEEP_PIPELINE_NAME = "srgan-celeba-sweep"
SWEEP_DESCRIPTION = ("SRGAN x4 hyper-parameter sweep: ingest once, train + evaluate each trial in parallel, "
                     "register the best trial through the champion gate.")
PARALLELISM_ENV = "SRGAN_SWEEP_PARALLELISM"
DEFAULT_TRIALS = [
    {"learning_rate": lr, "content_loss": loss} for loss in ("vgg19_54", "vgg16_53") for lr in (1e-4, 2e-4)
]


def default_parallelism() -> int:
    return int(os.environ.get(PARALLELISM_ENV, "2"))


def build_sweep_pipeline(image: str | None = None, cluster: bool | None = None,
                         settings: ClusterSettings | None = None, parallelism: int | None = None):
    """The sweep pipeline for `image`; `parallelism`: trials running at once."""
    s = settings or ClusterSettings.from_env()
    if cluster is None:
        cluster = not running_locally()
    parallelism = parallelism or default_parallelism()
    if parallelism < 1:
        raise ValueError(f"sweep parallelism must be >= 1, got {parallelism}")
    if cluster and s.create_pvc:
        # parallel trials need one RWX claim that ingest filled: a claim per run is the main pipeline's
        log.warning("SRGAN_CREATE_PVC=true is for the main pipeline only: the sweep mounts the existing claim "
                    "pvc_name (default %s, ReadWriteMany: kubectl apply -k pipeline/k8s/sweep)", s.pvc_name)
    glue = {"start_trial": start_trial, "pick_best": pick_best}
    if image:
        glue = {k: components.with_image(c, image) for k, c in glue.items()}
    # every task but train from the slim CPU image when SRGAN_CPU_IMAGE is set
    both = on_cpu_image({**components.all_components(image), **glue}, s, cluster)
    comps, glue = {k: v for k, v in both.items() if k not in glue}, {k: both[k] for k in glue}

    def platform(task: dsl.PipelineTask, gpu: bool = False, volume: str | None = None) -> None:
        if cluster:
            apply_platform(task, s, gpu=gpu, volume=volume)

    # The trials live in a pipeline of their own, called with ingest's outputs: inside it
    # those are pipeline inputs. (kfp.local 2.17 hands a ParallelFor the loop item in place
    # of every upstream *task output* it consumes; a cluster runs both forms alike.) It is
    # also one task that pick_best can run after, failed or not.
    # `List[dict]`: each loop item is a STRUCT, as start_trial's `trial: dict` declares
    # (a bare `list` makes it a STRING, which the KFP driver refuses; pipeline/support.py).
    @dsl.pipeline(name="srgan-sweep-trials")
    def sweep_trials(trials: List[dict], config_json: str, parent_run_id: str, dataset: Input[Dataset],
                     mlflow_tracking_uri: str, pvc_name: str):
        with dsl.ParallelFor(trials, parallelism=parallelism) as trial:
            opened = glue["start_trial"](config_json=config_json, trial=trial, trials=trials,
                                         mlflow_tracking_uri=mlflow_tracking_uri, parent_run_id=parent_run_id)
            _resources(opened, s.register).set_caching_options(False)
            platform(opened)
            in_trial = dict(mlflow_tracking_uri=mlflow_tracking_uri, parent_run_id=opened.outputs["trial_run_id"])
            train = comps["train"](dataset=dataset, config_json=config_json, overrides=opened.outputs["overrides"],
                                   **in_trial)
            _resources(train, s.train).set_caching_options(False)
            train.set_retry(num_retries=s.train_retries, backoff_duration="120s", backoff_factor=2.0)
            if cluster and s.gpu_count > 0:
                train.set_accelerator_type(s.gpu_type).set_accelerator_limit(s.gpu_count)
            if cluster:
                kubernetes.set_timeout(train, s.train_timeout_seconds)
            platform(train, gpu=True, volume=pvc_name)
            evaluate = comps["evaluate"](dataset=dataset, model=train.outputs["model"],
                                         config_json=train.outputs["config_json"], model_uri=train.outputs["model_uri"],
                                         **in_trial)
            _resources(evaluate, s.evaluate).set_caching_options(False)
            platform(evaluate, volume=pvc_name)

    # Known repeat (`duplicates`): these parameters spell out srcore.kfp_glue.PIPELINE_CONFIG_PARAMS
    # like pipeline/dag.py and components/ingest.py, because KFP reads explicit signatures;
    # tests/test_steps.py keeps them equal.
    def srgan_sweep(
        trials: List[dict] = DEFAULT_TRIALS,
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
        pvc_name: str = s.pvc_name,
        run_key: str = "",
    ):
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        finish = comps["finish"](mlflow_tracking_uri=mlflow_tracking_uri, pipeline_run_id=run_id, run_key=run_key,
                                 final_step="register")
        _resources(finish, s.register).set_caching_options(False)
        platform(finish)

        def steps() -> dsl.PipelineTask:
            ingest = comps["ingest"](
                preset=preset, config_overrides=config_overrides, source=source, limit=limit, test_count=test_count,
                epochs=epochs, pretrain_epochs=pretrain_epochs, batch_size=batch_size, content_loss=content_loss,
                registered_model_name=registered_model_name, experiment_name=experiment_name,
                require_gpu=require_gpu, mlflow_tracking_uri=mlflow_tracking_uri, pipeline_run_id=run_id,
                volume_root=volume_root, checkpoint_dir="", run_key=run_key,
            )
            _resources(ingest, s.ingest).set_caching_options(False)
            ingest.set_retry(num_retries=s.ingest_retries, backoff_duration="60s", backoff_factor=2.0)
            platform(ingest, volume=pvc_name)
            trial_tasks = sweep_trials(trials=trials, config_json=ingest.outputs["config_json"],
                                       parent_run_id=ingest.outputs["parent_run_id"], dataset=ingest.outputs["dataset"],
                                       mlflow_tracking_uri=mlflow_tracking_uri, pvc_name=pvc_name)
            pick = glue["pick_best"](
                config_json=ingest.outputs["config_json"], manifest_hash=ingest.outputs["content_hash"],
                mlflow_tracking_uri=mlflow_tracking_uri, parent_run_id=ingest.outputs["parent_run_id"],
            ).after(trial_tasks).ignore_upstream_failure()
            _resources(pick, s.register).set_caching_options(False)
            # idempotent: the registry returns the existing version for the same model URI
            pick.set_retry(num_retries=s.register_retries, backoff_duration="30s", backoff_factor=2.0)
            platform(pick)
            return pick

        if cluster:
            with dsl.ExitHandler(finish, name="srgan-sweep-steps"):
                steps()
        else:
            finish.after(steps()).ignore_upstream_failure()

    return dsl.pipeline(name=SWEEP_PIPELINE_NAME, description=SWEEP_DESCRIPTION)(srgan_sweep)


def compile_sweep(out: str | os.PathLike, image: str | None = None, cluster: bool = True,
                  parallelism: int | None = None) -> Path:
    """Write the sweep pipeline's YAML (image rules as pipeline.run.compile_pipeline)."""
    from kfp import compiler

    from components._common import resolve_image

    image = resolve_image(image)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_sweep_pipeline(image=image, cluster=cluster, parallelism=parallelism), str(out))
    legacy_package(out)  # no platform-spec field an old backend refuses (pipeline/support.py)
    return out
