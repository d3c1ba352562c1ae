"""The pipeline's steps as plain functions: what each KFP component calls, and nothing KFP-specific.

Each step takes the run's config as JSON plus paths, does one thing with the library, logs into
the pipeline's single MLflow run and returns a small dict for the component's outputs and
metadata. Keeping them here (not inside component bodies) lets tests call them directly and
keeps the components a few lines each.
"""

from __future__ import annotations

import functools
import inspect
import json
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from .. import fileio, threads
from ..config import PipelineConfig, build_config, overrides_from_json, parse_overrides
from ..data import prepare
from . import s3, tracking
from .settings import MLFLOW_RUN_ID_ENV, Settings

# torch (through checkpoint, train, curve) and the registry are imported by the steps that use them: the
# start-run, prep and end-run tasks then start in ~4 s instead of ~8 s (each KFP task is a fresh process).


def mirror(local_dir: str | Path, run_id: str, name: str, settings: Settings) -> str:
    """Copy a step's output directory to ARTIFACT_ROOT/runs/RUN_ID/NAME (complete-marker last); "" if unset.

    On a cluster KFP already stores task outputs under its S3 pipeline root; the mirror gives
    every run one stable, browsable place keyed by its MLflow run id, locally too.
    """
    if not settings.artifact_root:
        return ""
    return s3.upload_dir(str(local_dir), fileio.join(settings.artifact_root, "runs", run_id or "no-run", name))


def settle_config(pipeline: str, profile: str, knobs: dict | None = None, overrides: str = "") -> PipelineConfig:
    """The run's config from the pipeline's parameters: preset + profile + the per-run knobs, then
    ``overrides`` (the ``overrides`` parameter: a JSON list of ``group.field=value`` strings, the
    ``--set`` syntax; they win over the knobs).

    ``knobs`` is ``{"train": {"epochs": 3}, ...}``; zero/empty values mean "the profile's
    default" (KFP parameters cannot be None) and are dropped before merging.
    """
    layers = {g: {k: v for k, v in kv.items() if v not in (None, "", 0)} for g, kv in (knobs or {}).items()}
    for g, kv in parse_overrides(overrides_from_json(overrides)).items():
        layers.setdefault(g, {}).update(kv)
    return build_config(pipeline, profile, {g: kv for g, kv in layers.items() if kv})


START_STEP = "start-run"


def start_run_step(
    pipeline: str, profile: str, knobs: dict | None = None, kfp_run: str = "", overrides: str = ""
) -> dict:
    """Settle the config and open the pipeline's MLflow run. Returns config_json and run_id."""
    cfg = settle_config(pipeline, profile, knobs, overrides)
    tracking.configure()
    tags = {tracking.STEP_TAG_PREFIX + START_STEP: "running", **({"kfp_run_id": kfp_run} if kfp_run else {})}
    run_id = tracking.start_pipeline_run(cfg, tags=tags)  # a failure inside leaves the step "running"
    tracking.client().set_tag(run_id, tracking.STEP_TAG_PREFIX + START_STEP, "done")
    return {"config_json": cfg.to_json(), "run_id": run_id}


def tracked(step: str | Callable[[dict], str]) -> Callable:
    """Run a step inside ``tracking.tracked_step(run_id, name)`` when it has a ``run_id``: its
    ``ganforge.step.<name>`` tag, and ``ganforge.failed_step`` if it raises. ``step`` is the KFP
    task name, or a function of the step's arguments giving it."""

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            run_id = bound.arguments.get("run_id") or ""
            if not run_id:
                return fn(*args, **kwargs)
            tracking.configure()
            with tracking.tracked_step(run_id, step(bound.arguments) if callable(step) else step):
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def end_run_step(pipeline: str, kfp_run: str, kfp_state: str) -> dict:
    """The pipeline's exit task: end the MLflow run that KFP run ``kfp_run`` opened, from KFP's final
    state (FINISHED, or FAILED with ``ganforge.failed_step``). Returns run_id, status and the model
    version the run registered (0 if none, or no run: start-run failed before opening one)."""
    tracking.configure()
    run_id = tracking.find_pipeline_run(pipeline, kfp_run)
    if run_id is None:
        return {"run_id": "", "status": "", "version": 0}
    status = tracking.end_pipeline_run(run_id, kfp_state)
    versions = [int(v.version) for v in tracking.client().search_model_versions(f"run_id = '{run_id}'")]
    return {"run_id": run_id, "status": status, "version": max(versions, default=0)}


