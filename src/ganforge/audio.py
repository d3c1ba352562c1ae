"""Audio datasets: a folder of WAV files or a synthesised SC09-style spoken-digit corpus → N×1×L int16.

The output directory has the same layout as an image dataset (``data.npy``, ``labels.npy`` when
every clip has a digit label, ``manifest.json``) and is written atomically. Clips are mono at
``cfg.sample_rate``, the voiced part centred in ``cfg.audio_length`` samples, peak-normalised.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import re
import shutil
import subprocess
import tempfile
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
from scipy.io import wavfile
from scipy.signal import resample_poly

import ganforge
from ganforge.config import DataConfig
from ganforge.fileio import atomic_dir, fetch_s3_prefix
from ganforge.manifest import (
    DataError,
    check_memory,
    class_histogram,
    save_array,
    sha256_of_array,
    write_manifest,
)

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LABEL_PATTERN = re.compile(r"^(zero|one|two|three|four|five|six|seven|eight|nine|[0-9])(?![a-z0-9])")
"""A digit word or a single digit at the start of a name, followed by a non-alphanumeric or the end
("seven_03", "7-a", "seven"), so Speech Commands hashes like "0a7c2a8d" do not count."""
PEAK = 0.95
SILENCE_FRACTION = 0.02
"""Leading and trailing samples below this fraction of the peak (-34 dB) count as silence: low
enough to keep the quiet onset of "six" and "seven"."""
ESPEAK_SOURCE = "espeak:sc09"
DEFAULT_SYNTH_CLIPS = 2000
SYNTH_WORKERS = 2

ESPEAK_VOICES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
    "de",
    "nl",
    "sv",
    "af",
)
"""eSpeak NG's English accents plus a few languages that read the English words with their own
letter-to-sound rules (accented speakers). All ship with the Debian espeak-ng-data package."""
ESPEAK_VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5", "+croak")
ESPEAK_SPEEDS = (120, 145, 170, 195)
"""Words per minute."""
ESPEAK_PITCHES = (25, 40, 55, 70, 85)
TEST_SPEAKER_PERCENT = 20
"""Share of synthetic speakers (voice, variant, speed, pitch) reserved for the test split."""


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an espeak-ng voice, variant, speed and pitch."""

    voice: str
    variant: str
    speed: int
    pitch: int

    @property
    def key(self) -> str:
        return f"{self.voice}{self.variant}/s{self.speed}/p{self.pitch}"


def prepare_audio(cfg: DataConfig, out_dir: str | os.PathLike, split: str | None = None, seed: int = 0) -> dict:
    """Prepare ``cfg.source`` (a WAV folder, ``s3://`` prefix of WAVs or ``espeak:sc09``) into ``out_dir``.

    Returns the manifest. ``split`` defaults to ``cfg.split``; a WAV folder that has a ``train/`` or
    ``test/`` subfolder uses it, otherwise the whole folder is read and the split recorded as "all".
    ``seed`` fixes which synthetic speakers say which digits.
    """
    split = split or cfg.split
    source = str(cfg.source)
    if source == ESPEAK_SOURCE:
        clips, labels = synthesise_sc09(cfg, split, seed)
        recorded_split, extra = split, {"synthesis": synthesis_description(seed)}
    elif source.startswith("s3://"):
        with tempfile.TemporaryDirectory(prefix="ganforge-s3-") as local:
            fetch_s3_prefix(source, local)
            clips, labels, recorded_split = read_wav_folder(Path(local), cfg, split, shown_as=source)
        extra = {}
    else:
        folder = Path(source[len("file://") :] if source.startswith("file://") else source)
        clips, labels, recorded_split = read_wav_folder(folder, cfg, split, shown_as=source)
        extra = {}
    manifest = build_audio_manifest(source, recorded_split, clips, labels, cfg.sample_rate) | extra
    with atomic_dir(out_dir) as tmp:
        save_array(tmp / "data.npy", clips)
        if labels is not None:
            save_array(tmp / "labels.npy", labels)
        write_manifest(tmp, manifest)
    return manifest


