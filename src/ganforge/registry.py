"""MLflow model registry: register generators, FID-gated champion/challenger aliases.

Serialization: generators are logged with ``serialization_format="pickle"``. It keeps a
plain ``nn.Module`` that can move between devices and switch train/eval, and loads in any
fresh process where ``ganforge`` is importable (it is, in our image and after
``pip install -e .``). ``pt2`` (torch.export) would free the loader from our code but yields
an exported program pinned to the device it was traced on, with fixed control flow.
The module is always logged from CPU, so loading needs no GPU.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Iterator, Mapping, Optional

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from ganforge import tracking
from ganforge.config import PipelineConfig
from ganforge.errors import GanforgeError

CHAMPION = "champion"
CHALLENGER = "challenger"
FID_TAG = "fid"
QUALITY_TAGS = ("fid", "kid_mean", "kid_std")
PROMOTION_REQUESTED_TAG = "ganforge.promotion_requested_at"
"""Version tag: unix time at which ``promote`` announced the version as a candidate."""
MANUAL_PROMOTION_TAG = "ganforge.manual_promotion_at"
"""Registered-model tag: unix time of the last human ``promote_manual``."""
RIVAL_WINDOW_S = 600.0
"""Candidates announced within this window count as in flight (a promotion takes seconds;
the slack covers clock skew between pods)."""
MAX_CONVERGE_ROUNDS = 50
LOCK_TIMEOUT_S = 120.0
GENERATOR_ARTIFACT = "generator"
MAX_TAG_VALUE_CHARS = 5000


class RegistryError(GanforgeError, RuntimeError):
    """A registry operation failed; the message names the model/version and the fix."""


@dataclass(frozen=True)
class Candidate:
    """A model version as the promotion rule sees it. ``fid`` None: never evaluated."""

    version: int
    fid: Optional[float]


def latent_example(nz: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    """The input example logged with the model: a (batch, nz) float32 Gaussian latent."""
    return np.random.default_rng(seed).standard_normal((batch, nz)).astype(np.float32)


def generator_output(generator: torch.nn.Module, z: np.ndarray) -> np.ndarray:
    """Run the (CPU, eval-mode) generator on z; a clear error if it does not take (B, nz)."""
    try:
        with torch.no_grad():
            out = generator(torch.from_numpy(z))
    except Exception as e:  # any shape/type failure inside the user's module
        raise RegistryError(f"the generator does not accept a latent batch of shape {z.shape} "
                            f"(cfg.model.nz={z.shape[1]}): {e}") from e
    if not isinstance(out, torch.Tensor) or out.shape[0] != z.shape[0]:
        raise RegistryError(f"the generator must return a tensor with batch size {z.shape[0]}, got {type(out)}")
    return out.numpy()


def parse_score(value: Optional[str]) -> Optional[float]:
    """A score tag (fid, kid_mean, ...) as a float; None when absent or not a finite number."""
    try:
        score = float(value) if value is not None else None
    except ValueError:
        return None
    return score if score is not None and math.isfinite(score) else None


def numeric_metrics(metrics: Mapping[str, object]) -> dict[str, float]:
    """The numbers among evaluation outputs (which also carry strings such as the checkpoint
    path); a non-finite fid is an evaluation bug, not a model, so it is refused."""
    out = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if FID_TAG in metrics and not math.isfinite(out.get(FID_TAG, math.nan)):
        raise RegistryError(f"fid={metrics[FID_TAG]!r} is not a finite number; re-run evaluation before registering")
    return out


def tag_value(value: object) -> str:
    text = value if isinstance(value, str) else repr(value) if isinstance(value, float) else json.dumps(value, default=str)
    return text[:MAX_TAG_VALUE_CHARS]


def dataset_sha256(run_params: Mapping[str, str]) -> str:
    """The training data's sha256, as the prep step logged it into the run."""
    return run_params.get("dataset.train.sha256", "unknown")


def version_tags(cfg: PipelineConfig, metrics: Mapping[str, object], tags: Mapping[str, object],
                 run_params: Mapping[str, str]) -> dict[str, str]:
    """Tags of a registered version: evaluation outputs and provenance; explicit non-empty
    ``tags`` win over what is derived here."""
    out = {
        "git_commit": tracking.git_commit(),
        "config_hash": cfg.config_hash(),
        "pipeline": cfg.name,
        "profile": cfg.profile,
        "dataset_sha256": dataset_sha256(run_params),
    }
    kfp_run_id = os.environ.get(tracking.KFP_RUN_ID_ENV, "").strip()
    if kfp_run_id:
        out["kfp_run_id"] = kfp_run_id
    out.update({k: tag_value(v) for k, v in metrics.items()})
    out.update({k: tag_value(v) for k, v in tags.items() if tag_value(v)})
    return out