@tracked(lambda a: f"prep-{a['split']}")
def prep_step(config_json: str, split: str, out_dir: str, run_id: str = "") -> dict:
    cfg = PipelineConfig.from_json(config_json)
    manifest = prepare(cfg.data, out_dir, split=split)
    manifest["mirror_uri"] = mirror(out_dir, run_id, f"dataset-{split}", Settings.from_env())
    if run_id:
        tracking.configure()
        tracking.log_params(
            run_id, {f"dataset.{split}.sha256": manifest["sha256"], f"dataset.{split}.count": manifest["count"]}
        )
    return manifest


@tracked("train")
def train_step(config_json: str, data_dir: str, out_dir: str, run_id: str = "", samples_path: str = "") -> dict:
    """Train (resuming from the last checkpoint, so a retried task continues where it died).

    ``train.launcher`` local: in this process, or torchrun ranks on this node; trainjob/pytorchjob:
    a cluster job through S3 (``cluster_train.launch_cluster_training``), downloaded into out_dir.
    """
    from ..checkpoint import CONFIG_NAME, SAMPLES_DIR
    from ..train import train
    from .cluster_train import launch_cluster_training

    cfg, settings = PipelineConfig.from_json(config_json), Settings.from_env()
    world = cfg.train.nproc * cfg.train.nnodes
    threads.configure()  # the thread policy, decided once at the task's entry (torchrun ranks: their share)
    if cfg.train.launcher != "local":
        result = launch_cluster_training(cfg, data_dir, out_dir, run_id, settings)
    elif world > 1:
        result = _train_with_torchrun(cfg, data_dir, out_dir, run_id)
    else:
        callback = None
        if run_id:
            tracking.configure()
            callback = tracking.MlflowMetricsCallback(run_id)
        r = train(cfg, data_dir, out_dir, resume=True, on_metrics=callback)
        if callback is not None:
            callback.flush()
        result = {
            "step": r.step,
            "epoch": r.epoch,
            "seconds": r.seconds,
            "img_per_s": r.img_per_s,
            "samples": [str(p) for p in r.samples],
        }
    samples = sorted((Path(out_dir) / SAMPLES_DIR).glob("*.png"))
    result["mirror_uri"] = mirror(out_dir, run_id, "model", settings)
    if run_id:
        tracking.log_artifacts(run_id, str(Path(out_dir) / SAMPLES_DIR), "samples")
        tracking.log_artifact(run_id, str(Path(out_dir) / CONFIG_NAME), "config")
    if samples_path and samples:
        s3.upload_file(samples[-1], samples_path)  # a local atomic copy
    return result


def _train_with_torchrun(cfg: PipelineConfig, data_dir: str, out_dir: str, run_id: str) -> dict:
    """N ranks on this node through torchrun; rank 0 logs to MLflow through the CLI's environment."""
    from ..checkpoint import CHECKPOINT_NAME, read_checkpoint
    from ..launch import torchrun_command
    from ..train import TrainingError

    if cfg.train.nnodes > 1:
        raise TrainingError(
            f"train.nnodes={cfg.train.nnodes} needs a cluster launcher: set train.launcher to "
            "trainjob or pytorchjob (pipeline parameter launcher), or use nproc ranks on one node"
        )
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "config.json"
        config_path.write_text(cfg.to_json())
        env = {**threads.env_for_ranks(cfg.train.nproc), MLFLOW_RUN_ID_ENV: run_id}
        cmd = torchrun_command(
            cfg.train.nproc,
            ["train", "--config-json", str(config_path), "--data", data_dir, "--out", out_dir, "--resume"],
        )
        subprocess.run(cmd, check=True, env=env)
    ckpt = read_checkpoint(Path(out_dir) / CHECKPOINT_NAME)
    return {"step": int(ckpt["step"]), "epoch": int(ckpt["epoch"])}


