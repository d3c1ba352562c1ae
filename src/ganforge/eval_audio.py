"""What an audio run's evaluation leaves to look at and listen to: ``eval_audio/`` beside metrics.json.

``generated.png`` and ``real.png`` are spectrogram grids of the first GRID_CLIPS evaluation samples and of
GRID_CLIPS real clips spread over the reference dataset (which is ordered by speaker); ``wavs/`` holds the
first N_WAVS evaluation samples as 16-bit PCM WAVs. The samples are the scored ones (the evaluation's
fixed latent draw), so the pictures and sounds are of the generator the scores describe.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .audio_io import spectrogram_grid_png, write_wavs
from .data import load_dataset
from .fileio import atomic_dir

EVAL_AUDIO_DIR = "eval_audio"
GRID_CLIPS = 16
N_WAVS = 8


def real_grid_clips(real_dataset_dir: str | os.PathLike, n: int = GRID_CLIPS) -> np.ndarray:
    """``n`` real clips evenly spaced over the dataset: several speakers and digits, not one speaker's ten."""
    clips = load_dataset(real_dataset_dir).images
    return np.asarray(clips[np.linspace(0, len(clips) - 1, min(n, len(clips))).round().astype(int)])


def write_eval_audio(
    fake: np.ndarray, real_dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, sample_rate: int
) -> Path:
    """Write out_dir/eval_audio/ (replacing an older one whole) from the scored samples; returns its path."""
    if len(fake) == 0:
        raise ValueError("write_eval_audio needs at least one generated clip")
    target = Path(out_dir) / EVAL_AUDIO_DIR
    with atomic_dir(target) as tmp:
        spectrogram_grid_png(fake[:GRID_CLIPS], tmp / "generated.png", nrow=8)
        spectrogram_grid_png(real_grid_clips(real_dataset_dir), tmp / "real.png", nrow=8)
        write_wavs(fake[:N_WAVS], tmp / "wavs", sample_rate)
    return target
