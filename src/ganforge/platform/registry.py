"""MLflow model registry: register generators, FID-gated champion/challenger aliases.

Serialization: generators are logged with ``serialization_format="pt2"`` (``torch.export``),
never pickled. A pickled ``nn.Module`` (MLflow's ``"pickle"`` format) is loaded with
``torch.load(weights_only=False)``, which runs whatever code the file holds, and needs the
model's classes (``ganforge``) importable. A ``pt2`` archive holds a graph of ATen ops (JSON)
and raw tensor bytes; it loads with only torch and mlflow installed. ``torch.export.load``
itself is not safe on a tampered archive: it unpickles the archive's sample inputs (and any
record marked ``use_pickle``) with ``weights_only=False``. MLflow 3.17's loader refuses such
an archive before ``torch.export.load`` runs when ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``
(``mlflow.pytorch._validate_pt2_archive_is_pickle_free``: every record must be JSON/text or
pass ``torch.load(weights_only=True)``); its default (``true``) skips that check.

So loading here (``load_version``) is: download the version's files once, into a private
temporary directory; compare their digest with the ``ganforge.artifact_sha256`` tag written at
registration (a changed file is refused before anything is parsed); check their content
(``model_files``: only the files and ``MLmodel`` entries ganforge registers — no bundled code,
no loader module but MLflow's pytorch flavor, no pickle format); then load that same verified
copy through MLflow with pickle deserialization disallowed. The content rules do not rest on
the tag, which the writer of the files can usually rewrite too. ``save_verified`` writes the
verified copy to a directory for serving teams, who load it with MLflow alone (README,
"Serving the champion"). The generator is exported from CPU in eval mode with a dynamic
batch dimension; another device gets it through ``torch.export.passes.move_to_device_pass``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from ganforge.config import PipelineConfig
from ganforge.errors import GanforgeError
from ganforge.fileio import atomic_dir, check_output_dir
from ganforge.generate import parse_registry_uri
from ganforge.platform import tracking
from ganforge.platform.model_files import CLIENT_WRITTEN_FILES, ModelContentError, check_model_dir
from ganforge.platform.settings import git_commit

CHAMPION = "champion"
CHALLENGER = "challenger"
FID_TAG = "fid"
QUALITY_TAGS = ("fid", "kid_mean", "kid_std")
PROMOTION_REQUESTED_TAG = "ganforge.promotion_requested_at"
"""Version tag: unix time at which ``promote`` announced the version as a candidate."""
PROMOTED_TAG = "ganforge.promoted_at"
"""Version tag: unix time at which a promoter decided to make the version champion (written
just before the alias), so a later stale write over it can be undone."""
MANUAL_PROMOTION_TAG = "ganforge.manual_promotion_at"
"""Registered-model tag: unix time of the last human ``promote_manual``."""
RIVAL_WINDOW_S = 600.0
"""Candidates announced within this window count as in flight (a promotion takes seconds;
the slack covers clock skew between pods)."""
MAX_CONVERGE_ROUNDS = 50
LOCK_TIMEOUT_S = 120.0
GENERATOR_ARTIFACT = "generator"
MAX_TAG_VALUE_CHARS = 5000
SERIALIZATION_FORMAT = "pt2"
ARTIFACT_SHA256_TAG = "ganforge.artifact_sha256"
"""Version tag: ``artifact_digest`` of the model's files, written when the version is created."""
MARGIN_TAG = "ganforge.promotion_margin"
"""Version tag: the FID margin this version must beat the champion by (its own run's setting)."""
CLASS_NAMES_TAG = "ganforge.class_names"
"""Class-conditional versions: their class names (JSON list, label order), for ``generate --class``."""
VERIFIED_MANIFEST = "ganforge-verified.json"
"""Written by ``save_verified`` beside the model files: which version was verified, and its files."""


class RegistryError(GanforgeError, RuntimeError):
    """A registry operation failed; the message names the model/version and the fix."""


@dataclass(frozen=True)
class Candidate:
    """A model version as the promotion rule sees it. ``fid`` None: never evaluated.
    ``margin``: how much lower than the champion's its fid must be (its ``MARGIN_TAG``)."""

    version: int
    fid: float | None
    margin: float = 0.0