@tracked("evaluate")
def evaluate_step(
    config_json: str, checkpoint_dir: str, reference_dir: str, run_id: str = "", train_dir: str = ""
) -> dict:
    """FID/KID of the final EMA generator, and the FID curve over the run's snapshots when it kept any.

    Class-conditional presets also get per-class FID and, from ``train_dir`` (the training split),
    the class accuracy of their samples with its ceiling (``ganforge.class_metrics``).

    The curve (``eval.curve_samples`` per point, same real reference) goes to MLflow as metric
    histories ``fid_nN``/``kid_nN`` at each snapshot's step and as ``fid_curve/fid_curve.{csv,png}``.
    """
    from ..curve import evaluate_run

    threads.configure()  # the thread policy: free cores for the Inception, workers capped at them
    cfg, settings = PipelineConfig.from_json(config_json), Settings.from_env()
    with tempfile.TemporaryDirectory(prefix="ganforge-eval-") as tmp:
        metrics, rows = evaluate_run(
            checkpoint_dir, reference_dir, tmp, n=cfg.eval.n_samples, train_dir=train_dir or None
        )
        if settings.artifact_root:
            run_prefix = fileio.join(settings.artifact_root, "runs", run_id or "no-run")
            s3.upload_file(Path(tmp) / "metrics.json", fileio.join(run_prefix, "metrics.json"))
            for name in ("fid_curve.csv", "fid_curve.png") if rows else ():
                s3.upload_file(Path(tmp) / name, fileio.join(run_prefix, "fid_curve", name))
        if run_id:
            log_evaluation(run_id, metrics, rows, tmp)
    return metrics


def log_evaluation(run_id: str, metrics: dict, rows: list[dict], eval_dir: str | Path) -> None:
    """Scores at the generator step they were measured (same axis as the losses); the curve as
    metric histories and as ``fid_curve/`` artifacts."""
    tracking.configure()
    tracking.log_metrics(
        run_id,
        {
            k: float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"
        },
        step=metrics["step"],
    )
    if rows:
        log_curve(run_id, rows, eval_dir)


def log_curve(run_id: str, rows: list[dict], curve_dir: str | Path) -> None:
    """FID curve points as metric histories ``fid_nN``/``kid_nN`` and ``fid_curve.{csv,png}`` as artifacts.

    Re-logging a point MLflow already has adds a duplicate entry at the same step, so only points
    not yet in the history are logged.
    """
    tracking.configure()
    c = tracking.client()
    for r in rows:
        key = f"fid_n{r['n']}"
        if any(m.step == r["step"] for m in c.get_metric_history(run_id, key)):
            continue
        tracking.log_metrics(run_id, {key: r["fid"], f"kid_n{r['n']}": r["kid_mean"]}, step=r["step"])
    for name in ("fid_curve.csv", "fid_curve.png"):
        tracking.log_artifact(run_id, str(Path(curve_dir) / name), "fid_curve")


@tracked("register")
def register_step(
    config_json: str,
    checkpoint_dir: str,
    metrics_json: str,
    run_id: str,
    kfp_run: str = "",
    plot_path: str | None = None,
) -> dict:
    """Log the EMA generator as an MLflow model, register it, apply the FID promotion rule and end
    the pipeline's MLflow run FINISHED."""
    from ..checkpoint import CHECKPOINT_NAME, load_generator
    from . import registry

    cfg = PipelineConfig.from_json(config_json)
    metrics = json.loads(metrics_json)
    # The evaluation's dataset is the FID reference; the version's dataset_sha256 is the training data's.
    if "dataset_sha256" in metrics:
        metrics["reference_dataset_sha256"] = metrics.pop("dataset_sha256")
    tracking.configure()
    if cfg.model.arch == "cyclegan":  # both EMA generators, one program (ganforge.cyclegan.CycleTranslator)
        from ..cyclegan import CycleTranslator, load_translators

        G = CycleTranslator(*load_translators(checkpoint_dir)[:2])
    else:
        G, _ = load_generator(Path(checkpoint_dir) / CHECKPOINT_NAME)
    class_names = None
    if cfg.model.num_classes:
        from ..train import read_class_names

        class_names = read_class_names(checkpoint_dir, cfg)
    version = registry.register_generator(
        run_id, G, cfg, metrics, tags={"kfp_run_id": kfp_run}, class_names=class_names
    )
    decision = registry.promote(cfg.model_name, version, margin=cfg.registry.promotion_margin)
    if plot_path:
        tracking.log_curves(run_id, plot_path)
    tracking.finish_pipeline_run(run_id)  # the last step: the run is complete (the exit task confirms it)
    return {"model_name": cfg.model_name, "version": version, **decision}


