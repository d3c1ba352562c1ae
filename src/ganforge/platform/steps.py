"""The pipeline's steps as plain functions: what each KFP component calls, and nothing KFP-specific.

Each step takes the run's config as JSON plus paths, does one thing with the library, logs into
the pipeline's single MLflow run and returns a small dict for the component's outputs and
metadata. Keeping them here (not inside component bodies) lets tests call them directly and
keeps the components a few lines each.

Every preset runs the same steps; what prep, train, evaluate and register do for its family of models
(generators; image-to-image translators, whose splits hold one subfolder per domain; paired editors,
whose splits hold (degraded input, target) pairs) is one entry of ``FAMILIES`` at the end of this module.
Every family's promotion gate is its ``fid`` (lower is better).
"""

from __future__ import annotations

import functools
import inspect
import json
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import fileio, threads
from ..config import PipelineConfig, build_config, overrides_from_json, parse_overrides
from ..data import prepare
from ..eval_audio import EVAL_AUDIO_DIR
from . import s3, tracking
from .run_knobs import knob_layers
from .settings import MLFLOW_RUN_ID_ENV, WORKER_MODULE, Settings

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


def settle_config(
    pipeline: str, profile: str, knobs: Mapping[str, object] | None = None, overrides: str = ""
) -> PipelineConfig:
    """The run's config from the pipeline's parameters: preset + profile + the run knobs
    (``run_knobs.RUN_KNOBS`` by name, e.g. ``{"epochs": 3}``; unset ones are the profile's), then
    ``overrides`` (the ``overrides`` parameter: a JSON list of ``group.field=value`` strings, the
    ``--set`` syntax; they win over the knobs)."""
    layers = knob_layers(knobs or {})
    for g, kv in parse_overrides(overrides_from_json(overrides)).items():
        layers.setdefault(g, {}).update(kv)
    return build_config(pipeline, profile, layers)


START_STEP = "start-run"


