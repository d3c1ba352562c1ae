"""Generation for creative work: samples, grids, latent interpolations and WAVs from a model.

A model is a registered version (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``) or a local
``checkpoint.pt``. Everything lands in one output directory that is written as a whole into a
temporary sibling and renamed into place, so a reader sees either the previous complete output
or the new one; ``generation.json`` records what produced it.

Reproducible by seed: latents come from a ``torch.Generator`` seeded with ``seed`` and the
manifest holds no timestamps, so the same model, seed and options give byte-identical files
(on the same device and library versions).
"""

from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .audio_io import spectrogram_grid_png, write_wavs
from .checkpoint import SNAPSHOT_DIR, checkpoint_file, load_generator
from .config import PipelineConfig
from .errors import GanforgeError, require_platform
from .fileio import atomic_dir, check_output_dir
from .train import generate

MANIFEST_NAME = "generation.json"
REGISTRY_SCHEME = "models:/"
MAX_INTERPOLATION_ROWS = 8


class GenerationError(GanforgeError, ValueError):
    """Generation cannot run; the message names the problem and the fix."""


@dataclass(frozen=True)
class LoadedModel:
    """A generator ready to sample, its training config, and where it came from (for the manifest)."""

    generator: nn.Module
    cfg: PipelineConfig
    provenance: dict
    class_names: list[str] | None = None
    """Class-conditional models: the class names in label order (ids as text when the data named none)."""


def parse_registry_uri(uri: str) -> tuple[str, str | None, int | None]:
    """``models:/NAME@ALIAS`` → (NAME, ALIAS, None); ``models:/NAME/VERSION`` → (NAME, None, VERSION)."""
    body = uri[len(REGISTRY_SCHEME) :]
    name, at, alias = body.partition("@")
    if at and name and alias and "/" not in name:
        return name, alias, None
    name, slash, version = body.partition("/")
    if slash and name and version.isdigit():
        return name, None, int(version)
    raise GenerationError(
        f"{uri!r} is not a registry URI ganforge understands; write models:/NAME@ALIAS "
        "(e.g. models:/dcgan@champion) or models:/NAME/VERSION (e.g. models:/dcgan/3)"
    )


def load_registered(uri: str, device: str = "cpu") -> LoadedModel:
    """A registered generator and its config; an alias is resolved once to a version, which is then
    loaded by number, so a promotion meanwhile cannot pair one version's weights with another's config."""
    registry = require_platform("registry", f"the registered model {uri}")
    version = registry.resolve(uri)
    cfg = registry.registered_config(version.run_id, uri, version.tags.get("config_hash"))
    # Verified against the sha256 recorded at registration, then loaded with pickle refused.
    generator = registry.load_version(version, device=device)
    provenance = {"model": uri, "name": version.name, "version": int(version.version), "run_id": version.run_id}
    class_names = None
    if cfg.model.num_classes:
        from .labels import class_names_or_ids

        class_names = class_names_or_ids(
            json.loads(version.tags.get(registry.CLASS_NAMES_TAG) or "null"), cfg.model.num_classes
        )
    return LoadedModel(generator, cfg, provenance, class_names)


