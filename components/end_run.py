from kfp import dsl

from .image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def end_run(pipeline: str, kfp_run: str, status: dsl.PipelineTaskFinalStatus) -> int:
    """The DAG's exit task (runs after success and failure alike): end the run's MLflow run FINISHED, or
    FAILED with tag ganforge.failed_step; returns the model version the run registered (0 if none)."""
    from ganforge.platform.steps import end_run_step

    out = end_run_step(pipeline, kfp_run, status.state)
    print(f"MLflow run {out['run_id'] or '(none opened)'}: {out['status'] or '-'} (KFP state {status.state})")
    return int(out["version"])
