from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(
    config_json: str, run_id: str, dataset: Input[Dataset], model: Output[Model], samples: Output[dsl.Artifact]
) -> int:
    """Train the GAN (resuming from the model directory on a retry); returns the final step."""
    from ganforge.platform.steps import train_step
    from ganforge.platform.task_runtime import record_task

    record_task(run_id, "train")
    result = train_step(config_json, dataset.path, model.path, run_id, samples_path=samples.path)
    model.metadata.update(
        {
            "step": result["step"],
            "dataset_sha256": dataset.metadata.get("sha256", ""),
            "mirror_uri": result.get("mirror_uri", ""),
        }
    )
    samples.metadata["format"] = "png"
    return int(result["step"])
