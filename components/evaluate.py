"""KFP component of step `evaluate` (srcore.steps.evaluate_step)."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components._common import component


@component
def evaluate(
    dataset: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    evaluation: Output[Artifact],
    config_json: str,
    model_uri: str = "",
    mlflow_tracking_uri: str = "",
    parent_run_id: str = "",
):
    """Reads only the test PNGs of the ingest output and the generator, both on the volume.
    `metrics`: the scalar metrics (KFP UI) with metrics.json as its file; `report`: an HTML
    page with the sample grid embedded; `evaluation`: metrics.json, per_image.csv, grids.
    `model_uri`: the MLflow model whose LoggedModel also gets the metrics."""
    from srcore import kfp_glue, steps
    from srcore.config import apply_overrides

    cfg = apply_overrides(kfp_glue.step_config(config_json), {"eval_dir": evaluation.path})
    kfp_glue.check_volume(cfg, "evaluate")
    kfp_glue.connect(cfg, mlflow_tracking_uri, parent_run_id)
    out = steps.run("evaluate", cfg, model=model.metadata.get("generator") or model.path, model_uri=model_uri)
    result = out["metrics"]
    for name, value in kfp_glue.scalar_metrics(result).items():
        metrics.log_metric(name, value)
    kfp_glue.write_metrics(metrics.path, result)
    with open(report.path, "w", encoding="utf-8") as f:
        f.write(kfp_glue.html_report(result, evaluation.path))
