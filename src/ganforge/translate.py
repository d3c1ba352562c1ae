"""Translate images with a trained cyclegan run, and evaluate a run's translations.

``translate_to_dir`` reads one image file or a folder of them, checks each is exactly the size the
model translates (a wrongly sized or unreadable file is a TranslationError naming it and the expected
size: nothing is resized silently), and writes ``<stem>.png`` per input into ``--out``, each atomically.
It refuses to overwrite a file already there and never deletes anything.

``evaluate_translation`` scores the EMA generators on the held-out split: FID of A→B against real B and
of B→A against real A (the real features cached by dataset sha256, as for every FID here), their mean
(``fid``, the promotion metric), the cycle-reconstruction L1 of each direction, and a PNG grid of input /
translated / reconstructed rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .config import EvalConfig, PipelineConfig
from .data import IMAGE_EXTENSIONS, is_color, list_image_files, load_dataset, open_image, to_mode
from .errors import GanforgeError, OutputPathError
from .fileio import atomic_write_bytes, atomic_write_text
from .manifest import DataError
from .training.batches import to_float

DIRECTIONS = ("a2b", "b2a")
GRID_NAME = "translations.png"


class TranslationError(GanforgeError, ValueError):
    """An input cannot be translated; the message names the file and what the model expects."""


def load_direction(model: str, direction: str, device: str = "cpu") -> tuple[nn.Module, PipelineConfig]:
    """(the generator of ``direction``, its config) from a cyclegan run directory / checkpoint.pt, or from
    the registry (``models:/NAME@ALIAS``: the pt2 program of both EMA generators, verified and loaded
    without pickle by ``ganforge.generate.load_registered``), on ``device``."""
    from .cyclegan import OneDirection, load_translators
    from .generate import REGISTRY_SCHEME, load_registered

    if direction not in DIRECTIONS:
        raise TranslationError(f"--direction {direction!r} is not valid; choose a2b or b2a")
    if not model.startswith(REGISTRY_SCHEME):
        G_ab, G_ba, cfg = load_translators(model)
        return (G_ab if direction == "a2b" else G_ba).to(device), cfg
    loaded = load_registered(model, device)
    if loaded.cfg.model.arch != "cyclegan":
        raise TranslationError(
            f"{model} is a {loaded.cfg.name} model, not an image translator; translate with a cyclegan model "
            "(e.g. models:/cyclegan@champion), or use `ganforge generate` for it"
        )
    return OneDirection(loaded.generator, direction), loaded.cfg


def input_files(path: str | os.PathLike) -> list[Path]:
    """The image files ``--input`` names: the file itself, or the PNG/JPEG files under the folder."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise TranslationError(f"--input {p} does not exist; pass an image file or a folder of PNG/JPEG images")
    files = list_image_files(p)
    if not files:
        raise TranslationError(f"--input {p} holds no {'/'.join(IMAGE_EXTENSIONS)} images")
    return files


def read_input(path: Path, cfg: PipelineConfig) -> np.ndarray:
    """One image as C×H×W uint8 at the model's channels; TranslationError naming the file otherwise."""
    try:
        img = open_image(path)
    except DataError as e:
        raise TranslationError(f"cannot translate {path}: it is not a readable image ({e})") from None
    r, c = cfg.data.resolution, cfg.data.channels
    if img.size != (r, r):
        raise TranslationError(
            f"cannot translate {path}: it is {img.size[0]}×{img.size[1]} px, and this model translates "
            f"{r}×{r} px images; resize it to {r}×{r} first"
        )
    if c == 1 and is_color(img):
        raise TranslationError(f"cannot translate {path}: it is a colour image and this model translates grayscale")
    array = np.asarray(to_mode(img, "L" if c == 1 else "RGB"), dtype=np.uint8)
    return array[None] if c == 1 else array.transpose(2, 0, 1)


