"""Registering a generator: export it (``pt2``), log it into the pipeline run with its signature and
input example, link its scores, and create the model version with its provenance tags."""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from collections.abc import Mapping
from functools import partial

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.models import Model, infer_signature

from ganforge.config import PipelineConfig
from ganforge.platform import tracking
from ganforge.platform.model_files import check_model_dir
from ganforge.platform.settings import git_commit

from . import styles
from .common import (
    ARTIFACT_SHA256_TAG,
    CLASS_NAMES_TAG,
    FID_TAG,
    GENERATOR_ARTIFACT,
    MARGIN_TAG,
    MAX_TAG_VALUE_CHARS,
    SERIALIZATION_FORMAT,
    RegistryError,
    artifact_digest,
    one_line,
    quiet_download,
)


def latent_example(nz: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    """The input example logged with the model: a (batch, nz) float32 Gaussian latent."""
    return np.random.default_rng(seed).standard_normal((batch, nz)).astype(np.float32)


def image_example(cfg: PipelineConfig, batch: int = 2, seed: int = 0) -> np.ndarray:
    """Image-to-image models: the input example, float32 in [-1, 1]: cyclegan (batch, C, R, R); pix2pix
    sr the low-resolution images (batch, C, R/2, R/2); pix2pix inpaint (batch, C+1, R, R), the images and
    the centre hole's mask channel (+1 in the hole, -1 visible: ``ganforge.pix2pix.Editor``)."""
    d, rng = cfg.data, np.random.default_rng(seed)
    if cfg.model.arch == "pix2pix" and d.task == "sr":
        side = d.resolution // 2
        return rng.uniform(-1, 1, (batch, d.channels, side, side)).astype(np.float32)
    images = rng.uniform(-1, 1, (batch, d.channels, d.resolution, d.resolution)).astype(np.float32)
    if cfg.model.arch != "pix2pix":
        return images
    from ganforge.edit_data import make_masks

    mask = make_masks(batch, d.resolution, "centre", 0, "test").astype(np.float32) * 2.0 - 1.0
    return np.concatenate([images, mask], axis=1)


def label_example(num_classes: int, batch: int = 2) -> np.ndarray:
    """Class-conditional generators: the labels logged with the latent example, int64 (batch,)."""
    return (np.arange(batch) % num_classes).astype(np.int64)


def conditional_signature(z: np.ndarray, labels: np.ndarray, out: np.ndarray):
    """The signature of a class-conditional program: inputs ``z`` (B, nz) float32 and ``labels`` (B,) int64."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    inputs = Schema(
        [TensorSpec(np.dtype(np.float32), (-1, z.shape[1]), "z"), TensorSpec(np.dtype(np.int64), (-1,), "labels")]
    )
    return ModelSignature(inputs=inputs, outputs=infer_signature(z, out).outputs)


def generator_output(generator: torch.nn.Module, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Run the (CPU, eval-mode) generator on z (and labels); a clear error if it does not take (B, nz)."""
    try:
        with torch.no_grad():
            out = generator(torch.from_numpy(z), *(() if labels is None else (torch.from_numpy(labels),)))
    except Exception as e:  # any shape/type failure inside the user's module
        raise RegistryError(
            f"the generator does not accept a latent batch of shape {z.shape} (cfg.model.nz={z.shape[1]}): {e}"
        ) from e
    if not isinstance(out, torch.Tensor) or out.shape[0] != z.shape[0]:
        raise RegistryError(f"the generator must return a tensor with batch size {z.shape[0]}, got {type(out)}")
    return out.numpy()


def numeric_metrics(metrics: Mapping[str, object]) -> dict[str, float]:
    """The numbers among evaluation outputs (which also carry strings such as the checkpoint
    path). A non-finite or negative fid (a squared distance: never below 0) or a non-finite KID is
    an evaluation bug or a forged record, not a model: refused, since the FID gate would crown it."""
    out = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if FID_TAG in metrics and not (math.isfinite(out.get(FID_TAG, math.nan)) and out[FID_TAG] >= 0):
        raise RegistryError(
            f"fid={metrics[FID_TAG]!r} is not a finite number >= 0; re-run evaluation before registering"
        )
    bad_kid = [k for k in ("kid_mean", "kid_std") if k in metrics and not math.isfinite(out.get(k, math.nan))]
    if bad_kid:
        raise RegistryError(
            f"{bad_kid[0]}={metrics[bad_kid[0]]!r} is not a finite number; re-run evaluation before registering"
        )
    return out


def tag_value(value: object) -> str:
    text = (
        value if isinstance(value, str) else repr(value) if isinstance(value, float) else json.dumps(value, default=str)
    )
    return text[:MAX_TAG_VALUE_CHARS]


def dataset_sha256(run_params: Mapping[str, str]) -> str:
    """The training data's sha256, as the prep step logged it into the run; a translation run (two domains,
    ``dataset.a.train.sha256`` and ``dataset.b.train.sha256``) records both, as ``A+B``."""
    if "dataset.train.sha256" in run_params:
        return run_params["dataset.train.sha256"]
    domains = [run_params.get(f"dataset.{d}.train.sha256") for d in ("a", "b")]
    return "+".join(domains) if all(domains) else "unknown"


def version_tags(
    cfg: PipelineConfig, metrics: Mapping[str, object], tags: Mapping[str, object], run_params: Mapping[str, str]
) -> dict[str, str]:
    """Tags of a registered version: evaluation outputs and provenance; explicit non-empty
    ``tags`` win over what is derived here."""
    out = {
        "git_commit": git_commit(),
        "config_hash": cfg.config_hash(),
        "pipeline": cfg.name,
        "profile": cfg.profile,
        "dataset_sha256": dataset_sha256(run_params),
    }
    out.update({k: tag_value(v) for k, v in metrics.items()})
    out.update({k: tag_value(v) for k, v in tags.items() if tag_value(v)})
    return out


def register_generator(
    run_id: str,
    generator: torch.nn.Module,
    cfg: PipelineConfig,
    metrics: dict,
    tags: dict,
    class_names: list[str] | None = None,
) -> int:
    """Log the generator into the pipeline run and register it as a new version of
    ``cfg.model_name``; tag the version with its metrics and provenance. Returns the version.

    ``metrics`` normally holds ``fid``, ``kid_mean``, ``kid_std`` (other entries become tags);
    a version without ``fid`` can be registered but only ``promote_manual(..., force=True)``
    can make it champion.

    The generator is logged as a ``pt2`` (torch.export) MLflow model from CPU in eval mode,
    with the latent signature and input example; its numeric metrics are linked to that
    LoggedModel (sortable: ``search_logged_models(order_by=metrics.fid)``). The version is
    created with all its tags at once, among them ``ganforge.artifact_sha256`` (the digest of
    the stored files) and ``ganforge.promotion_margin``.

    A class-conditional generator (``cfg.model.num_classes``) is exported as a program of
    ``(z, labels)``; ``class_names`` go into the MLflow model's metadata (``class_names``, label
    order) and the version's ``ganforge.class_names`` tag, so a server maps names without ganforge.

    A pix2pix U-Net is exported as its whole editing step (``ganforge.pix2pix.Editor``): sr takes
    (B, C, R/2, R/2) low-resolution images, inpaint (B, C+1, R, R) mean-filled images and the hole mask;
    both give (B, C, R, R) in [-1, 1].

    A stylegan generator is stored as three programs (``styles``): G(z, truncation), its mapping
    and its synthesis, so truncation and style mixing work from the registry.
    """
    c = tracking.client()
    scores = numeric_metrics(metrics)
    cpu_generator = copy.deepcopy(generator).cpu().eval()
    if cfg.model.arch == "pix2pix":  # a bare U-Net becomes the whole editing step
        from ganforge.pix2pix import as_editor

        cpu_generator = as_editor(cpu_generator, cfg).eval()
    z = latent_example(cfg.model.nz)
    log = partial(mlflow.pytorch.log_model, cpu_generator)
    if cfg.model.arch in ("cyclegan", "pix2pix"):  # images in, images out (cyclegan: both directions)
        example = image_example(cfg)
        metadata = (
            {"outputs": "dim 1: 0 = A→B, 1 = B→A"}
            if cfg.model.arch == "cyclegan"
            else {"task": cfg.data.task, "inputs": "pix2pix.Editor: images in [-1, 1]"}
        )
        with torch.no_grad():
            signature = infer_signature(example, cpu_generator(torch.from_numpy(example)).numpy())
    elif cfg.model.num_classes:
        labels = label_example(cfg.model.num_classes)
        example, metadata = (z, labels), {"class_names": list(class_names or []), "num_classes": cfg.model.num_classes}
        signature = conditional_signature(z, labels, generator_output(cpu_generator, z, labels))
    elif cfg.model.arch == "stylegan" and styles.is_stylegan(cpu_generator):
        example, metadata = z, styles.style_metadata(cpu_generator)
        signature = styles.style_signature(z, generator_output(cpu_generator, z))
        # MLflow's pytorch flavor writes the model's files; StyleGANFlavor then writes the three programs.
        flavor = styles.StyleGANFlavor(cpu_generator, cfg.model.nz)
        log = partial(Model.log, None, flavor, pytorch_model=styles.PlainLatentProgram(cpu_generator))
    else:
        example, metadata = z, None
        signature = infer_signature(z, generator_output(cpu_generator, z))
    # log_model puts its LoggedModel in the active experiment (else "Default", ./mlruns): use the run's.
    with tracking.run_experiment(run_id):
        try:
            info = log(
                name=GENERATOR_ARTIFACT,
                serialization_format=SERIALIZATION_FORMAT,
                signature=signature,
                input_example=example,
                run_id=run_id,
                metadata=metadata,
                # Explicit requirements skip MLflow's slow inference (it re-loads the model in a subprocess).
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
            )
        except RuntimeError as e:  # torch.export's refusals (its Dynamo errors are RuntimeErrors)
            raise RegistryError(
                f"torch.export cannot trace this generator on a (B, {cfg.model.nz}) latent "
                f"({one_line(e)}); keep its forward free of data-dependent Python control flow"
            ) from e
    with tempfile.TemporaryDirectory(prefix="ganforge-model-") as tmp:
        local = quiet_download(info.model_uri, tmp)
        check_model_dir(local, info.model_uri)  # what loading will demand, so a refusal shows up here first
        sha256 = artifact_digest(local)
    run = c.get_run(run_id)
    git = git_commit()
    c.set_logged_model_tags(info.model_id, {tracking.MLFLOW_GIT_COMMIT_TAG: git, ARTIFACT_SHA256_TAG: sha256})
    link_metrics(c, run_id, info.model_id, scores)
    version_tag_values = {
        **version_tags(cfg, metrics, tags, run.data.params),
        ARTIFACT_SHA256_TAG: sha256,
        MARGIN_TAG: repr(float(cfg.registry.promotion_margin)),
    }
    if cfg.model.num_classes:
        version_tag_values[CLASS_NAMES_TAG] = json.dumps(list(class_names or []))
    model_version = mlflow.register_model(info.model_uri, cfg.model_name, tags=version_tag_values)
    return int(model_version.version)


def link_metrics(c: MlflowClient, run_id: str, model_id: str, scores: Mapping[str, float]) -> None:
    """Log ``scores`` linked to the LoggedModel ``model_id`` (MLflow stores them in the run too).

    The pipeline's evaluate step already logged its scores into the run at the training step:
    a score with the same value reuses that entry's timestamp and step, which MLflow treats as
    the same run metric (no duplicate in the run's history) while linking it to the model.
    """
    if not scores:
        return
    now_ms = int(time.time() * 1000)
    entities = []
    for key, value in scores.items():
        same = [m for m in c.get_metric_history(run_id, key) if m.value == value]
        timestamp, step = (same[-1].timestamp, same[-1].step) if same else (now_ms, 0)
        entities.append(Metric(key, value, timestamp, step, model_id=model_id))
    c.log_batch(run_id, metrics=entities, synchronous=True)
