from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Input, Model

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(config_json: str, run_id: str, metrics_json: str, kfp_run: str, model: Input[Model]) -> NamedTuple(
    "Registered", model_name=str, version=int, alias=str
):
    """Register the EMA generator in MLflow and apply the FID-gated champion/challenger rule."""
    import os
    import tempfile
    from collections import namedtuple

    from ganforge.platform.steps import register_step
    from ganforge.platform.task_runtime import record_task

    record_task(run_id, "register")
    out = register_step(
        config_json,
        model.path,
        metrics_json,
        run_id,
        kfp_run=kfp_run,
        plot_path=os.path.join(tempfile.mkdtemp(), "curves.png"),
    )
    return namedtuple("Registered", ["model_name", "version", "alias"])(out["model_name"], out["version"], out["alias"])
