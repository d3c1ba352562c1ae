from typing import NamedTuple

from kfp import dsl

from ganforge.platform.run_knobs import check_signature

from .image import IMAGE

# KFP reads a component's parameters from its source, so the run knobs (ganforge.platform.run_knobs) are
# written out here; check_signature below fails the import when they drift from that table.
NOT_KNOBS = ("pipeline", "profile", "kfp_run", "overrides")


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
    """Settle the run's typed config from the pipeline parameters (the run knobs, then ``overrides``, a JSON
    list of group.field=value strings) and open its MLflow run."""
    knobs = {k: v for k, v in locals().items() if k not in ("pipeline", "profile", "kfp_run", "overrides")}
    from collections import namedtuple

    from ganforge.platform.steps import start_run_step
    from ganforge.platform.task_runtime import record_task

    out = start_run_step(pipeline, profile, knobs, kfp_run=kfp_run, overrides=overrides)
    record_task(out["run_id"], "start_run")
    return namedtuple("Run", ["config_json", "run_id"])(out["config_json"], out["run_id"])


check_signature(start_run.python_func, NOT_KNOBS)