def latent_example(nz: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    """The input example logged with the model: a (batch, nz) float32 Gaussian latent."""
    return np.random.default_rng(seed).standard_normal((batch, nz)).astype(np.float32)


def image_example(cfg: PipelineConfig, batch: int = 2, seed: int = 0) -> np.ndarray:
    """Image-to-image models (``cyclegan``): the input example, (batch, C, H, W) float32 in [-1, 1]."""
    d = cfg.data
    return (
        np.random.default_rng(seed).uniform(-1, 1, (batch, d.channels, d.resolution, d.resolution)).astype(np.float32)
    )


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


def parse_score(value: str | None) -> float | None:
    """A score tag (fid, kid_mean, ...) as a float; None when absent or not a finite number."""
    try:
        score = float(value) if value is not None else None
    except ValueError:
        return None
    return score if score is not None and math.isfinite(score) else None


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
    """
    c = tracking.client()
    scores = numeric_metrics(metrics)
    cpu_generator = copy.deepcopy(generator).cpu().eval()
    z = latent_example(cfg.model.nz)
    if cfg.model.arch == "cyclegan":  # a translator: images in, both directions' translations out
        example, metadata = image_example(cfg), {"outputs": "dim 1: 0 = A→B, 1 = B→A"}
        with torch.no_grad():
            signature = infer_signature(example, cpu_generator(torch.from_numpy(example)).numpy())
    elif cfg.model.num_classes:
        labels = label_example(cfg.model.num_classes)
        example, metadata = (z, labels), {"class_names": list(class_names or []), "num_classes": cfg.model.num_classes}
        signature = conditional_signature(z, labels, generator_output(cpu_generator, z, labels))
    else:
        example, metadata = z, None
        signature = infer_signature(z, generator_output(cpu_generator, z))
    # log_model puts its LoggedModel in the active experiment (else "Default", ./mlruns): use the run's.
    with tracking.run_experiment(run_id):
        try:
            info = mlflow.pytorch.log_model(
                cpu_generator,
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


def logged_model_id(version) -> str | None:
    """The LoggedModel behind a ``ModelVersion``: MLflow's OSS stores keep it only as the
    version's source, ``models:/<model_id>``."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = version.source or ""
    rest = source[len("models:/") :] if source.startswith("models:/") else ""
    return rest if rest.startswith("m-") and "/" not in rest else None


def version_metrics(c: MlflowClient, version) -> dict[str, float]:
    """The metrics linked to a version's LoggedModel (latest value per key); {} without one."""
    model_id = logged_model_id(version)
    return {} if model_id is None else {m.key: m.value for m in c.get_logged_model(model_id).metrics or []}


def one_line(error: BaseException) -> str:
    """An exception's message on one line (MLflow's and torch's span several)."""
    return " ".join(str(error).split())


def artifact_digest(model_dir: str | os.PathLike) -> str:
    """sha256 over the model directory's files: the lines ``<sha256 of file>  <relative path>``
    sorted by path (what ``sha256sum`` prints for them, in C-locale order), hashed again.
    ``registered_model_meta`` is left out: MLflow's downloader writes it into every download.
    """
    root = Path(model_dir)
    files = sorted(
        (p.relative_to(root).as_posix(), p)
        for p in root.rglob("*")
        if p.is_file() and p.name not in CLIENT_WRITTEN_FILES
    )
    listing = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {rel}\n" for rel, p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def is_missing(error: MlflowException) -> bool:
    """True when MLflow says the thing does not exist (not for connection or auth failures)."""
    return error.error_code == "RESOURCE_DOES_NOT_EXIST"


def registered_model(c: MlflowClient, model_name: str):
    """The registered model, or a clear error listing what exists."""
    try:
        return c.get_registered_model(model_name)
    except MlflowException as e:
        if not is_missing(e):
            raise
        known = sorted(m.name for m in c.search_registered_models())
        raise RegistryError(
            f"no registered model named {model_name!r} at {mlflow.get_registry_uri()}; known models: {known or 'none'}"
        ) from None


def model_version(c: MlflowClient, model_name: str, version: int):
    """The version, or a clear error listing the versions that exist."""
    registered_model(c, model_name)
    try:
        return c.get_model_version(model_name, str(version))
    except MlflowException as e:
        if not is_missing(e):
            raise
        known = sorted(int(v.version) for v in c.search_model_versions(f"name = '{model_name}'"))
        raise RegistryError(f"model {model_name!r} has no version {version}; versions: {known or 'none'}") from None


@dataclass(frozen=True)
class RegistryState:
    """One read of a registered model: its aliases, the last human decision, every version's tags."""

    aliases: dict[str, int]
    manual_promotion_at: float
    version_tags: dict[int, dict[str, str]]

    def candidate(self, version: int) -> Candidate:
        return candidate_from_tags(version, self.version_tags.get(version, {}))

    def champion(self) -> Candidate | None:
        version = self.aliases.get(CHAMPION)
        return None if version is None else self.candidate(version)

    def in_flight(self, now: float, tag: str = PROMOTION_REQUESTED_TAG) -> list[Candidate]:
        """Versions ``promote`` announced (``tag``: or made champion) within the rival window
        and after the last human decision, that have an fid."""
        since = max(now - RIVAL_WINDOW_S, self.manual_promotion_at)
        announced = [v for v, tags in self.version_tags.items() if float(tags.get(tag, "-inf")) > since]
        return [c for c in map(self.candidate, announced) if c.fid is not None]


def read_state(c: MlflowClient, model_name: str) -> RegistryState:
    """Aliases first, then versions: a promoter's announcement made before this read is seen."""
    model = registered_model(c, model_name)
    versions = c.search_model_versions(f"name = '{model_name}'")
    return RegistryState(
        aliases={alias: int(v) for alias, v in model.aliases.items()},
        manual_promotion_at=float(model.tags.get(MANUAL_PROMOTION_TAG, "-inf")),
        version_tags={int(v.version): dict(v.tags) for v in versions},
    )


def candidate_from_tags(version: int, tags: Mapping[str, str]) -> Candidate:
    """A version's fid and its own margin (0 for a version registered before margins were tagged)."""
    margin, fid = parse_score(tags.get(MARGIN_TAG)), parse_score(tags.get(FID_TAG))
    return Candidate(
        int(version),
        fid if fid is not None and fid >= 0 else None,  # a negative fid is no score (see numeric_metrics)
        margin if margin is not None and margin >= 0 else 0.0,
    )


def candidate(c: MlflowClient, model_name: str, version: int) -> Candidate:
    return candidate_from_tags(version, model_version(c, model_name, version).tags)


def beats(rival: Candidate, champion: Candidate | None) -> bool:
    """The promotion rule for one version: it takes over if there is no champion, the champion
    was never evaluated, or its fid < champion fid - *its own* margin."""
    if champion is None or champion.fid is None:
        return True
    return rival.fid is not None and rival.fid < champion.fid - rival.margin


def choose_champion(champion: Candidate | None, rivals: Iterable[Candidate]) -> Candidate | None:
    """The rule over a set: of the rivals that beat the champion (``beats``, each with its own
    margin), the best (lowest fid, then lowest version) takes over; none: the champion stays.

    Stable: applied again with the same rivals it keeps its choice (a rival that beats the
    new champion by its margin would have beaten the old one too, with a lower fid). The
    champion's fid only goes down: a worse model is never promoted.
    """
    best = min(
        (r for r in rivals if r.fid is not None and beats(r, champion)), key=lambda r: (r.fid, r.version), default=None
    )
    return champion if best is None else best


@contextlib.contextmanager
def promotion_lock(model_name: str) -> Iterator[None]:
    """A file lock beside a local sqlite store; nothing for a server (no lock exists there)."""
    db = tracking.sqlite_path(mlflow.get_registry_uri())
    if db is None:
        yield
        return
    from filelock import FileLock, Timeout

    safe_name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model_name)
    lock = FileLock(str(db.parent / f".{db.name}.promote-{safe_name}.lock"))
    try:
        lock.acquire(timeout=LOCK_TIMEOUT_S)
    except Timeout:
        raise RegistryError(
            f"another promotion of {model_name!r} holds {lock.lock_file} for over "
            f"{LOCK_TIMEOUT_S:.0f}s; if no ganforge process is running, delete that file"
        ) from None
    try:
        yield
    finally:
        lock.release()