def register_generator(run_id: str, generator: torch.nn.Module, cfg: PipelineConfig,
                       metrics: dict, tags: dict) -> int:
    """Log the generator into the pipeline run and register it as a new version of
    ``cfg.model_name``; tag the version with its metrics and provenance. Returns the version.

    ``metrics`` normally holds ``fid``, ``kid_mean``, ``kid_std`` (other entries become tags);
    a version without ``fid`` can be registered but only ``promote_manual(..., force=True)``
    can make it champion.
    """
    c = tracking.client()
    scores = numeric_metrics(metrics)
    cpu_generator = copy.deepcopy(generator).cpu().eval()
    z = latent_example(cfg.model.nz)
    signature = infer_signature(z, generator_output(cpu_generator, z))
    info = mlflow.pytorch.log_model(
        cpu_generator, name=GENERATOR_ARTIFACT, serialization_format="pickle", signature=signature,
        input_example=z, registered_model_name=cfg.model_name, run_id=run_id,
        # Explicit requirements skip MLflow's slow inference (it re-loads the model in a subprocess).
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
    )
    version = int(info.registered_model_version)
    run = c.get_run(run_id)
    for key, value in version_tags(cfg, metrics, tags, run.data.params).items():
        c.set_model_version_tag(cfg.model_name, str(version), key, value)
    # The pipeline's evaluate step already logged its scores (at the training step); log only the rest.
    unlogged = {k: v for k, v in scores.items() if k not in run.data.metrics}
    if unlogged:
        now_ms = int(time.time() * 1000)
        c.log_batch(run_id, metrics=[Metric(k, v, now_ms, 0) for k, v in unlogged.items()], synchronous=True)
    return version


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
        raise RegistryError(f"no registered model named {model_name!r} at {mlflow.get_registry_uri()}; "
                            f"known models: {known or 'none'}") from None


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
        return Candidate(version, parse_score(self.version_tags.get(version, {}).get(FID_TAG)))

    def champion(self) -> Optional[Candidate]:
        version = self.aliases.get(CHAMPION)
        return None if version is None else self.candidate(version)

    def in_flight(self, now: float) -> list[Candidate]:
        """Versions ``promote`` announced within the rival window and after the last human
        decision, that have an fid."""
        since = max(now - RIVAL_WINDOW_S, self.manual_promotion_at)
        announced = [v for v, tags in self.version_tags.items()
                     if float(tags.get(PROMOTION_REQUESTED_TAG, "-inf")) > since]
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


def candidate(c: MlflowClient, model_name: str, version: int) -> Candidate:
    return Candidate(int(version), parse_score(model_version(c, model_name, version).tags.get(FID_TAG)))


def choose_champion(champion: Optional[Candidate], rivals: Iterable[Candidate], margin: float) -> Optional[Candidate]:
    """The promotion rule. The best rival (lowest fid, then lowest version) takes over if
    there is no champion, the champion was never evaluated, or fid < champion fid - margin."""
    best = min(rivals, key=lambda r: (r.fid, r.version), default=None)
    if best is None:
        return champion
    if champion is None or champion.fid is None or best.fid < champion.fid - margin:
        return best
    return champion


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
        raise RegistryError(f"another promotion of {model_name!r} holds {lock.lock_file} for over "
                            f"{LOCK_TIMEOUT_S:.0f}s; if no ganforge process is running, delete that file") from None
    try:
        yield
    finally:
        lock.release()


