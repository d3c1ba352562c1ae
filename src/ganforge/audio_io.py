"""Audio files and pictures of audio: clips as 16-bit PCM WAVs and as a spectrogram grid PNG.

Training writes its audio samples through this module, generation its outputs, and
``audio_metrics`` reads clips with ``clips_to_float``; it needs only numpy and torch (Pillow
for the PNG), not the evaluation's classifier.
"""

from __future__ import annotations

import io
import math
import os
import wave
from pathlib import Path

import numpy as np
import torch

from .fileio import atomic_write_bytes


def clips_to_float(clips: np.ndarray) -> torch.Tensor:
    """int16 PCM or float clips, N×1×L or N×L → float32 tensor N×1×L in [-1, 1]."""
    a = np.asarray(clips)
    if a.ndim == 2:
        a = a[:, None, :]
    if a.ndim != 3 or a.shape[1] != 1:
        raise ValueError(f"audio clips must be N×1×L (mono) or N×L, got shape {list(a.shape)}")
    if a.dtype == np.int16:
        return torch.from_numpy(a.astype(np.float32) / 32768.0)
    if a.dtype.kind != "f":
        raise ValueError(f"audio clips must be int16 PCM or float in [-1, 1], got dtype {a.dtype}")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def spectrogram_grid_png(clips: np.ndarray, path: str | os.PathLike, nrow: int = 8) -> Path:
    """A grid of log-magnitude spectrograms (low frequencies at the bottom, 80 dB range) as a PNG, atomically."""
    from PIL import Image  # images only for sample artifacts

    x = clips_to_float(clips).flatten(1)
    spec = torch.stft(x, 256, 128, window=torch.hann_window(256), return_complex=True).abs()
    db = 20.0 * torch.log10(spec + 1e-8)
    db = (db - db.amax()).clamp(min=-80.0)
    tiles = ((db + 80.0) * (255.0 / 80.0)).flip(1).to(torch.uint8).numpy()
    n, h, w = tiles.shape
    ncol = max(1, nrow)
    rows, pad = math.ceil(n / ncol), 2
    canvas = np.zeros((rows * (h + pad) + pad, ncol * (w + pad) + pad), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncol)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = tile
    buffer = io.BytesIO()
    Image.fromarray(canvas, mode="L").save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def write_wavs(clips: np.ndarray, out_dir: str | os.PathLike, sample_rate: int = 16000) -> list[Path]:
    """Each clip as out_dir/sample_NNNN.wav, 16-bit PCM mono, each file written atomically."""
    a = np.asarray(clips)
    pcm = (
        a.reshape(len(a), -1)
        if a.dtype == np.int16
        else np.clip(np.round(clips_to_float(a).flatten(1).numpy() * 32767.0), -32768, 32767)
    )
    pcm = pcm.astype("<i2")
    paths = []
    for i, clip in enumerate(pcm):
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(clip.tobytes())
        paths.append(atomic_write_bytes(Path(out_dir) / f"sample_{i:04d}.wav", buffer.getvalue()))
    return paths