def converge_champion(c: MlflowClient, model_name: str, me: Candidate) -> Candidate | None:
    """Move ``champion`` until a fresh read finds it where the rule says; return it.

    Each round re-reads the champion and the in-flight candidates, applies
    ``choose_champion`` and writes only if the alias is elsewhere. The loop ends only on a
    read that found the alias consistent, and every write is followed by such a read.

    With each version's own margin the rule depends on order (a lenient version promoted
    first can keep out a better but strict one), so a stale write could replace a better
    champion by a worse one that no longer has to beat it. Hence the floor: a version some
    promoter made champion in this window (``PROMOTED_TAG``) is never replaced by a worse
    one, so the champion's fid never goes up and the end state is that of the promotions run
    one after another in some order.
    """
    for _ in range(MAX_CONVERGE_ROUNDS):
        state = read_state(c, model_name)
        champion = state.champion()
        now = time.time()
        rivals = {r.version: r for r in state.in_flight(now)}
        rivals.setdefault(me.version, me)  # even if clock skew hid my own announcement
        target = choose_champion(champion, rivals.values())
        floor = min(state.in_flight(now, PROMOTED_TAG), key=lambda r: (r.fid, r.version), default=None)
        if floor is not None and target is not None and target.fid is not None and floor.fid < target.fid:
            target = floor
        if target is None or (champion is not None and target.version == champion.version):
            return champion
        make_champion(c, model_name, target.version)
        # Spread rounds apart so concurrent promoters read each other's writes.
        time.sleep(random.uniform(0.0, 0.05))
    raise RegistryError(
        f"the champion of {model_name!r} kept moving for {MAX_CONVERGE_ROUNDS} rounds; "
        "retry the promotion (are many promotions running at once?)"
    )