def converge_champion(c: MlflowClient, model_name: str, me: Candidate, margin: float) -> Optional[Candidate]:
    """Move ``champion`` until a fresh read finds it where the rule says; return it.

    Each round re-reads the champion and the in-flight candidates, applies
    ``choose_champion`` and writes only if the alias is elsewhere. The loop ends only on a
    read that found the alias consistent, and every write is followed by such a read.
    """
    for _ in range(MAX_CONVERGE_ROUNDS):
        state = read_state(c, model_name)
        champion = state.champion()
        rivals = {r.version: r for r in state.in_flight(time.time())}
        rivals.setdefault(me.version, me)  # even if clock skew hid my own announcement
        target = choose_champion(champion, rivals.values(), margin)
        if target is None or (champion is not None and target.version == champion.version):
            return champion
        c.set_registered_model_alias(model_name, CHAMPION, str(target.version))
        # Spread rounds apart so concurrent promoters read each other's writes.
        time.sleep(random.uniform(0.0, 0.05))
    raise RegistryError(f"the champion of {model_name!r} kept moving for {MAX_CONVERGE_ROUNDS} rounds; "
                        "retry the promotion (are many promotions running at once?)")


def promote(model_name: str, version: int, margin: float) -> dict:
    """Apply the FID gate: ``champion`` moves to ``version`` only if there is no champion or
    its fid < champion fid - margin; otherwise ``version`` becomes ``challenger``.

    Concurrency. Two pipeline runs can finish at once, and MLflow has no compare-and-set on
    aliases, so "read champion, compare, set alias" alone can leave the worse of two new
    versions as champion (both read the old champion; the better one writes first, the worse
    one overwrites it and never learns). The protocol:

    1. Announce: tag the version ``ganforge.promotion_requested_at = now`` *before* reading.
    2. Converge (``converge_champion``): repeatedly read the champion and every announced
       candidate of the last ``RIVAL_WINDOW_S`` seconds, compute the rule over all of them
       (best candidate vs champion with the margin), write the alias if it is elsewhere,
       and stop only when a read finds it already right.

    Why this suffices without a lock: take the last write to ``champion``. Its writer then
    read the alias (still its own value) and all candidates announced so far, and found the
    alias right; any promoter that announced later reads after that and finds it right too
    (or it would write, contradicting "last"). So the final champion is the rule's choice
    over every concurrent candidate: no in-flight version beats it by more than the margin.
    A stale writer that put a worse version there is repaired by its own re-read.

    On a local sqlite store a file lock also serialises promotions on this machine (cheap,
    and it keeps sqlite writers from contending); on a server the protocol alone applies.
    A human decision (``promote_manual``) starts a new epoch: earlier announcements no
    longer count, so a rollback is not undone by the next run.
    """
    c = tracking.client()
    me = candidate(c, model_name, version)
    if me.fid is None:
        raise RegistryError(f"version {version} of {model_name!r} has no fid tag, so the FID gate cannot judge it; "
                            f"evaluate it, or decide by hand: ganforge promote {model_name} {version} --force")
    with promotion_lock(model_name):
        previous = read_state(c, model_name).champion()
        c.set_model_version_tag(model_name, str(version), PROMOTION_REQUESTED_TAG, repr(time.time()))
        champion = converge_champion(c, model_name, me, margin)
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
        raise RegistryError(f"version {version} of {model_name!r} has no fid tag (it was never evaluated); "
                            f"evaluate it first, or pass --force to make it champion anyway")
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
        rows.append({
            "version": int(v.version),
            **{score: parse_score(v.tags.get(score)) for score in QUALITY_TAGS},
            "aliases": sorted(aliases_by_version.get(str(v.version), [])),
            "created": datetime.fromtimestamp(v.creation_timestamp / 1000, tz=timezone.utc)
            .strftime("%Y-%m-%d %H:%M:%S UTC"),
            "run_id": v.run_id,
            "profile": v.tags.get("profile", ""),
        })
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


def load_generator(uri: str, map_location: str = "cpu") -> torch.nn.Module:
    """Load a registered generator (``models:/dcgan@champion``, ``models:/dcgan/3``) in eval mode."""
    tracking.client()  # make sure the URIs are configured
    if uri.startswith("models:/") and "@" in uri:
        name, _, alias = uri[len("models:/"):].partition("@")
        model = registered_model(MlflowClient(), name)
        if alias not in model.aliases:
            raise RegistryError(f"model {name!r} has no alias {alias!r} (aliases: {dict(model.aliases) or 'none'}); "
                                f"register and promote a version first, or use models:/{name}/<version>")
    try:
        generator = mlflow.pytorch.load_model(uri, map_location=map_location)
    except MlflowException as e:
        raise RegistryError(f"cannot load {uri!r} from {mlflow.get_registry_uri()}: {e}") from None
    return generator.eval()
