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

The parts: ``common`` (tags, errors, lookups, digest), ``registration``, ``promotion`` (the FID
gate and its protocol), ``loading`` and ``styles`` (a stylegan's three programs); this package
re-exports all of their names, so ``from ganforge.platform import registry`` reaches every one of them.
"""

from __future__ import annotations

from ganforge.registry_table import format_cell, format_table

from .common import (
    ARTIFACT_SHA256_TAG,
    CHALLENGER,
    CHAMPION,
    CLASS_NAMES_TAG,
    FID_TAG,
    GENERATOR_ARTIFACT,
    LOCK_TIMEOUT_S,
    MANUAL_PROMOTION_TAG,
    MARGIN_TAG,
    MAX_CONVERGE_ROUNDS,
    MAX_TAG_VALUE_CHARS,
    PROMOTED_TAG,
    PROMOTION_REQUESTED_TAG,
    QUALITY_TAGS,
    RIVAL_WINDOW_S,
    SERIALIZATION_FORMAT,
    VERIFIED_MANIFEST,
    Candidate,
    RegistryError,
    artifact_digest,
    is_missing,
    logged_model_id,
    mlflow_env,
    model_version,
    one_line,
    parse_score,
    pickle_deserialization_disallowed,
    quiet_download,
    registered_model,
    version_metrics,
)
from .loading import (
    ExportedGenerator,
    download_verified,
    load_registered_generator,
    load_style_programs,
    load_verified_dir,
    load_version,
    registered_config,
    resolve,
    save_verified,
    verified_files,
)
from .promotion import (
    RegistryState,
    announce,
    beats,
    candidate,
    candidate_from_tags,
    choose_champion,
    converge_champion,
    make_champion,
    promote,
    promote_manual,
    promotion_lock,
    read_state,
    show,
)
from .registration import (
    conditional_signature,
    dataset_sha256,
    generator_output,
    image_example,
    label_example,
    latent_example,
    link_metrics,
    numeric_metrics,
    register_generator,
    tag_value,
    version_tags,
)
from .styles import ExportedStyleGAN

__all__ = [
    "ARTIFACT_SHA256_TAG",
    "CHALLENGER",
    "CHAMPION",
    "CLASS_NAMES_TAG",
    "FID_TAG",
    "GENERATOR_ARTIFACT",
    "LOCK_TIMEOUT_S",
    "MANUAL_PROMOTION_TAG",
    "MARGIN_TAG",
    "MAX_CONVERGE_ROUNDS",
    "MAX_TAG_VALUE_CHARS",
    "PROMOTED_TAG",
    "PROMOTION_REQUESTED_TAG",
    "QUALITY_TAGS",
    "RIVAL_WINDOW_S",
    "SERIALIZATION_FORMAT",
    "VERIFIED_MANIFEST",
    "Candidate",
    "ExportedGenerator",
    "ExportedStyleGAN",
    "RegistryError",
    "RegistryState",
    "announce",
    "artifact_digest",
    "beats",
    "candidate",
    "candidate_from_tags",
    "choose_champion",
    "conditional_signature",
    "converge_champion",
    "dataset_sha256",
    "download_verified",
    "format_cell",
    "format_table",
    "generator_output",
    "image_example",
    "is_missing",
    "label_example",
    "latent_example",
    "link_metrics",
    "load_registered_generator",
    "load_style_programs",
    "load_verified_dir",
    "load_version",
    "logged_model_id",
    "make_champion",
    "mlflow_env",
    "model_version",
    "numeric_metrics",
    "one_line",
    "parse_score",
    "pickle_deserialization_disallowed",
    "promote",
    "promote_manual",
    "promotion_lock",
    "quiet_download",
    "read_state",
    "register_generator",
    "registered_config",
    "registered_model",
    "resolve",
    "save_verified",
    "show",
    "tag_value",
    "verified_files",
    "version_metrics",
    "version_tags",
]