def make_champion(c: MlflowClient, model_name: str, version: int) -> None:
    """A promoter's write: tag the version as promoted, then move the alias to it."""
    c.set_model_version_tag(model_name, str(version), PROMOTED_TAG, repr(time.time()))
    c.set_registered_model_alias(model_name, CHAMPION, str(version))


def announce(c: MlflowClient, model_name: str, version: int, margin: float | None) -> Candidate:
    """Step 1 of ``promote``: record the version's margin (when given), then announce it as a
    candidate. The margin is written first, so whoever sees the announcement sees the margin."""
    me = candidate(c, model_name, version)
    if me.fid is None:
        raise RegistryError(
            f"version {version} of {model_name!r} has no fid tag, so the FID gate cannot judge it; "
            f"evaluate it, or decide by hand: ganforge promote {model_name} {version} --force"
        )
    if margin is not None:
        if not (math.isfinite(margin) and margin >= 0):
            raise RegistryError(
                f"promotion margin {margin!r} for version {version} of {model_name!r} must be a "
                "finite number >= 0 (registry.promotion_margin)"
            )
        c.set_model_version_tag(model_name, str(version), MARGIN_TAG, repr(float(margin)))
        me = Candidate(me.version, me.fid, float(margin))
    c.set_model_version_tag(model_name, str(version), PROMOTION_REQUESTED_TAG, repr(time.time()))
    return me