def start_run_step(
    pipeline: str, profile: str, knobs: Mapping[str, object] | None = None, kfp_run: str = "", overrides: str = ""
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
    """Prepare one split into ``out_dir`` as the preset's family does (``FAMILIES``); mirror it and log
    its checksum and size into the run. Returns the split's manifest (source, split, count, shape, sha256)."""
    cfg = PipelineConfig.from_json(config_json)
    manifest = family(cfg).prep(cfg, split, out_dir, run_id)
    manifest["mirror_uri"] = mirror(out_dir, run_id, f"dataset-{split}", Settings.from_env())
    return manifest


@tracked("train")
def train_step(config_json: str, data_dir: str, out_dir: str, run_id: str = "", samples_path: str = "") -> dict:
    """Train (resuming from the last checkpoint, so a retried task continues where it died) on the
    training split ``data_dir``, as the preset's family does; then the samples and config go to the run."""
    from ..checkpoint import CONFIG_NAME, SAMPLES_DIR

    cfg, settings = PipelineConfig.from_json(config_json), Settings.from_env()
    threads.configure()  # the thread policy, decided once at the task's entry (torchrun ranks: their share)
    result = family(cfg).train(cfg, data_dir, out_dir, run_id, settings)
    samples = sorted((Path(out_dir) / SAMPLES_DIR).glob("*.png"))
    result["mirror_uri"] = mirror(out_dir, run_id, "model", settings)
    if run_id:
        tracking.log_artifacts(run_id, str(Path(out_dir) / SAMPLES_DIR), "samples")
        tracking.log_artifact(run_id, str(Path(out_dir) / CONFIG_NAME), "config")
    if samples_path and samples:
        s3.upload_file(samples[-1], samples_path)  # a local atomic copy
    return result


@tracked("evaluate")
def evaluate_step(
    config_json: str, checkpoint_dir: str, reference_dir: str, run_id: str = "", train_dir: str = ""
) -> dict:
    """Score the trained model against the reference split ``reference_dir`` as the preset's family does
    (``train_dir``: the training split, which class-conditional presets use); returns the metrics."""
    threads.configure()  # the thread policy: free cores for the Inception, workers capped at them
    cfg = PipelineConfig.from_json(config_json)
    with tempfile.TemporaryDirectory(prefix="ganforge-eval-") as tmp:
        return family(cfg).evaluate(cfg, checkpoint_dir, reference_dir, train_dir, run_id, tmp)


def _in_process(run_id: str, fn: Callable[[Callable | None], object]):
    """``fn(on_metrics)`` with the run's metrics callback (None without a run), flushed after."""
    callback = None
    if run_id:
        tracking.configure()
        callback = tracking.MlflowMetricsCallback(run_id)
    result = fn(callback)
    if callback is not None:
        callback.flush()
    return result


def prep_generation(cfg: PipelineConfig, split: str, out_dir: str, run_id: str) -> dict:
    """One split of the source as a validated array + manifest (``ganforge.data.prepare``)."""
    manifest = prepare(cfg.data, out_dir, split=split)
    if run_id:
        tracking.configure()
        tracking.log_params(
            run_id, {f"dataset.{split}.sha256": manifest["sha256"], f"dataset.{split}.count": manifest["count"]}
        )
    return manifest


def train_generation(cfg: PipelineConfig, data_dir: str, out_dir: str, run_id: str, settings: Settings) -> dict:
    """``train.launcher`` local: in this process, or torchrun ranks on this node; trainjob/pytorchjob:
    a cluster job through S3 (``cluster_train.launch_cluster_training``), downloaded into out_dir."""
    from ..train import train
    from .cluster_train import launch_cluster_training

    if cfg.train.launcher != "local":
        return launch_cluster_training(cfg, data_dir, out_dir, run_id, settings)
    if cfg.train.nproc * cfg.train.nnodes > 1:
        return _train_with_torchrun(cfg, data_dir, out_dir, run_id)
    r = _in_process(run_id, lambda cb: train(cfg, data_dir, out_dir, resume=True, on_metrics=cb))
    return {
        "step": r.step,
        "epoch": r.epoch,
        "seconds": r.seconds,
        "img_per_s": r.img_per_s,
        "samples": [str(p) for p in r.samples],
    }


def _train_with_torchrun(cfg: PipelineConfig, data_dir: str, out_dir: str, run_id: str) -> dict:
    """N ranks on this node through torchrun, each a ``ganforge.platform.worker``; rank 0 logs to the run."""
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
            module=WORKER_MODULE,
        )
        subprocess.run(cmd, check=True, env=env)
    ckpt = read_checkpoint(Path(out_dir) / CHECKPOINT_NAME)
    return {"step": int(ckpt["step"]), "epoch": int(ckpt["epoch"])}


def evaluate_generation(
    cfg: PipelineConfig, checkpoint_dir: str, reference_dir: str, train_dir: str, run_id: str, tmp: str
) -> dict:
    """FID/KID of the final EMA generator, and the FID curve over the run's snapshots when it kept any.

    Class-conditional presets also get per-class FID and, from ``train_dir`` (the training split),
    the class accuracy of their samples with its ceiling (``ganforge.class_metrics``).

    The curve (``eval.curve_samples`` per point, same real reference) goes to MLflow as metric
    histories ``fid_nN``/``kid_nN`` at each snapshot's step and as ``fid_curve/fid_curve.{csv,png}``.
    """
    from ..curve import evaluate_run

    train_dir = train_dir if cfg.model.num_classes else ""
    metrics, rows = evaluate_run(checkpoint_dir, reference_dir, tmp, n=cfg.eval.n_samples, train_dir=train_dir or None)
    upload_evaluation(run_id, tmp)
    if run_id:
        log_evaluation(run_id, metrics, rows, tmp)
    return metrics


def upload_evaluation(run_id: str, eval_dir: str | Path) -> None:
    """With an artifact root (a cluster run), ``metrics.json`` and the FID curve's files of ``eval_dir`` go
    beside the run's checkpoint under ``runs/RUN_ID/``."""
    settings = Settings.from_env()
    if not settings.artifact_root:
        return
    run_prefix = fileio.join(settings.artifact_root, "runs", run_id or "no-run")
    s3.upload_file(Path(eval_dir) / "metrics.json", fileio.join(run_prefix, "metrics.json"))
    for name in ("fid_curve.csv", "fid_curve.png"):
        if (Path(eval_dir) / name).is_file():
            s3.upload_file(Path(eval_dir) / name, fileio.join(run_prefix, "fid_curve", name))


