from typing import NamedTuple

from kfp import dsl

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def start_run(
    pipeline: str,
    profile: str,
    epochs: int,
    source: str,
    nproc: int,
    nnodes: int,
    launcher: str,
    fid_samples: int,
    promotion_margin: float,
    kfp_run: str,
    overrides: str = "",
) -> NamedTuple("Run", config_json=str, run_id=str):
    """Settle the run's typed config from the pipeline parameters (then ``overrides``, a JSON list of
    group.field=value strings) and open its MLflow run."""
    from collections import namedtuple

    from ganforge.platform.steps import start_run_step
    from ganforge.platform.task_runtime import record_task

    knobs = {
        "train": {"epochs": epochs, "nproc": nproc, "nnodes": nnodes, "launcher": launcher},
        "data": {"source": source},
        "eval": {"n_samples": fid_samples},
        "registry": {"promotion_margin": promotion_margin},
    }
    out = start_run_step(pipeline, profile, knobs, kfp_run=kfp_run, overrides=overrides)
    record_task(out["run_id"], "start_run")
    return namedtuple("Run", ["config_json", "run_id"])(out["config_json"], out["run_id"])
