import json
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganforge.audio import all_speakers, prepare_audio, sc09_plan, speaker_split
from ganforge.audio_io import spectrogram_grid_png, write_wavs
from ganforge.audio_metrics import (
    audio_inception_score,
    cached_classifier,
    classifier_accuracy,
    evaluate_audio,
)
from ganforge.config import DataConfig, EvalConfig
from ganforge.data import DataError, load_dataset, sha256_of_array

torch.set_num_threads(1)  # the test machine's cores are shared: one thread is faster than two here
LENGTH = 16384


def audio_cfg(source, limit=None) -> DataConfig:
    return DataConfig(source=str(source), kind="audio", limit=limit)


def write_wav(path: Path, samples: np.ndarray, rate: int, width: int = 2) -> Path:
    """samples: float in [-1, 1], shape (frames,) or (frames, channels); PCM of ``width`` bytes."""
    frames = samples if samples.ndim == 2 else samples[:, None]
    if width == 1:
        raw = np.round(frames * 127 + 128).astype(np.uint8).tobytes()
    elif width == 2:
        raw = np.round(frames * 32767).astype("<i2").tobytes()
    else:  # 24-bit: the low three bytes of little-endian int32
        raw = np.round(frames * 8388607).astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(frames.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return path


def tone_burst(rate: int, seconds: float = 0.5, hz: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    """A tone with 0.1 s of silence before and after (which prep must trim)."""
    t = np.arange(int(rate * seconds)) / rate
    gap = np.zeros(int(rate * 0.1))
    return np.concatenate([gap, amplitude * np.sin(2 * np.pi * hz * t), gap])


def test_wav_folder_is_resampled_to_mono_16k_and_centred(tmp_path):
    src = tmp_path / "wavs"
    stereo = np.stack([tone_burst(8000), tone_burst(8000)], axis=1)
    write_wav(src / "seven_01.wav", stereo, 8000)
    write_wav(src / "3_take2.wav", tone_burst(8000), 8000, width=1)
    write_wav(src / "nine" / "a1b2c3d4_nohash_0.wav", tone_burst(8000), 8000, width=3)
    manifest = prepare_audio(audio_cfg(src), tmp_path / "ds")

    ds = load_dataset(tmp_path / "ds")
    clips = np.asarray(ds.images)
    assert clips.shape == (3, 1, LENGTH) and clips.dtype == np.int16
    assert ds.labels.tolist() == [3, 9, 7]  # sorted paths: 3_take2, nine/…, seven_01
    assert manifest["kind"] == "audio" and manifest["sample_rate"] == 16000 and manifest["split"] == "all"
    assert manifest["sha256"] == sha256_of_array(clips)
    assert manifest["class_histogram"] == {"3": 1, "7": 1, "9": 1}
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["count"] == 3
    for clip in clips[:, 0].astype(np.float64) / 32767:
        assert abs(np.abs(clip).max() - 0.95) < 0.01  # peak-normalised
        voiced = np.flatnonzero(np.abs(clip) > 0.1)
        assert abs(voiced[-1] - voiced[0] - 8000) < 50  # 0.5 s at 16 kHz, silence trimmed
        assert abs((voiced[0] + voiced[-1]) / 2 - LENGTH / 2) < 50  # centred
        spectrum = np.abs(np.fft.rfft(clip))
        assert abs(np.argmax(spectrum) * 16000 / LENGTH - 440) < 2  # pitch kept by resampling


def test_unlabelled_wavs_give_no_labels_file(tmp_path):
    write_wav(tmp_path / "wavs" / "birdsong.wav", tone_burst(16000), 16000)
    manifest = prepare_audio(audio_cfg(tmp_path / "wavs"), tmp_path / "ds")
    assert not (tmp_path / "ds" / "labels.npy").exists()
    assert manifest["class_histogram"] is None


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("two_notes.wav", b"these are not audio samples", "not a readable WAV"),
        ("four_empty.wav", b"", "not a readable WAV"),
        ("five_silent.wav", np.zeros(8000), "silent"),
        ("six_zero_length.wav", np.zeros(0), "zero length"),
    ],
)
def test_bad_wav_files_raise_data_error_naming_the_file(tmp_path, name, content, problem):
    src = tmp_path / "wavs"
    write_wav(src / "one_ok.wav", tone_burst(16000), 16000)
    if isinstance(content, bytes):
        (src / name).write_bytes(content)
    else:
        write_wav(src / name, content, 16000)
    with pytest.raises(DataError, match=problem) as err:
        prepare_audio(audio_cfg(src), tmp_path / "ds")
    assert name in str(err.value)
    assert not (tmp_path / "ds").exists()  # nothing half-written


def test_folder_without_wavs_raises_data_error(tmp_path):
    (tmp_path / "wavs").mkdir()
    (tmp_path / "wavs" / "README.txt").write_text("no audio here")
    with pytest.raises(DataError, match="no .wav files found in .*wavs"):
        prepare_audio(audio_cfg(tmp_path / "wavs"), tmp_path / "ds")


def test_synthetic_speakers_of_train_and_test_are_disjoint():
    train = {s.key for s, _ in sc09_plan(400, "train", seed=0)}
    test = {s.key for s, _ in sc09_plan(400, "test", seed=0)}
    assert train and test and not train & test
    test_share = sum(speaker_split(s) == "test" for s in all_speakers()) / len(all_speakers())
    assert 0.15 < test_share < 0.25


