"""KFP component: evaluate a Model artifact on the Dataset's test split (srcore.evaluate.evaluate)."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components._common import component


@component
def evaluate(
    dataset: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    evaluation: Output[Artifact],
    preset: str = "",
    config_overrides: str = "",
    source: str = "",
    limit: str = "",
    test_count: str = "",
    epochs: str = "",
    pretrain_epochs: str = "",
    batch_size: str = "",
    content_loss: str = "",
    registered_model_name: str = "",
    experiment_name: str = "",
    mlflow_tracking_uri: str = "",
    parent_run_id: str = "",
    pipeline_run_id: str = "",
):
    """`metrics`: the scalar metrics (KFP UI) with metrics.json as its file; `report`: an
    HTML page with the sample grid embedded; `evaluation`: the evaluation folder
    (metrics.json, per_image.csv, grid.png, grid_<name>.png)."""
    import os

    from srcore import steps_env
    from srcore.evaluate import evaluate as evaluate_step

    cfg = steps_env.step_config(
        preset, config_overrides, source=source, limit=limit, test_count=test_count, epochs=epochs,
        pretrain_epochs=pretrain_epochs, batch_size=batch_size, content_loss=content_loss,
        registered_model_name=registered_model_name, experiment_name=experiment_name,
    )
    steps_env.prepare_step(cfg, mlflow_tracking_uri, parent_run_id, pipeline_run_id)
    result = evaluate_step(cfg, os.path.join(model.path, "generator.keras"), data_dir=dataset.path,
                           out_dir=evaluation.path)
    for name, value in steps_env.scalar_metrics(result).items():
        metrics.log_metric(name, value)
    steps_env.write_metrics(metrics.path, result)
    with open(report.path, "w", encoding="utf-8") as f:
        f.write(steps_env.html_report(result, evaluation.path))
