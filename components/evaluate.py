from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    config_json: str,
    run_id: str,
    model: Input[Model],
    reference: Input[Dataset],
    dataset: Input[Dataset],
    metrics: Output[Metrics],
) -> str:
    """Score the trained model against the reference split as its family does (FID/KID for images,
    classifier IS/FD for audio, FID both ways for translation; class-conditional presets also use
    ``dataset``, the training split); returns the metrics as JSON."""
    import json

    from ganforge.platform.steps import evaluate_step
    from ganforge.platform.task_runtime import record_task

    record_task(run_id, "evaluate")
    result = evaluate_step(config_json, model.path, reference.path, run_id, train_dir=dataset.path)
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(key, float(value))
    return json.dumps(result, default=str)