def log_evaluation(run_id: str, metrics: dict, rows: list[dict], eval_dir: str | Path) -> None:
    """Scores at the generator step they were measured (same axis as the losses); the curve as
    metric histories and as ``fid_curve/`` artifacts; an audio run's ``eval_audio/`` as artifacts."""
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
    audio_dir = Path(eval_dir) / EVAL_AUDIO_DIR
    if audio_dir.is_dir():  # an audio run's spectrogram grids and WAVs (ganforge.eval_audio)
        tracking.log_artifacts(run_id, str(audio_dir), EVAL_AUDIO_DIR)


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
    from . import registry

    cfg = PipelineConfig.from_json(config_json)
    metrics = json.loads(metrics_json)
    # The evaluation's dataset is the FID reference; the version's dataset_sha256 is the training data's.
    if "dataset_sha256" in metrics:
        metrics["reference_dataset_sha256"] = metrics.pop("dataset_sha256")
    tracking.configure()
    G = family(cfg).program(checkpoint_dir)
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


def generation_program(checkpoint_dir: str):
    """The EMA generator of the run's checkpoint: the program a version registers."""
    from ..checkpoint import CHECKPOINT_NAME, load_generator

    return load_generator(Path(checkpoint_dir) / CHECKPOINT_NAME)[0]


def prep_translation(cfg: PipelineConfig, split: str, out_dir: str, run_id: str) -> dict:
    """Unpaired translation: the split of domain A into ``out_dir/a`` and of domain B into ``out_dir/b``
    (``ganforge.cyclegan.prepare_domain``). The manifest covers both: counts summed, checksums ``A+B``."""
    from ..cyclegan import DOMAINS, prepare_domain

    manifests = {d: prepare_domain(cfg.data, d, Path(out_dir) / d, split) for d in DOMAINS}
    if run_id:
        tracking.configure()
        params = {f"dataset.{d}.{split}.{k}": m[k] for d, m in manifests.items() for k in ("sha256", "count")}
        if split == cfg.data.split:
            params |= {f"dataset.{d}.class": m["domain_class"] for d, m in manifests.items()}
        tracking.log_params(run_id, params)
    a = manifests["a"]
    return {
        **{k: a[k] for k in ("source", "split", "shape")},
        "count": sum(m["count"] for m in manifests.values()),
        "sha256": "+".join(m["sha256"] for m in manifests.values()),
        "domains": manifests,
    }


def train_translation(cfg: PipelineConfig, data_dir: str, out_dir: str, run_id: str, settings: Settings) -> dict:
    """A cyclegan run on the prepared domains ``data_dir/a`` and ``data_dir/b``, one rank in this process."""
    from ..cyclegan import train_cyclegan

    a, b = Path(data_dir) / "a", Path(data_dir) / "b"
    r = _in_process(run_id, lambda cb: train_cyclegan(cfg, a, b, out_dir, resume=True, on_metrics=cb))
    return {"step": r.step, "epoch": r.epoch}


def translation_program(checkpoint_dir: str):
    """Both EMA generators as one program (``ganforge.cyclegan.CycleTranslator``)."""
    from ..cyclegan import CycleTranslator, load_translators

    return CycleTranslator(*load_translators(checkpoint_dir)[:2])


def evaluate_translation(
    cfg: PipelineConfig, checkpoint_dir: str, reference_dir: str, train_dir: str, run_id: str, tmp: str
) -> dict:
    """FID A→B vs held-out B and B→A vs held-out A, their mean ``fid`` (the promotion metric), cycle L1, the
    input / translated / reconstructed grid (logged to MLflow as ``evaluation/translations.png``) and, when
    the run kept snapshots, the FID curve over them (``fid_nN`` histories and ``fid_curve/``, as for images)."""
    from ..curve import evaluate_translation_run
    from ..paths import cache_dir

    ref = Path(reference_dir)
    metrics = evaluate_translation_run(checkpoint_dir, ref / "a", ref / "b", tmp, cache_dir(), n=cfg.eval.n_samples)
    upload_evaluation(run_id, tmp)
    if run_id:
        log_translation_evaluation(run_id, metrics, tmp)
    metrics.pop("grid")
    return metrics