@tracked(lambda a: f"prep-{a['domain']}")
def prep_domain_step(config_json: str, domain: str, out_dir: str, run_id: str = "") -> dict:
    """Unpaired translation: one domain's training split into ``out_dir/train`` and its held-out split (the
    FID reference) into ``out_dir/test`` (``ganforge.cyclegan.prepare_domain``)."""
    from ..cyclegan import prepare_domain

    cfg = PipelineConfig.from_json(config_json)
    manifests = {
        split: prepare_domain(cfg.data, domain, Path(out_dir) / split, split)
        for split in (cfg.data.split, cfg.data.reference_split)
    }
    if run_id:
        tracking.configure()
        tracking.log_params(
            run_id,
            {f"dataset.{domain}.{s}.{k}": m[k] for s, m in manifests.items() for k in ("sha256", "count")}
            | {f"dataset.{domain}.class": manifests[cfg.data.split]["domain_class"]},
        )
    return manifests[cfg.data.split]


@tracked("train")
def train_translation_step(config_json: str, domain_a: str, domain_b: str, out_dir: str, run_id: str = "") -> dict:
    """Train a cyclegan run on the two prepared domains (resuming on a retry), one rank in this process."""
    from ..checkpoint import CONFIG_NAME, SAMPLES_DIR
    from ..cyclegan import train_cyclegan

    cfg, settings = PipelineConfig.from_json(config_json), Settings.from_env()
    threads.configure()
    if run_id:
        tracking.configure()
    callback = tracking.MlflowMetricsCallback(run_id) if run_id else None
    split = cfg.data.split
    r = train_cyclegan(cfg, Path(domain_a) / split, Path(domain_b) / split, out_dir, resume=True, on_metrics=callback)
    if callback is not None:
        callback.flush()
        tracking.log_artifacts(run_id, str(Path(out_dir) / SAMPLES_DIR), "samples")
        tracking.log_artifact(run_id, str(Path(out_dir) / CONFIG_NAME), "config")
    return {"step": r.step, "epoch": r.epoch, "mirror_uri": mirror(out_dir, run_id, "model", settings)}


@tracked("evaluate")
def evaluate_translation_step(
    config_json: str, checkpoint_dir: str, domain_a: str, domain_b: str, run_id: str = ""
) -> dict:
    """FID A→B vs held-out B and B→A vs held-out A, their mean ``fid`` (the promotion metric), cycle L1, and
    the input / translated / reconstructed grid (logged to MLflow as ``evaluation/translations.png``)."""
    from ..paths import cache_dir
    from ..translate import evaluate_translation_run

    threads.configure()
    cfg = PipelineConfig.from_json(config_json)
    split = cfg.data.reference_split
    with tempfile.TemporaryDirectory(prefix="ganforge-eval-") as tmp:
        metrics = evaluate_translation_run(
            checkpoint_dir, Path(domain_a) / split, Path(domain_b) / split, tmp, cache_dir(), n=cfg.eval.n_samples
        )
        if run_id:
            log_translation_evaluation(run_id, metrics, tmp)
    metrics.pop("grid")
    return metrics


def log_translation_evaluation(run_id: str, metrics: dict, eval_dir: str | Path) -> None:
    """A cyclegan evaluation into its MLflow run: the scores at the checkpoint's step, the grid as
    ``evaluation/translations.png``."""
    tracking.configure()
    tracking.log_artifact(run_id, metrics["grid"], "evaluation")
    log_evaluation(run_id, metrics, [], eval_dir)
