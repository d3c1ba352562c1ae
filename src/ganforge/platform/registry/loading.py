"""Loading a registered version: resolve its URI, download it once, verify that copy (digest, then
content), and load it through MLflow with pickle deserialization disallowed; ``save_verified``
hands the verified copy to serving."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import mlflow
import torch
import yaml
from mlflow.exceptions import MlflowException

from ganforge.config import PipelineConfig
from ganforge.fileio import atomic_dir, check_output_dir
from ganforge.generate import parse_registry_uri
from ganforge.platform import tracking
from ganforge.platform.model_files import STYLE_FILES, ModelContentError, check_model_dir

from .common import (
    ARTIFACT_SHA256_TAG,
    VERIFIED_MANIFEST,
    RegistryError,
    artifact_digest,
    mlflow_env,
    model_version,
    one_line,
    pickle_deserialization_disallowed,
    quiet_download,
    registered_model,
)
from .styles import STYLE_SIDES_KEY, ExportedStyleGAN


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


def load_style_programs(local: Path, uri: str, device: str = "cpu") -> tuple[torch.nn.Module, ...] | None:
    """A stylegan version's mapping and synthesis programs (``styles``) from a ``download_verified``
    copy, each archive checked pickle-free (MLflow's own check) before ``torch.export.load`` reads
    it; None for a version without them (registered before they were, or not a stylegan)."""
    if not (local / STYLE_FILES[0]).is_file():
        return None
    from mlflow.pytorch import _validate_pt2_archive_is_pickle_free
    from torch.export.passes import move_to_device_pass

    programs = []
    for rel in STYLE_FILES:
        try:
            _validate_pt2_archive_is_pickle_free(str(local / rel))
        except MlflowException as e:
            raise RegistryError(f"refusing to load {uri}: {rel}: {one_line(e)}") from None
        program = torch.export.load(str(local / rel))
        if torch.device(device).type != "cpu":
            program = move_to_device_pass(program, device)
        programs.append(program.module())
    return tuple(programs)


def style_layer_sides(local: Path) -> list[int]:
    """The ``style_layer_sides`` a stylegan version's ``MLmodel`` metadata records ([] if none or not
    a list of positive integers)."""
    meta = yaml.safe_load((local / "MLmodel").read_text()).get("metadata") or {}
    sides = meta.get(STYLE_SIDES_KEY) if isinstance(meta, dict) else None
    ok = isinstance(sides, list) and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sides)
    return list(sides) if ok else []


def load_version(version, device: str = "cpu") -> torch.nn.Module:
    """Load a registered version (an MLflow ``ModelVersion``) from its verified copy
    (``download_verified``, then ``load_verified_dir``); a stylegan version with its mapping and
    synthesis programs loads as an ``ExportedStyleGAN``."""
    uri = f"models:/{version.name}/{version.version}"
    with tempfile.TemporaryDirectory(prefix="ganforge-model-") as tmp:
        local = download_verified(version, tmp)
        graph = load_verified_dir(local, uri, device)
        style = load_style_programs(local, uri, device)
        sides = style_layer_sides(local) if style else []
    if style is None:
        return ExportedGenerator(graph)
    if not sides:
        raise RegistryError(
            f"refusing to load {uri}: it has stylegan programs but no readable {STYLE_SIDES_KEY} (a list of "
            "sides in px) in its MLmodel metadata; register the model again from its checkpoint.pt"
        )
    return ExportedStyleGAN(graph, *style, sides)


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
        load_style_programs(local, f"models:/{version.name}/{version.version}")
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