def test_espeak_sc09_is_balanced_and_deterministic(tmp_path):
    first = prepare_audio(audio_cfg("espeak:sc09", limit=40), tmp_path / "a")
    second = prepare_audio(audio_cfg("espeak:sc09", limit=40), tmp_path / "b")
    assert first["sha256"] == second["sha256"]
    assert first["shape"] == [40, 1, LENGTH] and first["split"] == "train"
    assert first["class_histogram"] == {str(d): 4 for d in range(10)}
    clips = np.load(tmp_path / "a" / "data.npy")
    assert np.all(np.abs(clips).max(axis=(1, 2)) > 30000)  # every clip has speech, peak-normalised
    assert len({c.tobytes() for c in clips}) == 40  # no two clips identical


@pytest.fixture(scope="module")
def sc09(tmp_path_factory):
    root = tmp_path_factory.mktemp("sc09")
    prepare_audio(audio_cfg("espeak:sc09", limit=300), root / "train")
    prepare_audio(audio_cfg("espeak:sc09", limit=100), root / "test", split="test")
    return root


def test_sc09_evaluation_scores_real_speech_high_and_noise_low(sc09, tmp_path):
    cache = tmp_path / "cache"
    unseen = np.load(sc09 / "test" / "data.npy")
    started = time.perf_counter()
    real = evaluate_audio(unseen, sc09 / "train", EvalConfig(n_samples=100), cache)
    first_seconds = time.perf_counter() - started
    print(f"\nSC09 classifier: trained in {first_seconds:.1f}s; {real}")

    assert real["classifier_from_cache"] is False
    assert real["classifier_accuracy"] > 0.6  # held-out speakers of the training split; chance is 0.1
    assert real["real_inception_score"] > 2.0
    assert real["inception_score"] > 2.0  # the test split: voices the classifier never heard
    assert real["n"] == 100 and real["extractor"] == f"sc09-classifier-{real['dataset_sha256'][:12]}"
    classifier, _ = cached_classifier(sc09 / "train", cache)
    test_accuracy = classifier_accuracy(unseen, np.load(sc09 / "test" / "labels.npy"), classifier.model)
    print(f"accuracy on the speaker-disjoint test split: {test_accuracy:.3f}")
    assert test_accuracy > 0.6

    (cached_file,) = cache.iterdir()
    written = cached_file.stat().st_mtime_ns
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, (100, 1, LENGTH)).astype(np.float32)
    started = time.perf_counter()
    fake = evaluate_audio(noise, sc09 / "train", EvalConfig(n_samples=100), cache)
    assert time.perf_counter() - started < first_seconds
    assert fake["classifier_from_cache"] is True and cached_file.stat().st_mtime_ns == written
    assert fake["classifier_accuracy"] == real["classifier_accuracy"]
    assert fake["inception_score"] < 1.5 < real["inception_score"]
    assert fake["fid"] > 10 * max(real["fid"], real["real_fid_ceiling"])


def test_inception_score_of_known_posteriors():
    confident = np.eye(10)[np.arange(100) % 10]  # every class, each predicted with certainty
    assert audio_inception_score(confident, splits=1) == pytest.approx((10.0, 0.0))
    assert audio_inception_score(np.full((50, 10), 0.1), splits=5)[0] == pytest.approx(1.0)
    probs = confident * 0.9 + 0.01
    assert audio_inception_score(np.log(probs), splits=1)[0] == pytest.approx(audio_inception_score(probs, 1)[0])


def test_sample_artifacts_roundtrip(tmp_path):
    clips = (np.random.default_rng(0).uniform(-1, 1, (5, 1, LENGTH)) * 0.5).astype(np.float32)
    paths = write_wavs(clips, tmp_path / "wavs", 16000)
    assert [p.name for p in paths] == [f"sample_{i:04d}.wav" for i in range(5)]
    with wave.open(str(paths[2])) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        back = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert np.abs(back / 32767 - clips[2, 0]).max() < 1e-4
    png = spectrogram_grid_png(clips, tmp_path / "grid.png", nrow=3)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 0


def test_disk_full_during_audio_prep_names_the_output_and_writes_nothing(tmp_path, small_tmpfs):
    from ganforge.fileio import StorageError

    clip = write_wav(tmp_path / "wavs" / "seven_000.wav", tone_burst(16000), 16000).read_bytes()
    for i in range(1, 140):  # 140 clips of 32 KiB as int16: more than the 4 MiB file system
        (tmp_path / "wavs" / f"seven_{i:03d}.wav").write_bytes(clip)
    with pytest.raises(StorageError, match=r"ds: No space left on device \(ENOSPC\).*Fix: free space") as err:
        prepare_audio(audio_cfg(tmp_path / "wavs"), small_tmpfs / "ds")
    assert "\n" not in str(err.value) and list(small_tmpfs.iterdir()) == []


def test_wav_folder_past_the_memory_budget_is_refused_before_reading(tmp_path, monkeypatch):
    for i in range(20):  # 20 clips: 2 × 32 KiB each (as fitted, then stacked) = 1.25 MiB
        (tmp_path / "wavs" / f"seven_{i:02d}.wav").parent.mkdir(exist_ok=True)
        (tmp_path / "wavs" / f"seven_{i:02d}.wav").write_bytes(b"not read: refused before")
    monkeypatch.setenv("GANFORGE_DATA_MEMORY_MIB", "1")
    with pytest.raises(DataError, match=r"reading 20 clips of .*wavs needs 1.2 MiB .*data\.limit=16"):
        prepare_audio(audio_cfg(tmp_path / "wavs"), tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
