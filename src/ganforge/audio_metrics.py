"""SC09-style evaluation of generated audio (Donahue et al. 2019, §5.1 and Table 1).

The WaveGAN paper scores generated spoken digits with a digit classifier trained on the real
data: Inception Score from its class posteriors and a Fréchet distance on its penultimate
features. Here the classifier is small (log-mel → 3 conv blocks), trained on CPU in seconds on
the prepared dataset itself and cached on disk keyed by the dataset's sha256, so every
evaluation of models trained on that dataset uses the same extractor. Its held-out clips give the
ceilings: IS of real audio and the FID of real against real at the same N.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ganforge.audio_io import clips_to_float
from ganforge.config import EvalConfig
from ganforge.data import DataError, load_dataset, verify_sha256
from ganforge.fileio import atomic_file
from ganforge.metrics import features_to_statistics, statistics_to_fid

N_FFT = 512
HOP = 256
N_MELS = 40
N_CLASSES = 10
WIDTH = 16
TRAIN_STEPS = 200
"""Optimiser steps, whatever the dataset size: training time stays predictable (seconds on CPU)."""
TRAIN_BATCH = 64
LEARNING_RATE = 2e-3
HELDOUT_FRACTION = 0.2
BLOCK = 10
"""Held-out clips are whole blocks of consecutive clips: one synthetic speaker's ten digits, or
neighbours in a sorted folder (often one recording session), so held-out accuracy is not inflated
by speakers the classifier has heard."""
RECIPE_VERSION = 1
"""Bump when the classifier or its training changes: old cached classifiers are then not reused."""
SPLIT_SEED = 0
IS_SPLITS = 10
"""As in the paper (and Salimans et al. 2016): IS is averaged over 10 chunks of the samples."""
TRAIN_SEED = 0


def mel_filterbank(sample_rate: int, n_fft: int = N_FFT, n_mels: int = N_MELS) -> torch.Tensor:
    """Triangular HTK-mel filters, (n_mels, n_fft // 2 + 1)."""

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return torch.from_numpy(np.clip(np.minimum(rising, falling), 0.0, None)).float()


class DigitClassifier(nn.Module):
    """Waveform (B, 1, L) in [-1, 1] → 10 digit logits; ``features`` gives the penultimate layer."""

    def __init__(self, sample_rate: int = 16000, width: int = WIDTH) -> None:
        super().__init__()
        self.register_buffer("mel", mel_filterbank(sample_rate))
        self.register_buffer("window", torch.hann_window(N_FFT))

        def block(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2), nn.BatchNorm1d(c_out), nn.ReLU())

        # 1-D convolutions over time with mel bins as channels: ~10x cheaper than 2-D on CPU
        # and plenty for telling ten words apart.
        self.body = nn.Sequential(
            nn.BatchNorm1d(N_MELS),
            block(N_MELS, 2 * width, 5),
            nn.MaxPool1d(2),
            block(2 * width, 4 * width, 5),
            nn.MaxPool1d(2),
            block(4 * width, 8 * width, 3),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(8 * width, N_CLASSES)

    def log_mel(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, L) waveform → (B, N_MELS, frames) log-mel magnitudes."""
        spec = torch.stft(x.flatten(1), N_FFT, HOP, window=self.window, return_complex=True).abs()
        return torch.log(self.mel @ spec + 1e-5)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.log_mel(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class TrainedClassifier:
    """A digit classifier with the facts the evaluation reports about it."""

    model: DigitClassifier
    dataset_sha256: str
    heldout_accuracy: float
    train_seconds: float
    from_cache: bool

    @property
    def extractor(self) -> str:
        return f"sc09-classifier-{self.dataset_sha256[:12]}"


def heldout_mask(n: int, fraction: float = HELDOUT_FRACTION, seed: int = SPLIT_SEED) -> np.ndarray:
    """Boolean mask over n clips: a seeded choice of whole BLOCKs of consecutive clips, ≈ fraction of them."""
    n_blocks = math.ceil(n / BLOCK)
    n_heldout = max(1, round(n_blocks * fraction))
    chosen = np.random.default_rng(seed).permutation(n_blocks)[:n_heldout]
    block_is_heldout = np.zeros(n_blocks, dtype=bool)
    block_is_heldout[chosen] = True
    return np.repeat(block_is_heldout, BLOCK)[:n]


def log_mels(model: DigitClassifier, clips: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Log-mel spectrograms of all clips, computed once before training (the front end has no weights)."""
    with torch.no_grad():
        return torch.cat([model.log_mel(clips[i : i + batch_size]) for i in range(0, len(clips), batch_size)])


def augment_spectrograms(spec: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random time shift (±8 frames, circular: the clips are padded with silence) and gain (±6 dB)."""
    shift = int(torch.randint(-8, 9, (1,), generator=generator))
    gain = (torch.rand(spec.shape[0], 1, 1, generator=generator) - 0.5) * 1.4
    return torch.roll(spec, shift, dims=-1) + gain


def shuffled_batches(n: int, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``steps`` index batches of TRAIN_BATCH (or n, if smaller), epoch after reshuffled epoch."""
    order = torch.cat([torch.randperm(n, generator=generator) for _ in range(math.ceil(steps * TRAIN_BATCH / n) + 1)])
    size = min(TRAIN_BATCH, n)
    return [order[i * size : (i + 1) * size] for i in range(steps)]


def train_digit_classifier(
    clips: np.ndarray, labels: np.ndarray, sample_rate: int = 16000, steps: int = TRAIN_STEPS, seed: int = TRAIN_SEED
) -> DigitClassifier:
    """Train a DigitClassifier on labelled clips (deterministic given the seed); returns it in eval mode."""
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if labels_t.min() < 0 or labels_t.max() >= N_CLASSES:
        raise ValueError(f"digit labels must be in 0..9, got {int(labels_t.min())}..{int(labels_t.max())}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier(sample_rate)
        spectrograms = log_mels(model, clips_to_float(clips))
        generator = torch.Generator().manual_seed(seed)
        optimiser = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, LEARNING_RATE, total_steps=steps)
        model.train()
        for batch in shuffled_batches(len(labels_t), steps, generator):
            logits = model.head(model.body(augment_spectrograms(spectrograms[batch], generator)))
            loss = nn.functional.cross_entropy(logits, labels_t[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


def classifier_logits(clips: np.ndarray, classifier: DigitClassifier, batch_size: int = 100) -> np.ndarray:
    """Digit logits (N, 10) of clips (int16 or float)."""
    return _run_in_batches(clips, classifier, batch_size, lambda m, x: m(x))


def classifier_features(clips: np.ndarray, classifier: DigitClassifier, batch_size: int = 100) -> np.ndarray:
    """Penultimate-layer features (N, 4·WIDTH) of clips (int16 or float): the FID embedding."""
    return _run_in_batches(clips, classifier, batch_size, lambda m, x: m.features(x))


def _run_in_batches(clips, classifier, batch_size, fn) -> np.ndarray:
    x = clips_to_float(clips)
    classifier.eval()
    with torch.no_grad():
        return torch.cat([fn(classifier, x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).double().numpy()


def classifier_accuracy(clips: np.ndarray, labels: np.ndarray, classifier: DigitClassifier) -> float:
    """Fraction of clips whose arg-max digit equals the label."""
    return float(np.mean(classifier_logits(clips, classifier).argmax(1) == np.asarray(labels)))


def audio_inception_score(logits_or_probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) ‖ p(y))) over ``splits`` chunks → (mean, std), as in the paper.

    Rows that are non-negative and sum to 1 are taken as probabilities, anything else as logits.
    ``splits`` is clipped to the number of rows.
    """
    a = np.asarray(logits_or_probs, dtype=np.float64)
    is_probs = a.min() >= 0 and np.allclose(a.sum(axis=1), 1.0, atol=1e-4)
    probs = a if is_probs else np.exp(a - a.max(axis=1, keepdims=True))
    probs = probs / probs.sum(axis=1, keepdims=True)
    scores = []
    for chunk in np.array_split(probs, min(splits, len(probs))):
        marginal = chunk.mean(axis=0, keepdims=True)
        kl = np.sum(chunk * (np.log(chunk + 1e-12) - np.log(marginal + 1e-12)), axis=1)
        scores.append(math.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def cached_classifier(
    real_dataset_dir: str | os.PathLike, cache_dir: str | os.PathLike
) -> tuple[TrainedClassifier, dict]:
    """The digit classifier of a prepared audio dataset, trained once per dataset sha256 and cached.

    Also returns the cached real-data facts: held-out features and logits, reference statistics
    (the classifier's training clips). The cache file is written atomically.
    """
    dataset = load_dataset(real_dataset_dir)
    if dataset.manifest.get("kind") != "audio" or dataset.labels is None:
        raise DataError(
            f"{real_dataset_dir} is not a labelled audio dataset (needs kind 'audio' and labels.npy "
            "with digits 0-9); prepare one with data.source='espeak:sc09' or a WAV folder named by digit"
        )
    sha = verify_sha256(dataset)
    path = Path(cache_dir) / f"sc09-classifier-{sha[:12]}-r{RECIPE_VERSION}.pt"
    sample_rate = int(dataset.manifest.get("sample_rate", 16000))
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model = DigitClassifier(sample_rate)
        model.load_state_dict(saved["state_dict"])
        classifier = TrainedClassifier(model.eval(), sha, saved["heldout_accuracy"], saved["train_seconds"], True)
        return classifier, {
            k: saved[k].numpy() for k in ("heldout_features", "heldout_logits", "reference_mu", "reference_sigma")
        }
    clips, labels = np.asarray(dataset.images), np.asarray(dataset.labels)
    heldout = heldout_mask(len(clips))
    if heldout.all() or not heldout.any():
        raise DataError(
            f"{real_dataset_dir} has {len(clips)} clips; the SC09 evaluation needs at least "
            f"{2 * BLOCK} to hold some out"
        )
    started = time.perf_counter()
    model = train_digit_classifier(clips[~heldout], labels[~heldout], sample_rate)
    train_seconds = time.perf_counter() - started
    real = {
        "heldout_features": classifier_features(clips[heldout], model),
        "heldout_logits": classifier_logits(clips[heldout], model),
    }
    real["reference_mu"], real["reference_sigma"] = features_to_statistics(classifier_features(clips[~heldout], model))
    accuracy = float(np.mean(real["heldout_logits"].argmax(1) == labels[heldout]))
    with atomic_file(path) as tmp:
        torch.save(
            {
                "state_dict": model.state_dict(),
                "heldout_accuracy": accuracy,
                "train_seconds": train_seconds,
                "dataset_sha256": sha,
                **{k: torch.from_numpy(v) for k, v in real.items()},
            },
            tmp,
        )
    return TrainedClassifier(model, sha, accuracy, train_seconds, False), real


def evaluate_audio(
    fake: np.ndarray, real_dataset_dir: str | os.PathLike, eval_cfg: EvalConfig, cache_dir: str | os.PathLike
) -> dict:
    """SC09 metrics of generated clips (N×1×L, float in [-1, 1] or int16) against a prepared dataset.

    FID is against the statistics of the classifier's training clips; ``real_fid_ceiling`` is the
    FID of held-out real clips against the same statistics at the same N (min(n, held-out count)),
    since small-N FID is biased. ``real_inception_score`` is the IS of the held-out real clips at
    the fakes' chunk size (n / 10 clips).
    """
    fake = np.asarray(fake)[: eval_cfg.n_samples]
    if len(fake) < 2:
        raise ValueError(f"evaluate_audio needs at least 2 generated clips, got {len(fake)}")
    classifier, real = cached_classifier(real_dataset_dir, cache_dir)
    fake_features = classifier_features(fake, classifier.model, eval_cfg.batch_size)
    fake_logits = classifier.model.head(torch.from_numpy(fake_features).float()).detach().double().numpy()
    mu, sigma = real["reference_mu"], real["reference_sigma"]
    n_ceiling = min(len(fake), len(real["heldout_features"]))
    is_mean, is_std = audio_inception_score(fake_logits, IS_SPLITS)
    # Same chunk size for the ceiling as for the fakes: small chunks cap IS (a chunk of k clips
    # cannot show more than k classes), so unequal chunks would not compare.
    heldout_splits = max(1, round(IS_SPLITS * len(real["heldout_logits"]) / len(fake)))
    real_is_mean, real_is_std = audio_inception_score(real["heldout_logits"], heldout_splits)
    return {
        "inception_score": is_mean,
        "inception_score_std": is_std,
        "fid": statistics_to_fid(*features_to_statistics(fake_features), mu, sigma),
        "real_inception_score": real_is_mean,
        "real_inception_score_std": real_is_std,
        "real_fid_ceiling": statistics_to_fid(*features_to_statistics(real["heldout_features"][:n_ceiling]), mu, sigma),
        "real_fid_ceiling_n": n_ceiling,
        "classifier_accuracy": classifier.heldout_accuracy,
        "classifier_from_cache": classifier.from_cache,
        "n": len(fake),
        "dataset_sha256": classifier.dataset_sha256,
        "extractor": classifier.extractor,
    }
