from kfp import dsl
from kfp.dsl import Dataset, Output

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prep_domain(config_json: str, domain: str, run_id: str, dataset: Output[Dataset]) -> str:
    """Unpaired translation: prepare domain A or B (its training and held-out splits); returns its sha256."""
    from ganforge.platform.steps import prep_domain_step
    from ganforge.platform.task_runtime import record_task

    record_task(run_id, f"prep_domain-{domain}")
    manifest = prep_domain_step(config_json, domain, dataset.path, run_id)
    dataset.metadata.update({k: manifest[k] for k in ("source", "split", "count", "sha256", "domain", "domain_class")})
    return manifest["sha256"]
