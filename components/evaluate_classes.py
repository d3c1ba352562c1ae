from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_classes(
    config_json: str,
    run_id: str,
    model: Input[Model],
    reference: Input[Dataset],
    dataset: Input[Dataset],
    metrics: Output[Metrics],
) -> str:
    """Class-conditional presets: FID/KID of class-balanced samples, per-class FID, and the class accuracy
    of the samples by a classifier trained on ``dataset`` (the training split; its reference accuracy is the
    ceiling). Returns the metrics as JSON, as ``evaluate`` does."""
    import json

    from ganforge.platform.steps import evaluate_step
    from ganforge.platform.task_runtime import record_task

    record_task(run_id, "evaluate")
    result = evaluate_step(config_json, model.path, reference.path, run_id, train_dir=dataset.path)
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(key, float(value))
    return json.dumps(result, default=str)