def build_audio_manifest(
    source: str, split: str, clips: np.ndarray, labels: np.ndarray | None, sample_rate: int
) -> dict:
    """The manifest of an audio dataset: the image manifest's keys plus ``sample_rate``."""
    return {
        "source": source,
        "kind": "audio",
        "split": split,
        "count": int(clips.shape[0]),
        "shape": list(clips.shape),
        "dtype": str(clips.dtype),
        "sha256": sha256_of_array(clips),
        "class_histogram": class_histogram(labels),
        "class_names": list(DIGIT_WORDS) if labels is not None else None,
        "sample_rate": sample_rate,
        "ganforge_version": ganforge.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def read_wav_folder(
    folder: Path, cfg: DataConfig, split: str, shown_as: str
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """All ``*.wav`` under ``folder`` (recursively, sorted, first ``cfg.limit``) → clips, labels, split."""
    if not folder.is_dir():
        problem = "is a file, not a directory" if folder.exists() else "does not exist"
        raise DataError(
            f"audio source {shown_as!r} {problem}; point data.source at a folder of .wav files "
            f"or use {ESPEAK_SOURCE!r} to synthesise spoken digits"
        )
    recorded_split = "all"
    if (folder / split).is_dir():
        folder, recorded_split = folder / split, split
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())
    if not files:
        raise DataError(
            f"no .wav files found in {shown_as} (searched recursively); add WAV files or use "
            f"data.source={ESPEAK_SOURCE!r}"
        )
    files = files[: cfg.limit]
    per_clip = 2 * 2 * cfg.audio_length  # each int16 clip as fitted, then in np.stack's array
    check_memory(len(files) * per_clip, per_clip, f"reading {len(files)} clips of {shown_as}")
    clips = np.stack([fit_clip(read_wav(f), f, cfg) for f in files])
    labels = [label_from_path(f, folder) for f in files]
    label_array = np.array(labels, dtype=np.int64) if all(v is not None for v in labels) else None
    return clips, label_array, recorded_split


def label_from_path(path: Path, root: Path) -> int | None:
    """Digit 0-9 from the file name ("seven_01.wav", "7_a.wav"), else from the parent folder ("seven/")."""
    names = [path.stem]
    if path.parent != root:
        names.append(path.parent.name)
    for name in names:
        match = LABEL_PATTERN.match(name.lower())
        if match:
            token = match.group(1)
            return int(token) if token.isdigit() else DIGIT_WORDS.index(token)
    return None


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A WAV file (PCM 8/16/24/32-bit or float) → (float64 mono samples in [-1, 1], sample rate)."""
    try:
        rate, data = wavfile.read(path)
    except Exception as e:  # scipy raises ValueError, EOFError, struct.error… for non-WAV bytes
        raise DataError(
            f"{path} is not a readable WAV file ({type(e).__name__}: {e}); "
            "convert it to PCM WAV (e.g. `sox in.ext -b 16 out.wav`) or remove it"
        ) from e
    samples = pcm_to_float(data, path)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if samples.size == 0:
        raise DataError(f"{path} has no audio samples (zero length); remove it or re-record it")
    if not np.any(samples):
        raise DataError(f"{path} is silent (every sample is 0); remove it from the dataset")
    return samples, int(rate)


def pcm_to_float(data: np.ndarray, path: Path) -> np.ndarray:
    """Scale integer PCM to [-1, 1]. scipy returns 24-bit audio left-aligned in int32, so /2³¹ fits it too."""
    if data.dtype == np.uint8:
        return (data.astype(np.float64) - 128.0) / 128.0
    if data.dtype in (np.int16, np.int32, np.int64):
        return data.astype(np.float64) / float(np.iinfo(data.dtype).max + 1)
    if data.dtype.kind == "f":
        return data.astype(np.float64)
    raise DataError(f"{path} has unsupported sample type {data.dtype}; convert it to 16-bit PCM WAV")


def fit_clip(audio: tuple[np.ndarray, int], path: Path, cfg: DataConfig) -> np.ndarray:
    """Resample to ``cfg.sample_rate``, centre the voiced part in ``cfg.audio_length`` samples, → (1, L) int16."""
    samples, rate = audio
    samples = resample(samples, rate, cfg.sample_rate)
    voiced = trim_silence(samples)
    if not np.any(voiced):
        raise DataError(f"{path} is silent after resampling to {cfg.sample_rate} Hz; remove it from the dataset")
    centred = centre_in_length(voiced, cfg.audio_length)
    return to_int16(centred * (PEAK / np.max(np.abs(centred))))[None, :]


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling by the reduced ratio target/rate (exact for 8k, 22.05k, 44.1k, 48k → 16k)."""
    if rate == target_rate:
        return samples
    g = gcd(rate, target_rate)
    return resample_poly(samples, target_rate // g, rate // g)


def trim_silence(samples: np.ndarray) -> np.ndarray:
    """Drop leading and trailing samples quieter than SILENCE_FRACTION of the peak."""
    loud = np.flatnonzero(np.abs(samples) >= SILENCE_FRACTION * np.max(np.abs(samples)))
    return samples[loud[0] : loud[-1] + 1] if loud.size else samples


def centre_in_length(samples: np.ndarray, length: int) -> np.ndarray:
    """The middle ``length`` samples of a longer clip, or a shorter clip zero-padded equally on both sides."""
    if samples.size >= length:
        start = (samples.size - length) // 2
        return samples[start : start + length]
    left = (length - samples.size) // 2
    return np.pad(samples, (left, length - samples.size - left))


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float in [-1, 1] → int16 (clipped, rounded)."""
    return np.clip(np.round(samples * 32767.0), -32768, 32767).astype(np.int16)


def all_speakers() -> list[Speaker]:
    """Every (voice, variant, speed, pitch) combination, in a fixed order."""
    return [
        Speaker(v, var, s, p)
        for v in ESPEAK_VOICES
        for var in ESPEAK_VARIANTS
        for s in ESPEAK_SPEEDS
        for p in ESPEAK_PITCHES
    ]


def speaker_split(speaker: Speaker) -> str:
    """ "test" for a fixed ~20% of speakers chosen by hash, "train" for the rest: the splits never share a speaker."""
    bucket = int(hashlib.sha256(speaker.key.encode()).hexdigest(), 16) % 100
    return "test" if bucket < TEST_SPEAKER_PERCENT else "train"


def sc09_plan(n_clips: int, split: str, seed: int) -> list[tuple[Speaker, int]]:
    """Which speaker says which digit for clip i: speakers in seeded order, each saying all ten digits
    in a seeded order (like SC09, where one person records several digits); labels balanced to ±1."""
    rng = np.random.default_rng(seed)
    speakers = [s for s in all_speakers() if speaker_split(s) == split]
    n_speakers = -(-n_clips // len(DIGIT_WORDS))
    if n_speakers > len(speakers):
        raise DataError(
            f"espeak:sc09 has {len(speakers)} {split} speakers, enough for "
            f"{len(speakers) * len(DIGIT_WORDS)} clips; lower data.limit from {n_clips}"
        )
    chosen = [speakers[i] for i in rng.permutation(len(speakers))[:n_speakers]]
    return [(speaker, int(digit)) for speaker in chosen for digit in rng.permutation(len(DIGIT_WORDS))][:n_clips]


def synthesise_sc09(cfg: DataConfig, split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Spoken digits "zero"…"nine" by espeak-ng speakers → (N×1×L int16 clips, int64 labels)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise DataError(f"data.source={ESPEAK_SOURCE!r} needs the espeak-ng program: `apt-get install espeak-ng`")
    plan = sc09_plan(cfg.limit or DEFAULT_SYNTH_CLIPS, split, seed)
    with ThreadPoolExecutor(max_workers=SYNTH_WORKERS) as pool:  # each call is its own espeak-ng process
        clips = list(pool.map(lambda job: speak_digit(espeak, job[0], job[1], cfg), plan))
    return np.stack(clips), np.array([digit for _, digit in plan], dtype=np.int64)


def speak_digit(espeak: str, speaker: Speaker, digit: int, cfg: DataConfig) -> np.ndarray:
    """One espeak-ng utterance of a digit word, fitted like a WAV from a folder → (1, L) int16."""
    word = DIGIT_WORDS[digit]
    command = [
        espeak,
        "-v",
        speaker.voice + speaker.variant,
        "-s",
        str(speaker.speed),
        "-p",
        str(speaker.pitch),
        "--stdout",
        word,
    ]
    result = subprocess.run(command, capture_output=True, timeout=60)
    if result.returncode != 0 or not result.stdout:
        raise DataError(
            f"`{' '.join(command)}` failed (exit {result.returncode}): "
            f"{result.stderr.decode(errors='replace').strip()}; check `espeak-ng --voices`"
        )
    samples, rate = wav_stream_samples(result.stdout)
    shown_as = Path(f"espeak-ng {speaker.key} {word}")
    if not np.any(samples):
        raise DataError(f"{shown_as} produced silence; check the voice with `espeak-ng -v {speaker.voice}`")
    return fit_clip((samples, rate), shown_as, cfg)


def wav_stream_samples(stream: bytes) -> tuple[np.ndarray, int]:
    """16-bit mono WAV bytes from ``espeak-ng --stdout`` → (float64 samples, rate).

    The streamed header carries a placeholder length; ``readframes`` stops at the real end of data.
    """
    with wave.open(io.BytesIO(stream)) as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        frames = w.readframes(w.getnframes())
    if width != 2 or channels != 1:
        raise DataError(f"espeak-ng produced {channels}-channel {8 * width}-bit audio; expected 16-bit mono")
    return np.frombuffer(frames, dtype="<i2").astype(np.float64) / 32768.0, rate


def synthesis_description(seed: int) -> dict:
    """What the synthetic corpus was made from, for the manifest (reproducibility)."""
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "engine": version,
        "voices": list(ESPEAK_VOICES),
        "variants": list(ESPEAK_VARIANTS),
        "speeds_wpm": list(ESPEAK_SPEEDS),
        "pitches": list(ESPEAK_PITCHES),
        "seed": seed,
        "test_speaker_percent": TEST_SPEAKER_PERCENT,
    }