def promote(model_name: str, version: int, margin: float | None = None) -> dict:
    """Apply the FID gate: ``champion`` moves to ``version`` only if there is no champion or
    its fid < champion fid - margin; otherwise ``version`` becomes ``challenger``.

    ``margin`` is the version's own: registration records its run's
    ``registry.promotion_margin`` as the version tag ``ganforge.promotion_margin``; a margin
    given here replaces it (None: keep the recorded one). Every promoter judges every
    version with that version's margin, so one run's lenient margin cannot promote a version
    another run's margin kept as challenger.

    Concurrency. Two pipeline runs can finish at once, and MLflow has no compare-and-set on
    aliases, so "read champion, compare, set alias" alone can leave the worse of two new
    versions as champion (both read the old champion; the better one writes first, the worse
    one overwrites it and never learns). The protocol:

    1. Announce (``announce``): tag the version's margin, then
       ``ganforge.promotion_requested_at = now``, *before* reading.
    2. Converge (``converge_champion``): repeatedly read the champion and every announced
       candidate of the last ``RIVAL_WINDOW_S`` seconds, compute the rule over all of them
       (each candidate against the champion with its own margin), write the alias if it is elsewhere,
       and stop only when a read finds it already right.

    Why this suffices without a lock: take the last write to ``champion``. Its writer then
    read the alias (still its own value) and all candidates announced so far, and found the
    alias right; any promoter that announced later reads after that and finds it right too
    (or it would write, contradicting "last"). So the final champion is the rule's choice
    over every concurrent candidate: no in-flight version beats it by more than its own margin.
    A stale writer that put a worse version there is repaired by its own re-read.

    On a local sqlite store a file lock also serialises promotions on this machine (cheap,
    and it keeps sqlite writers from contending); on a server the protocol alone applies.
    A human decision (``promote_manual``) starts a new epoch: earlier announcements no
    longer count, so a rollback is not undone by the next run.
    """
    c = tracking.client()
    with promotion_lock(model_name):
        previous = read_state(c, model_name).champion()
        me = announce(c, model_name, version, margin)
        champion = converge_champion(c, model_name, me)
        won = champion is not None and champion.version == me.version
        if not won:
            c.set_registered_model_alias(model_name, CHALLENGER, str(version))
        elif read_state(c, model_name).aliases.get(CHALLENGER) == me.version:
            c.delete_registered_model_alias(model_name, CHALLENGER)
    return {
        "alias": CHAMPION if won else CHALLENGER,
        "version": me.version,
        "previous_champion": previous.version if previous else None,
        "fid": me.fid,
        "champion_fid": previous.fid if previous else None,
    }


def promote_manual(model_name: str, version: int, force: bool = False) -> dict:
    """A human decision: make ``version`` champion regardless of the FID gate.

    Refuses a version that was never evaluated (no fid tag) unless ``force``.
    """
    c = tracking.client()
    me = candidate(c, model_name, version)
    if me.fid is None and not force:
        raise RegistryError(
            f"version {version} of {model_name!r} has no fid tag (it was never evaluated); "
            f"evaluate it first, or pass --force to make it champion anyway"
        )
    with promotion_lock(model_name):
        previous = read_state(c, model_name).champion()
        c.set_registered_model_tag(model_name, MANUAL_PROMOTION_TAG, repr(time.time()))
        c.set_registered_model_alias(model_name, CHAMPION, str(me.version))
        if read_state(c, model_name).aliases.get(CHALLENGER) == me.version:
            c.delete_registered_model_alias(model_name, CHALLENGER)
    return {
        "alias": CHAMPION,
        "version": me.version,
        "previous_champion": previous.version if previous else None,
        "fid": me.fid,
        "champion_fid": previous.fid if previous else None,
    }


def show(model_name: str) -> list[dict]:
    """Every version of the model, newest first, with its scores and aliases."""
    c = tracking.client()
    aliases_by_version: dict[str, list[str]] = {}
    for alias, v in registered_model(c, model_name).aliases.items():
        aliases_by_version.setdefault(str(v), []).append(alias)
    rows = []
    for v in c.search_model_versions(f"name = '{model_name}'"):
        rows.append(
            {
                "version": int(v.version),
                **{score: parse_score(v.tags.get(score)) for score in QUALITY_TAGS},
                "aliases": sorted(aliases_by_version.get(str(v.version), [])),
                "created": datetime.fromtimestamp(v.creation_timestamp / 1000, tz=timezone.utc).strftime(
                    "%Y-%m-%d %H:%M:%S UTC"
                ),
                "run_id": v.run_id,
                "profile": v.tags.get("profile", ""),
            }
        )
    return sorted(rows, key=lambda r: -r["version"])


