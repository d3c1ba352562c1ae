from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_translation(
    config_json: str, run_id: str, domain_a: Input[Dataset], domain_b: Input[Dataset], model: Output[Model]
) -> int:
    """Train the unpaired translator A↔B (resuming from the model directory on a retry); returns the final step."""
    from ganforge.platform.steps import train_translation_step
    from ganforge.platform.task_runtime import record_task

    record_task(run_id, "train")
    result = train_translation_step(config_json, domain_a.path, domain_b.path, model.path, run_id)
    model.metadata.update({"step": result["step"], "mirror_uri": result["mirror_uri"]})
    return int(result["step"])
