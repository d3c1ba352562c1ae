"""One factory builds every named pipeline from its typed config.

DAG: start_run (settle config, open the MLflow run) → prep_data (train split, and the FID reference split
when it differs) → train → evaluate → register (+ promotion, run FINISHED), all inside a dsl.ExitHandler
whose exit task end_run ends the MLflow run (FAILED with the failed step named when the body failed).

Every preset has this shape; what a family does in each step (a generator, an image-to-image translator
whose splits hold one subfolder per domain) is ``ganforge.platform.steps.FAMILIES``. The preset's config
decides at compile time whether a separate reference split exists and the cluster settings of the
training task; the per-run knobs stay pipeline parameters.
"""

import inspect
from collections.abc import Callable

from kfp import dsl

from components import end_run, evaluate, prep_data, register, start_run, train
from ganforge.config import PRESETS, PipelineConfig, build_config
from ganforge.platform import run_knobs

from .kube import ClusterSettings, apply_cluster_settings

PIPELINES = tuple(PRESETS)
PARAMETER_NAMES = ("profile", *run_knobs.NAMES, "overrides")


def body(cfg: PipelineConfig, config_json, run_id) -> dict:
    """prep (train split, reference split when it differs) → train → evaluate; the tasks by role (for
    cluster settings: the train task under "train", prep tasks under names starting "prep_")."""
    prep_train = prep_data(config_json=config_json, split=cfg.data.split, run_id=run_id)
    prep_train.set_display_name(f"prep-{cfg.data.split}")
    reference = prep_train
    if cfg.data.reference_split != cfg.data.split:
        reference = prep_data(config_json=config_json, split=cfg.data.reference_split, run_id=run_id)
        reference.set_display_name(f"prep-{cfg.data.reference_split}")
    trained = train(config_json=config_json, run_id=run_id, dataset=prep_train.outputs["dataset"])
    evaluated = evaluate(
        config_json=config_json,
        run_id=run_id,
        model=trained.outputs["model"],
        reference=reference.outputs["dataset"],
        dataset=prep_train.outputs["dataset"],
    )
    return {"prep_train": prep_train, "prep_reference": reference, "train": trained, "evaluate": evaluated}


def build_pipeline(name: str, profile: str = "local", cluster: ClusterSettings | None = None) -> Callable:
    """The KFP pipeline for preset ``name``; ``profile`` is its default profile parameter."""
    cfg = build_config(name, profile)  # validates name/profile now, not at run time
    cluster = cluster or ClusterSettings.from_config(cfg)

    def pipeline(*values) -> int:
        # KFP calls a pipeline function with its parameters in signature order (see below).
        params = dict(zip(PARAMETER_NAMES, values))
        # The exit task runs after the body whatever happens in it, and ends the MLflow run FINISHED or
        # FAILED (naming the failed step). KFP lets it take no task outputs: it finds the run by this
        # KFP run's name, which start_run tags it with.
        ended = end_run(pipeline=name, kfp_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER).set_display_name("end-run")
        with dsl.ExitHandler(ended, name="run"):
            run = start_run(
                pipeline=name,
                kfp_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                **params,
            ).set_display_name("start-run")
            config_json, run_id = run.outputs["config_json"], run.outputs["run_id"]
            tasks = body(cfg, config_json, run_id)
            registered = register(
                config_json=config_json,
                run_id=run_id,
                metrics_json=tasks["evaluate"].outputs["Output"],
                kfp_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                model=tasks["train"].outputs["model"],
            )
        apply_cluster_settings({"start_run": run, **tasks, "register": registered, "end_run": ended}, cluster)
        return ended.output  # the version the run registered (pipeline outputs cannot come from inside the handler)

    # The pipeline's parameters: the default profile, the run knobs (declared in run_knobs) and overrides.
    pipeline.__signature__ = inspect.Signature(
        [
            inspect.Parameter("profile", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=cfg.profile, annotation=str),
            *run_knobs.pipeline_parameters(),
            inspect.Parameter("overrides", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="", annotation=str),
        ],
        return_annotation=int,
    )
    pipeline.__annotations__ = {p.name: p.annotation for p in pipeline.__signature__.parameters.values()}
    pipeline.__annotations__["return"] = int
    pipeline = dsl.pipeline(
        name=f"ganforge-{name}", description=f"ganforge {name}: prep → train → FID → MLflow registry"
    )(pipeline)
    return pipeline