def format_cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(value) or "-"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """``show``'s rows as an aligned text table."""
    if not rows:
        return "(no versions)"
    columns = ["version", "fid", "kid_mean", "kid_std", "aliases", "profile", "created", "run_id"]
    cells = [[format_cell(r.get(col)) for col in columns] for r in rows]
    widths = [max(len(col), *(len(row[i]) for row in cells)) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


class ExportedGenerator(torch.nn.Module):
    """A loaded ``pt2`` generator as an ``nn.Module`` ganforge can sample from.

    An exported graph is fixed in eval mode (``torch.export`` froze BatchNorm's running
    statistics into it); ``eval()`` is therefore a no-op here and ``train()`` is refused.
    """

    def __init__(self, graph: torch.nn.Module):
        super().__init__()
        self.graph = graph
        self.training = False

    def forward(self, z: torch.Tensor, *labels: torch.Tensor) -> torch.Tensor:
        return self.graph(z, *labels)  # a class-conditional program takes (z, labels)

    def train(self, mode: bool = True) -> ExportedGenerator:
        if mode:
            raise RegistryError(
                "a registered generator is an exported inference graph and cannot train; "
                "resume training from its checkpoint.pt instead"
            )
        return self


@contextlib.contextmanager
def mlflow_env(**settings: str) -> Iterator[None]:
    """MLflow settings (read when used) inside the block, restored after it."""
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def pickle_deserialization_disallowed():
    """MLflow's loaders refuse any pickle payload inside the block."""
    return mlflow_env(MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false")


def quiet_download(uri: str, dst_path: str) -> str:
    """``mlflow.artifacts.download_artifacts`` without its progress bars on stderr."""
    with mlflow_env(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):
        return mlflow.artifacts.download_artifacts(uri, dst_path=dst_path)


def download_verified(version, dst: str | os.PathLike) -> Path:
    """Download a registered version (an MLflow ``ModelVersion``) into the empty directory ``dst``,
    once, and verify that copy; see the module docstring. Returns the model directory.

    1. Its ``ganforge.artifact_sha256`` tag must exist (a version registered before it, in
       the pickle format, is refused: re-register it).
    2. The files' ``artifact_digest`` must equal the tag: a file changed after registration
       is refused before anything reads it.
    3. Their content must be what ganforge registers (``model_files.check_model_dir``), which
       holds even when whoever changed the files rewrote the tag as well.

    Callers load from the returned directory, never from the registry again, so what was
    checked is what is loaded.
    """
    uri = f"models:/{version.name}/{version.version}"
    expected = version.tags.get(ARTIFACT_SHA256_TAG, "").strip()
    if not expected:
        raise RegistryError(
            f"{uri} has no {ARTIFACT_SHA256_TAG} tag: it was registered by an older ganforge (pickle "
            "format, which runs code when loaded), so it is not loaded; re-register it from its "
            "checkpoint.pt (ganforge generate --model runs/…/checkpoint.pt works meanwhile)"
        )
    try:
        local = Path(quiet_download(uri, str(dst)))
    except MlflowException as e:
        raise RegistryError(f"cannot download {uri} from {mlflow.get_registry_uri()}: {one_line(e)}") from None
    found = artifact_digest(local)
    if found != expected:
        raise RegistryError(
            f"refusing to load {uri}: its files do not match the sha256 recorded at registration "
            f"(recorded {expected[:12]}…, found {found[:12]}…), so they were changed afterwards; "
            "do not use this version — register the model again from its checkpoint.pt"
        )
    try:
        check_model_dir(local, uri)
    except ModelContentError as e:
        raise RegistryError(str(e)) from None
    return local


def load_verified_dir(local: Path, uri: str, device: str = "cpu") -> torch.nn.Module:
    """MLflow's pytorch loader on a ``download_verified`` copy, pickle deserialization disallowed:
    a payload inside the pt2 archive that somehow matched the digest is refused, never unpickled."""
    try:
        with pickle_deserialization_disallowed():
            graph = mlflow.pytorch.load_model(str(local))
            if torch.device(device).type != "cpu":
                # Exported on CPU; the graph's device constants move with this pass (the
                # archive was validated by the load above).
                from torch.export.passes import move_to_device_pass

                graph = move_to_device_pass(torch.export.load(str(local / "data" / "model.pt2")), device).module()
    except MlflowException as e:
        raise RegistryError(f"refusing to load {uri}: {one_line(e)}") from None
    return graph


def load_version(version, device: str = "cpu") -> torch.nn.Module:
    """Load a registered version (an MLflow ``ModelVersion``) from its verified copy
    (``download_verified``, then ``load_verified_dir``)."""
    with tempfile.TemporaryDirectory(prefix="ganforge-model-") as tmp:
        graph = load_verified_dir(download_verified(version, tmp), f"models:/{version.name}/{version.version}", device)
    return ExportedGenerator(graph)


def verified_files(manifest: dict) -> list[str]:
    """The files a ``save_verified`` output holds (its manifest lists them)."""
    return [str(f) for f in manifest["files"]]


def save_verified(uri: str, out_dir: str | os.PathLike) -> dict:
    """Resolve ``uri`` (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``), download the version
    once, verify it (``download_verified``) and only then put that copy at ``out_dir`` (written
    whole beside it and renamed into place; an earlier output there is replaced). Serving
    loads ``out_dir`` with MLflow alone; the copy is loaded here once the same way, so what
    serving would refuse (a pickle inside the archive) is refused now. Returns the manifest."""
    check_output_dir(out_dir, command="ganforge verify-model", manifest=VERIFIED_MANIFEST, owned_files=verified_files)
    version = resolve(uri)
    with atomic_dir(out_dir) as tmp:
        local = download_verified(version, tmp)
        load_verified_dir(local, f"models:/{version.name}/{version.version}")
        files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
        manifest = {
            "model": uri,
            "name": version.name,
            "version": int(version.version),
            ARTIFACT_SHA256_TAG: version.tags[ARTIFACT_SHA256_TAG],
            "files": files,
        }
        (local / VERIFIED_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return {**manifest, "path": str(Path(out_dir))}


def resolve(uri: str):
    """The ``ModelVersion`` of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``, with errors that list
    what exists (the one place a registry URI is resolved: generate and load_registered_generator use it)."""
    name, alias, version = parse_registry_uri(uri)
    c = tracking.client()  # make sure the URIs are configured
    if version is not None:
        return model_version(c, name, version)
    aliases = dict(registered_model(c, name).aliases)
    if alias not in aliases:
        listed = ", ".join(f"{a} → v{v}" for a, v in sorted(aliases.items())) or "none"
        raise RegistryError(
            f"model {name!r} has no alias {alias!r} (its aliases: {listed}); use one of those, "
            f"models:/{name}/<version>, or promote a version first (ganforge promote {name} VERSION)"
        )
    return c.get_model_version_by_alias(name, alias)


def registered_config(run_id: str, uri: str, config_hash: str | None) -> PipelineConfig:
    """The config a registered version was trained with, from its run's ``config.json``.

    The version's ``config_hash`` tag (when present) must match, so weights are never paired
    with the wrong nz, data kind or sample rate.
    """
    try:
        with mlflow_env(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):  # stderr stays for errors
            text = mlflow.artifacts.load_text(f"runs:/{run_id}/{tracking.CONFIG_ARTIFACT}")
    except (MlflowException, OSError) as e:
        raise RegistryError(
            f"{uri}: its run {run_id} has no readable {tracking.CONFIG_ARTIFACT} artifact ({e}); "
            "register versions from runs started with tracking.start_pipeline_run, or generate "
            "from the checkpoint.pt instead"
        ) from None
    cfg = PipelineConfig.from_json(text)
    if config_hash and config_hash not in (cfg.config_hash(), cfg.legacy_config_hash()):
        raise RegistryError(
            f"{uri}: the version is tagged config_hash={config_hash} but its run's "
            f"{tracking.CONFIG_ARTIFACT} hashes to {cfg.config_hash()}; the version was registered "
            "with a config other than its run's — re-register it from the run that trained it"
        )
    return cfg


def load_registered_generator(uri: str, map_location: str = "cpu") -> torch.nn.Module:
    """Load a registered generator (``models:/dcgan@champion``, ``models:/dcgan/3``) for sampling; a
    checkpoint.pt is ``ganforge.checkpoint.load_generator``'s (which also returns its config)."""
    return load_version(resolve(uri), device=map_location)
