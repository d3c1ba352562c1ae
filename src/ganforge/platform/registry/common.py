"""What the registry's parts share: tag names, the error type, lookups with errors that list what
exists, the files' digest, and MLflow settings scoped to a block."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ganforge.errors import GanforgeError
from ganforge.platform.model_files import CLIENT_WRITTEN_FILES

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


def parse_score(value: str | None) -> float | None:
    """A score tag (fid, kid_mean, ...) as a float; None when absent or not a finite number."""
    try:
        score = float(value) if value is not None else None
    except ValueError:
        return None
    return score if score is not None and math.isfinite(score) else None


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