def log_translation_evaluation(run_id: str, metrics: dict, eval_dir: str | Path) -> None:
    """A cyclegan (or pix2pix) evaluation into its MLflow run: the scores at the checkpoint's step, the grid
    (``metrics["grid"]``) under ``evaluation/``, and a cyclegan run's FID curve when eval_dir has one."""
    from ..curve import CURVE_CSV, read_curve

    tracking.configure()
    tracking.log_artifact(run_id, metrics["grid"], "evaluation")
    log_evaluation(run_id, metrics, read_curve(Path(eval_dir) / CURVE_CSV), eval_dir)


def prep_editing(cfg: PipelineConfig, split: str, out_dir: str, run_id: str) -> dict:
    """Paired editing: the split's (degraded input, target) pairs of ``data.task``
    (``ganforge.edit_data.prepare_paired``); the targets' checksum and count go to the run as for generation."""
    from ..edit_data import prepare_paired

    manifest = prepare_paired(cfg.data, out_dir, split=split)
    if run_id:
        tracking.configure()
        tracking.log_params(
            run_id,
            {
                f"dataset.{split}.sha256": manifest["sha256"],
                f"dataset.{split}.count": manifest["count"],
                f"dataset.{split}.input_sha256": manifest["input_sha256"],
            },
        )
    return manifest


def evaluate_editing(
    cfg: PipelineConfig, checkpoint_dir: str, reference_dir: str, train_dir: str, run_id: str, tmp: str
) -> dict:
    """PSNR, SSIM, FID and KID of the EMA editor's edits of the held-out pairs ``reference_dir`` and the same
    scores of the task's plain baseline (bicubic; mean-fill) as ``baseline_*``
    (``ganforge.edit_metrics.evaluate_editing_run``); the grid goes to MLflow as ``evaluation/edits.png``.
    ``fid`` is the promotion metric, as for every family."""
    from ..edit_metrics import evaluate_editing_run
    from ..paths import cache_dir

    metrics = evaluate_editing_run(checkpoint_dir, reference_dir, tmp, cache_dir(), n=cfg.eval.n_samples)
    baseline = metrics.pop("baseline")
    metrics["baseline"] = baseline.pop("name")
    metrics.update({f"baseline_{k}": v for k, v in baseline.items()})
    if run_id:
        log_translation_evaluation(run_id, metrics, tmp)
    metrics.pop("grid")
    return metrics


def editing_program(checkpoint_dir: str):
    """The EMA U-Net as a whole editing step (``ganforge.pix2pix.Editor``): degraded images in, edits out."""
    from ..pix2pix import as_editor, load_editor

    return as_editor(*load_editor(checkpoint_dir))


@dataclass(frozen=True)
class Family:
    """How one family of presets prepares a split, trains, evaluates and what it registers: the DAG is
    the same for every family (prep per split → train → evaluate → register), only these functions differ."""

    prep: Callable[..., dict]  # (cfg, split, out_dir, run_id) -> the split's manifest
    train: Callable[..., dict]  # (cfg, data_dir, out_dir, run_id, settings) -> step, epoch, ...
    evaluate: Callable[..., dict]  # (cfg, checkpoint_dir, reference_dir, train_dir, run_id, tmp) -> metrics
    program: Callable[[str], Any]  # checkpoint_dir -> the module a registered version holds


FAMILIES: dict[str, Family] = {
    "generation": Family(prep_generation, train_generation, evaluate_generation, generation_program),
    "translation": Family(prep_translation, train_translation, evaluate_translation, translation_program),
    "editing": Family(prep_editing, train_generation, evaluate_editing, editing_program),
}
# Architectures outside the generation family (unconditional and class-conditional generators).
ARCH_FAMILIES = {"cyclegan": "translation", "pix2pix": "editing"}


def family(cfg: PipelineConfig) -> Family:
    """The preset's family, from its architecture."""
    return FAMILIES[ARCH_FAMILIES.get(cfg.model.arch, "generation")]