@torch.no_grad()
def translate_batch(G: nn.Module, images_u8: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """uint8 N×C×H×W → translated uint8 N×C×H×W."""
    from .generate import to_uint8_images

    x = torch.from_numpy(np.array(images_u8))  # a copy: the datasets are read-only memory maps
    device = next(G.parameters()).device
    out = [G(to_float(x[i : i + batch_size]).to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return to_uint8_images(torch.cat(out)) if out else torch.empty(0, *x.shape[1:], dtype=torch.uint8)


def translate_to_dir(
    G: nn.Module, cfg: PipelineConfig, direction: str, inputs: str | os.PathLike, out_dir: str | os.PathLike
) -> list[Path]:
    """Translate every image ``inputs`` names into ``out_dir/<stem>.png``; returns the files written.

    Every input is read and checked before anything is written; an output name that already exists is
    refused (OutputPathError), so a user's files are never replaced or deleted."""
    from .generate import png_bytes

    if direction not in DIRECTIONS:
        raise TranslationError(f"--direction {direction!r} is not valid; choose a2b or b2a")
    files = input_files(inputs)
    images = np.stack([read_input(f, cfg) for f in files])
    out = Path(out_dir)
    targets = [out / f"{f.stem}.png" for f in files]
    seen: dict[Path, Path] = {}
    for f, t in zip(files, targets):
        if t in seen:
            raise TranslationError(f"{f} and {seen[t]} would both be written to {t}; rename one of them")
        seen[t] = f
        if t.exists():
            raise OutputPathError(f"{t} already exists; translate never replaces files. Fix: choose an empty --out")
    translated = translate_batch(G, images)
    for t, image in zip(targets, translated):
        atomic_write_bytes(t, png_bytes(image))
    return targets


def cycle_l1(G_there: nn.Module, G_back: nn.Module, images_u8: np.ndarray, batch_size: int = 64) -> float:
    """Mean |x - G_back(G_there(x))| over pixels, in the [-1, 1] scale the models work in."""
    x = torch.from_numpy(np.array(images_u8))  # a copy: the datasets are read-only memory maps
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            real = to_float(x[i : i + batch_size])
            total += float((G_back(G_there(real)) - real).abs().sum())
    return total / max(x.numel(), 1)


def translation_scores(
    G_ab: nn.Module,
    G_ba: nn.Module,
    test_a: str | os.PathLike,
    test_b: str | os.PathLike,
    n: int,
    eval_cfg: EvalConfig,
    cache_dir: str | os.PathLike,
    choice=None,
    prefix_n: int | None = None,
    workers: int | None = None,
) -> dict:
    """FID and KID of both directions: the first ``n`` held-out images of A translated A→B against
    ``eval_cfg.n_samples`` real B, and of B translated B→A against real A (``metrics.evaluate_images``).
    ``fid`` and ``kid_mean`` are the means of the two directions (``fid`` is the promotion metric), ``kid_std``
    the standard deviation of that mean. ``prefix_n``: the same scores of the first prefix_n translations as
    ``prefix`` (the FID curve's point for these generators, without extracting features again)."""
    from .metrics import evaluate_images

    real = [np.asarray(load_dataset(d).images[:n]) for d in (test_a, test_b)]
    per = {
        "a2b": evaluate_images(
            translate_batch(G_ab, real[0]).numpy(), test_b, eval_cfg, cache_dir, choice, prefix_n, workers=workers
        ),
        "b2a": evaluate_images(
            translate_batch(G_ba, real[1]).numpy(), test_a, eval_cfg, cache_dir, choice, prefix_n, workers=workers
        ),
    }
    out = {**_mean_of_directions(per["a2b"], per["b2a"]), "n": min(len(real[0]), len(real[1]))}
    out["n_real"] = min(per["a2b"]["n_real"], per["b2a"]["n_real"])
    out.update({f"fid_{d}": per[d]["fid"] for d in DIRECTIONS})
    out.update({f"kid_{d}": per[d]["kid_mean"] for d in DIRECTIONS})
    out.update(extractor=per["a2b"]["extractor"], resize=per["a2b"]["resize"], real=real)
    if "prefix" in per["a2b"]:
        out["prefix"] = {
            "n": per["a2b"]["prefix"]["n"],
            **_mean_of_directions(per["a2b"]["prefix"], per["b2a"]["prefix"]),
        }
    return out


def _mean_of_directions(a2b: dict, b2a: dict) -> dict:
    return {
        "fid": (a2b["fid"] + b2a["fid"]) / 2,
        "kid_mean": (a2b["kid_mean"] + b2a["kid_mean"]) / 2,
        "kid_std": float(np.hypot(a2b["kid_std"], b2a["kid_std"]) / 2),
    }


def evaluate_translation(
    G_ab: nn.Module,
    G_ba: nn.Module,
    cfg: PipelineConfig,
    test_a: str | os.PathLike,
    test_b: str | os.PathLike,
    out_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    eval_cfg: EvalConfig | None = None,
    choice=None,
    prefix_n: int | None = None,
) -> dict:
    """FIDs of both directions on the held-out domains, their mean (``fid``), cycle L1, and the grid PNG
    (``out_dir/translations.png``, rows A / A→B / A→B→A / B / B→A / B→A→B); metrics.json beside it.
    ``choice``: the Inception weights (``ganforge.weights.InceptionChoice``; default: resolved as for every FID).
    ``prefix_n``: as for ``translation_scores`` (``prefix`` in the result, not in metrics.json)."""
    from .cyclegan import N_GRID, grid_png, translation_rows

    eval_cfg = eval_cfg or cfg.eval
    s = translation_scores(G_ab, G_ba, test_a, test_b, eval_cfg.n_samples, eval_cfg, cache_dir, choice, prefix_n)
    real = s.pop("real")
    prefix = s.pop("prefix", None)
    metrics = {
        **{k: s[k] for k in ("fid_a2b", "fid_b2a", "fid", "kid_a2b", "kid_b2a")},
        "cycle_l1_a": cycle_l1(G_ab, G_ba, real[0]),
        "cycle_l1_b": cycle_l1(G_ba, G_ab, real[1]),
        "n_a": len(real[0]),
        "n_b": len(real[1]),
        "n_real": s["n_real"],
        "extractor": s["extractor"],
        "resize": s["resize"],
    }
    out = Path(out_dir)
    k = min(N_GRID, len(real[0]), len(real[1]))
    with torch.no_grad():
        rows = translation_rows(G_ab, G_ba, *(to_float(torch.from_numpy(r[:k].copy())) for r in real))
    metrics["grid"] = str(atomic_write_bytes(out / GRID_NAME, grid_png(rows, k)))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if prefix:
        metrics["prefix"] = prefix
    return metrics


def translation_curve_point(
    ckpt: dict,
    path: str | os.PathLike,
    test_a: str | os.PathLike,
    test_b: str | os.PathLike,
    n: int,
    n_real: int,
    cache_dir: str | os.PathLike,
    workers: int | None = None,
) -> dict:
    """One FID-curve point of a cyclegan snapshot (or checkpoint) already read from ``path``: the mean FID of
    both directions, n held-out images translated each way against n_real real images of the other domain —
    the final evaluation's ``fid`` at those sizes (``translation_scores``)."""
    import dataclasses

    from .cyclegan import translators_from

    G_ab, G_ba, cfg = translators_from(ckpt, path)
    eval_cfg = dataclasses.replace(cfg.eval, n_samples=n_real)
    s = translation_scores(G_ab, G_ba, test_a, test_b, n, eval_cfg, cache_dir, workers=workers)
    return {k: s[k] for k in ("fid", "kid_mean", "kid_std", "n", "n_real")}
