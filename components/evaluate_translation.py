from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_translation(
    config_json: str,
    run_id: str,
    model: Input[Model],
    domain_a: Input[Dataset],
    domain_b: Input[Dataset],
    metrics: Output[Metrics],
) -> str:
    """FID of A→B vs held-out B and B→A vs held-out A, their mean ``fid``, cycle L1; returns the metrics as
    JSON, as ``evaluate`` does."""
    import json

    from ganforge.platform.steps import evaluate_translation_step
    from ganforge.platform.task_runtime import record_task

    record_task(run_id, "evaluate")
    result = evaluate_translation_step(config_json, model.path, domain_a.path, domain_b.path, run_id)
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(key, float(value))
    return json.dumps(result, default=str)