def _existing_checkpoint(model: str) -> Path:
    """The checkpoint a local path names (a run directory means its checkpoint.pt)."""
    path = checkpoint_file(model)
    if not path.is_file():
        raise GenerationError(
            f"no checkpoint at {path}: pass a checkpoint.pt written by `ganforge train`, "
            "or a registered model as models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    return path


def load_model(model: str, device: str = "cpu") -> LoadedModel:
    """Load a registered model (``models:/…``) or a local checkpoint, EMA generator in eval mode."""
    if model.startswith(REGISTRY_SCHEME):
        return load_registered(model, device)
    path = _existing_checkpoint(model)
    generator, cfg = load_generator(path, device=device)
    class_names = None
    if cfg.model.num_classes:
        from .train import read_class_names

        # classes.json sits beside checkpoint.pt (a snapshot is one folder deeper, in snapshots/)
        run_dir = path.parent.parent if path.parent.name == SNAPSHOT_DIR else path.parent
        class_names = read_class_names(run_dir, cfg)
    return LoadedModel(generator, cfg, {"model": model, "name": None, "version": None, "run_id": None}, class_names)


def seeded_latents(count: int, nz: int, seed: int) -> torch.Tensor:
    """``count`` standard-normal latents from a generator seeded with ``seed`` (CPU, so any device agrees)."""
    return torch.randn(count, nz, generator=torch.Generator().manual_seed(seed))


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows of ``a`` and ``b`` at fractions ``t``: (R, nz), (R, nz), (K,) → (R, K, nz).

    Why not a straight line: a d-dimensional Gaussian latent concentrates on a shell of radius
    ≈ √d, and the midpoint of two such points has norm ≈ √(d/2) — off the shell, where G never
    saw inputs during training, so linear paths dim and blur in the middle. slerp follows the
    great circle (with a linear blend of the norms), so every step stays a typical latent.
    Near-parallel endpoints fall back to the linear path, where the two coincide.
    """
    a_unit, b_unit = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    omega = torch.arccos((a_unit * b_unit).sum(dim=1).clamp(-1.0, 1.0))[:, None, None]
    t = t[None, :, None]
    sin_omega = torch.sin(omega)
    parallel = sin_omega.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin_omega), sin_omega)
    weight_a = torch.where(parallel, 1.0 - t, torch.sin((1.0 - t) * omega) / safe)
    weight_b = torch.where(parallel, t, torch.sin(t * omega) / safe)
    return weight_a * a[:, None, :] + weight_b * b[:, None, :]


def interpolation_rows(n: int) -> int:
    """How many latent pairs to interpolate between: one per two samples, at most a screenful."""
    return max(1, min(MAX_INTERPOLATION_ROWS, n // 2))


def interpolation_latents(endpoints: torch.Tensor, steps: int) -> torch.Tensor:
    """Rows of ``steps``-step slerps between consecutive endpoint pairs (0↔1, 2↔3, …), flattened row-major."""
    a, b = endpoints[0::2], endpoints[1::2]
    return slerp(a, b, torch.linspace(0.0, 1.0, steps)).reshape(-1, endpoints.shape[1])


def to_uint8_images(x: torch.Tensor) -> torch.Tensor:
    """Generator images in [-1, 1] → uint8 N×C×H×W, rounded to the nearest level."""
    return ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def png_bytes(image_u8: torch.Tensor) -> bytes:
    """A C×H×W uint8 image (1 or 3 channels) as PNG bytes (no metadata, so deterministic)."""
    from PIL import Image

    array = image_u8.permute(1, 2, 0).numpy()
    mode = "L" if array.shape[2] == 1 else "RGB"
    buffer = io.BytesIO()
    Image.fromarray(array[:, :, 0] if mode == "L" else array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def tile_grid(images_u8: torch.Tensor, ncol: int, gutter: int = 2) -> torch.Tensor:
    """N×C×H×W uint8 images tiled ``ncol`` per row on a black canvas with ``gutter``-pixel gaps → C×H'×W'."""
    n, c, h, w = images_u8.shape
    nrow = math.ceil(n / ncol)
    canvas = torch.zeros(c, nrow * (h + gutter) + gutter, ncol * (w + gutter) + gutter, dtype=torch.uint8)
    for i, image in enumerate(images_u8):
        top, left = gutter + (i // ncol) * (h + gutter), gutter + (i % ncol) * (w + gutter)
        canvas[:, top : top + h, left : left + w] = image
    return canvas


def grid_columns(n: int) -> int:
    """Columns of a near-square grid of ``n`` tiles."""
    return math.ceil(math.sqrt(n))


def write_image_outputs(
    samples: torch.Tensor, interpolation: torch.Tensor | None, steps: int, out: Path, ncol: int | None = None
) -> dict[str, Path]:
    """grid.png (``ncol`` per row, default near-square), images/NNNNN.png and (with interpolations)
    interpolation.png under ``out``."""
    images = to_uint8_images(samples)
    written = {"grid": out / "grid.png", "images": out / "images"}
    written["grid"].write_bytes(png_bytes(tile_grid(images, ncol or grid_columns(len(images)))))
    written["images"].mkdir()
    for i, image in enumerate(images):
        (written["images"] / f"{i:05d}.png").write_bytes(png_bytes(image))
    if interpolation is not None:
        written["interpolation"] = out / "interpolation.png"
        written["interpolation"].write_bytes(png_bytes(tile_grid(to_uint8_images(interpolation), steps)))
    return written


def write_audio_outputs(
    samples: torch.Tensor, interpolation: torch.Tensor | None, steps: int, out: Path, sample_rate: int
) -> dict[str, Path]:
    """wavs/sample_NNNN.wav (16-bit PCM), spectrograms.png and (with interpolations)
    interpolation/sample_NNNN.wav (row-major: row r, step k is number r·steps + k) and interpolation.png."""
    clips = samples.numpy()
    written = {"wavs": out / "wavs", "spectrograms": out / "spectrograms.png"}
    write_wavs(clips, written["wavs"], sample_rate)
    spectrogram_grid_png(clips, written["spectrograms"], nrow=grid_columns(len(clips)))
    if interpolation is not None:
        written["interpolation"] = out / "interpolation"
        written["interpolation_spectrograms"] = out / "interpolation.png"
        write_wavs(interpolation.numpy(), written["interpolation"], sample_rate)
        spectrogram_grid_png(interpolation.numpy(), written["interpolation_spectrograms"], nrow=steps)
    return written


def check_request(n: int, interpolate: int, batch_size: int) -> None:
    if n <= 0:
        raise GenerationError(f"n={n}: ask for at least one sample (-n 64)")
    if interpolate < 0 or interpolate == 1:
        raise GenerationError(
            f"--interpolate {interpolate}: give K >= 2 steps per interpolation (both endpoints count), or 0 for none"
        )
    if batch_size <= 0:
        raise GenerationError(f"batch_size={batch_size} must be positive")


def generated_files(manifest: dict) -> list[str]:
    """The files an earlier generation wrote, from its generation.json (KeyError/TypeError if not ours)."""
    files = manifest["files"]
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise TypeError("generation.json 'files' is not a list of names")
    return files


def check_out_dir(out_dir: Path, model: str) -> None:
    """Refuse an --out whose replacement would delete what generation did not write: a file, the
    checkpoint being read (or a folder holding it), a non-empty folder that is not an earlier
    generation output (generation.json), or one holding files that output did not list."""
    protect = [] if model.startswith(REGISTRY_SCHEME) else [Path(model)]
    check_output_dir(
        out_dir, command="ganforge generate", manifest=MANIFEST_NAME, owned_files=generated_files, protect=protect
    )


def relative_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def generation_manifest(
    loaded: LoadedModel, seed: int, n: int, interpolate: int, rows: int, files: list[str], classes: dict | None = None
) -> dict:
    cfg = loaded.cfg
    manifest = {
        **loaded.provenance,
        "pipeline": cfg.name,
        "profile": cfg.profile,
        "config_hash": cfg.config_hash(),
        "seed": seed,
        "n": n,
        "interpolate": interpolate,
        "interpolation_rows": rows if interpolate else 0,
        "nz": cfg.model.nz,
        "kind": cfg.data.kind,
        **(classes or {}),
    }
    if cfg.data.kind == "audio":
        manifest["sample_rate"] = cfg.data.sample_rate
    manifest["files"] = files
    return manifest


def sample(
    generator: nn.Module, z: torch.Tensor, batch_size: int, cfg: PipelineConfig, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """G(z) (class-conditional: G(z, labels)) in batches; a failure names the latent shape the config
    promised, the usual culprit."""
    try:
        return generate(generator, z, batch_size=batch_size, labels=labels)
    except RuntimeError as e:
        raise GenerationError(
            f"the generator failed on latents of shape (B, {cfg.model.nz}) taken from its config "
            f"({e}); if that is a shape mismatch, the model and its config.json disagree — "
            "re-register or retrain it; if it is out of memory, lower batch_size"
        ) from e


def class_plan(loaded: LoadedModel, choice: str | None, per_class: bool) -> tuple[int | None, dict]:
    """The class a request asks for (``--class`` as a name or id) and the manifest's class entries.

    An unconditional model refuses ``--class``/``--per-class``; an unknown class lists the choices."""
    cfg = loaded.cfg
    if not cfg.model.num_classes:
        if choice is not None or per_class:
            raise GenerationError(
                f"{loaded.provenance['model']} is unconditional ({cfg.name}); --class and "
                "--per-class need a class-conditional model such as models:/cdcgan@champion"
            )
        return None, {}
    if choice is not None and per_class:
        raise GenerationError("--class and --per-class exclude each other: one class, or a row for every class")
    from .labels import LabelError, class_id

    names = loaded.class_names or [str(i) for i in range(cfg.model.num_classes)]
    try:
        chosen = None if choice is None else class_id(choice, names, cfg.model.num_classes)
    except LabelError as e:
        raise GenerationError(str(e)) from None
    entries = {
        "class_names": names,
        "per_class": per_class,
        "class": None if chosen is None else names[chosen],
        "class_id": chosen,
    }
    return chosen, entries


STYLE_GROUPS = ("coarse", "middle", "fine")
MAX_MIXING_SEEDS = 8


class TruncatedGenerator(nn.Module):
    """G(z) at truncation ψ (the StyleGAN truncation trick), so the sampling code calls it like any G."""

    def __init__(self, generator: nn.Module, psi: float):
        super().__init__()
        self.generator, self.psi = generator, psi

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z, truncation_psi=self.psi)


def check_style_request(truncation: float, mix_layers: str) -> None:
    """The StyleGAN options' own checks, before any model is loaded."""
    if not 0 <= truncation <= 1:
        raise GenerationError(f"--truncation {truncation}: ψ must be in [0, 1] (1 = no truncation, 0 = the mean w)")
    if mix_layers not in STYLE_GROUPS:
        raise GenerationError(f"--mix-layers {mix_layers!r}: choose one of {', '.join(STYLE_GROUPS)}")


def check_style_model(loaded: LoadedModel, truncation: float, mix_seed: int | None) -> None:
    """Truncation and mixing need a generator with ``styles`` (a stylegan checkpoint, or a stylegan version
    registered with its mapping and synthesis programs)."""
    if (truncation == 1 and mix_seed is None) or hasattr(loaded.generator, "styles"):
        return
    model = loaded.provenance["model"]
    if model.startswith(REGISTRY_SCHEME) and loaded.cfg.model.arch == "stylegan":
        raise GenerationError(
            f"{model} (version {loaded.provenance['version']}) was registered as G(z) at ψ = 1 alone, without "
            "its mapping and synthesis programs; register it again from its checkpoint.pt (ganforge generate "
            "--model RUN_DIR/checkpoint.pt works meanwhile) to use --truncation and --mix-seed"
        )
    raise GenerationError(
        f"{model} ({loaded.cfg.name}) has no mapping network: --truncation and --mix-seed "
        "need a stylegan model (train one with --preset stylegan)"
    )


def mixing_table(
    generator: nn.Module, rows_z: torch.Tensor, cols_z: torch.Tensor, group: str, psi: float
) -> torch.Tensor:
    """The paper's style-mixing figure as (R+1)·(C+1) images, row-major: a blank corner, source B (``cols_z``)
    along the top, source A (``rows_z``) down the left, and in row i, column j A_i with B_j's ``group`` styles."""
    from .models.stylegan import style_mixing_images

    truncated = TruncatedGenerator(generator, psi)
    device = next(generator.parameters()).device
    rows_z, cols_z = rows_z.to(device), cols_z.to(device)
    with torch.no_grad():
        a, b = truncated(rows_z), truncated(cols_z)
        cells = style_mixing_images(generator, rows_z, cols_z, group, psi).view(len(rows_z), len(cols_z), *a.shape[1:])
    corner = torch.full_like(a[:1], -1.0)
    rows = [torch.cat([corner, b])] + [torch.cat([a[i : i + 1], cells[i]]) for i in range(len(rows_z))]
    return torch.cat(rows).float().cpu()


def generate_to_dir(
    model: str,
    out_dir: str | os.PathLike,
    n: int = 64,
    seed: int = 0,
    interpolate: int = 0,
    batch_size: int = 256,
    device: str = "cpu",
    class_: str | None = None,
    per_class: bool = False,
    truncation: float = 1.0,
    mix_seed: int | None = None,
    mix_layers: str = "coarse",
) -> dict[str, Path]:
    """Write ``n`` samples (and ``interpolate``-step slerp rows) from ``model`` into ``out_dir``.

    ``model`` is ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` (tracking URI from
    ``ganforge.platform.tracking.configure``) or a checkpoint.pt (or the run directory holding it).
    Images: grid.png (ceil(√n) per row), images/NNNNN.png, interpolation.png. Audio:
    wavs/, spectrograms.png, interpolation/ and interpolation.png. Always generation.json.
    The samples' latents are the first ``n`` draws of a generator seeded with ``seed``; the
    interpolation endpoints are the first 2·rows draws, so row r runs from sample 2r to 2r+1.
    An existing ``out_dir`` is replaced only when everything was written. Returns name → path.

    Class-conditional models: ``class_`` (a name such as ``sneaker`` or an id) draws every sample and
    interpolation of that class; ``per_class`` draws the same ``n`` latents for every class, one grid
    row per class (images/ row-major: class k, sample i is number k·n + i); with neither, sample i
    is of class i % K. An interpolation row stays within one class (the chosen one, else row r's
    class is r % K), so only the latent moves.

    StyleGAN models (a checkpoint, or a version registered with its mapping and synthesis programs; one
    registered as G(z) alone is refused with the fix): ``truncation`` ψ pulls
    every w towards the tracked mean (samples and interpolations); ``mix_seed`` also writes mixing.png,
    the paper's style-mixing table — source A down the left (the first min(n, 8) samples), source B
    along the top (as many draws of ``mix_seed``), and each cell A's styles with B's ``mix_layers``
    (coarse ≤ 8 px, middle 14–16 px, fine ≥ 28 px layers).
    """
    check_request(n, interpolate, batch_size)
    check_style_request(truncation, mix_layers)
    out_dir = Path(out_dir)
    check_out_dir(out_dir, model)
    loaded = load_model(model, device)
    check_style_model(loaded, truncation, mix_seed)
    if truncation != 1:
        loaded = LoadedModel(
            TruncatedGenerator(loaded.generator, truncation), loaded.cfg, loaded.provenance, loaded.class_names
        )
    cfg = loaded.cfg
    chosen, class_entries = class_plan(loaded, class_, per_class)
    rows = interpolation_rows(n)
    latents = seeded_latents(max(n, 2 * rows), cfg.model.nz, seed)
    z, labels, ncol = latents[:n], None, None
    if cfg.model.num_classes:
        k = cfg.model.num_classes
        if per_class:
            z, labels, ncol = z.repeat(k, 1), torch.arange(k).repeat_interleave(n), n
        else:
            labels = torch.full((n,), chosen) if chosen is not None else torch.arange(n) % k
    samples = sample(loaded.generator, z, batch_size, cfg, labels)
    interpolation = None
    if interpolate:
        path_latents = interpolation_latents(latents[: 2 * rows], interpolate)
        path_labels = None
        if cfg.model.num_classes:
            k = cfg.model.num_classes
            row_class = torch.full((rows,), chosen) if chosen is not None else torch.arange(rows) % k
            path_labels = row_class.repeat_interleave(interpolate)
        interpolation = sample(loaded.generator, path_latents, batch_size, cfg, path_labels)
    mixing, style_entries = None, {}
    if truncation != 1 or mix_seed is not None:
        style_entries = {"truncation": truncation}
    if mix_seed is not None:
        seeds = min(n, MAX_MIXING_SEEDS)
        generator = loaded.generator.generator if truncation != 1 else loaded.generator
        mixing = mixing_table(
            generator, z[:seeds], seeded_latents(seeds, cfg.model.nz, mix_seed), mix_layers, truncation
        )
        style_entries.update({"mix_seed": mix_seed, "mix_layers": mix_layers, "mix_seeds": seeds})
    with atomic_dir(out_dir) as tmp:
        # Files go straight into the temporary directory: its rename into place is the atomic step.
        if cfg.data.kind == "audio":
            written = write_audio_outputs(samples, interpolation, interpolate, tmp, cfg.data.sample_rate)
        else:
            written = write_image_outputs(samples, interpolation, interpolate, tmp, ncol=ncol)
        if mixing is not None:
            written["mixing"] = tmp / "mixing.png"
            written["mixing"].write_bytes(png_bytes(tile_grid(to_uint8_images(mixing), style_entries["mix_seeds"] + 1)))
        manifest = generation_manifest(
            loaded, seed, n, interpolate, rows, relative_files(tmp), {**class_entries, **style_entries}
        )
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    written["manifest"] = tmp / MANIFEST_NAME
    return {name: out_dir / path.relative_to(tmp) for name, path in written.items()}
