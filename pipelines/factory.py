"""One factory builds every named pipeline from its typed config.

DAG: start_run (settle config, open the MLflow run) → the preset's body → register (+ promotion, run
FINISHED), all inside a dsl.ExitHandler whose exit task end_run ends the MLflow run (FAILED with the
failed step named when the body failed). The body is the preset's DAG shape (``DAG_SHAPES``):

- ``generation`` (unconditional and class-conditional generators): prep_data (train split, and the FID
  reference split when it differs) → train → evaluate;
- ``translation`` (``cyclegan``): prep_domain A and prep_domain B (each its training and held-out split)
  → train_translation → evaluate_translation.

The preset's config decides the shape at compile time (e.g. whether a separate reference split exists)
and the cluster settings of the training task; the per-run knobs stay pipeline parameters.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kfp import dsl

from components import (
    end_run,
    evaluate,
    evaluate_classes,
    evaluate_translation,
    prep_data,
    prep_domain,
    register,
    start_run,
    train,
    train_translation,
)
from ganforge.config import PRESETS, PipelineConfig, build_config

from .kube import ClusterSettings, apply_cluster_settings

PIPELINES = tuple(PRESETS)


@dataclass(frozen=True)
class DagBody:
    """What a DAG shape hands to the register step: its tasks by role (for cluster settings; the train
    task under "train", prep tasks under names starting "prep_"), and the output channels of the model and of
    the metrics JSON."""

    tasks: dict
    model: Any
    metrics_json: Any


def generation_body(cfg: PipelineConfig, config_json, run_id) -> DagBody:
    """prep (train split, reference split when it differs) → train → evaluate (class-conditional: with
    the class accuracy, which needs the training split too)."""
    prep_train = prep_data(config_json=config_json, split=cfg.data.split, run_id=run_id)
    prep_train.set_display_name(f"prep-{cfg.data.split}")
    reference = prep_train
    if cfg.data.reference_split != cfg.data.split:
        reference = prep_data(config_json=config_json, split=cfg.data.reference_split, run_id=run_id)
        reference.set_display_name(f"prep-{cfg.data.reference_split}")
    trained = train(config_json=config_json, run_id=run_id, dataset=prep_train.outputs["dataset"])
    if cfg.model.num_classes:
        evaluated = evaluate_classes(
            config_json=config_json,
            run_id=run_id,
            model=trained.outputs["model"],
            reference=reference.outputs["dataset"],
            dataset=prep_train.outputs["dataset"],
        ).set_display_name("evaluate")
    else:
        evaluated = evaluate(
            config_json=config_json,
            run_id=run_id,
            model=trained.outputs["model"],
            reference=reference.outputs["dataset"],
        )
    return DagBody(
        {"prep_train": prep_train, "prep_reference": reference, "train": trained, "evaluate": evaluated},
        trained.outputs["model"],
        evaluated.outputs["Output"],
    )


def translation_body(cfg: PipelineConfig, config_json, run_id) -> DagBody:
    """prep domain A ∥ prep domain B → train_translation → evaluate_translation (FID both ways, cycle L1)."""
    prep = {
        d: prep_domain(config_json=config_json, domain=d, run_id=run_id).set_display_name(f"prep-{d}")
        for d in ("a", "b")
    }
    domains = {f"domain_{d}": task.outputs["dataset"] for d, task in prep.items()}
    trained = train_translation(config_json=config_json, run_id=run_id, **domains).set_display_name("train")
    evaluated = evaluate_translation(
        config_json=config_json, run_id=run_id, model=trained.outputs["model"], **domains
    ).set_display_name("evaluate")
    return DagBody(
        {"prep_a": prep["a"], "prep_b": prep["b"], "train": trained, "evaluate": evaluated},
        trained.outputs["model"],
        evaluated.outputs["Output"],
    )


DAG_SHAPES: dict[str, Callable[..., DagBody]] = {"generation": generation_body, "translation": translation_body}


def dag_shape(cfg: PipelineConfig) -> str:
    """The preset's DAG shape: image-to-image models (two input domains) translate, the rest generate."""
    return "translation" if cfg.model.arch == "cyclegan" else "generation"


def build_pipeline(name: str, profile: str = "local", cluster: ClusterSettings | None = None) -> Callable:
    """The KFP pipeline for preset ``name``; ``profile`` is its default profile parameter."""
    cfg = build_config(name, profile)  # validates name/profile now, not at run time
    cluster = cluster or ClusterSettings.from_config(cfg)

    @dsl.pipeline(name=f"ganforge-{name}", description=f"ganforge {name}: prep → train → FID → MLflow registry")
    def pipeline(
        profile: str = cfg.profile,
        epochs: int = 0,
        source: str = "",
        nproc: int = 0,
        nnodes: int = 0,
        launcher: str = "",
        fid_samples: int = 0,
        promotion_margin: float = 0.0,
        overrides: str = "",
    ) -> int:
        # The exit task runs after the body whatever happens in it, and ends the MLflow run FINISHED or
        # FAILED (naming the failed step). KFP lets it take no task outputs: it finds the run by this
        # KFP run's name, which start_run tags it with.
        ended = end_run(pipeline=name, kfp_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER).set_display_name("end-run")
        with dsl.ExitHandler(ended, name="run"):
            run = start_run(
                pipeline=name,
                profile=profile,
                epochs=epochs,
                source=source,
                nproc=nproc,
                nnodes=nnodes,
                launcher=launcher,
                fid_samples=fid_samples,
                promotion_margin=promotion_margin,
                kfp_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                overrides=overrides,
            ).set_display_name("start-run")
            config_json, run_id = run.outputs["config_json"], run.outputs["run_id"]
            body = DAG_SHAPES[dag_shape(cfg)](cfg, config_json, run_id)
            registered = register(
                config_json=config_json,
                run_id=run_id,
                metrics_json=body.metrics_json,
                kfp_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                model=body.model,
            )
        apply_cluster_settings({"start_run": run, **body.tasks, "register": registered, "end_run": ended}, cluster)
        return ended.output  # the version the run registered (pipeline outputs cannot come from inside the handler)

    return pipeline
