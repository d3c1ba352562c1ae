from kfp import dsl
from kfp.dsl import Dataset, Output

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prep_data(config_json: str, split: str, run_id: str, dataset: Output[Dataset]) -> str:
    """Prepare one split as its family does (a validated uint8/int16 array + manifest; translation: one
    subfolder per domain, ``a/`` and ``b/``); returns its sha256."""
    from ganforge.platform.steps import prep_step
    from ganforge.platform.task_runtime import record_task

    record_task(run_id, f"prep_data-{split}")
    manifest = prep_step(config_json, split, dataset.path, run_id)
    dataset.metadata.update({k: manifest[k] for k in ("source", "split", "count", "sha256", "mirror_uri")})
    dataset.metadata["shape"] = list(manifest["shape"])
    return manifest["sha256"]
