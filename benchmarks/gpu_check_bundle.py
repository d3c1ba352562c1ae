"""The carry bundle of gpu_check: the Inception TorchScript, torch_fidelity and the Fashion-MNIST IDX
files in folders of at most 60 MiB (``make gpu-bundle``), joined again with ``--bundle``."""

from __future__ import annotations

import shutil
from pathlib import Path

BUNDLE_PART_BYTES = 60 * 2**20


IDX_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


TRAIN_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")


def make_bundle(out: Path, weights: Path, idx: Path) -> list[Path]:
    """What a GPU machine without network needs, in folders of ≤ 60 MiB each (one folder per carry):
    1/ the Inception TorchScript's first half and torch_fidelity (pure Python), 2/ the Fashion-MNIST train IDX
    files, 3/ the TorchScript's second half and the test IDX files. ``--bundle`` joins them again."""
    import torch_fidelity

    shutil.rmtree(out, ignore_errors=True)
    dirs = [out / str(i) for i in (1, 2, 3)]
    for d in dirs:
        d.mkdir(parents=True)
    blob = weights.read_bytes()
    half = len(blob) // 2 + 1
    (dirs[0] / "inception.part1").write_bytes(blob[:half])
    (dirs[2] / "inception.part2").write_bytes(blob[half:])
    shutil.copytree(Path(torch_fidelity.__file__).parent, dirs[0] / "pylib" / "torch_fidelity")
    for name in TRAIN_IDX_FILES:
        shutil.copy(idx / name, dirs[1] / name)
    for name in IDX_FILES:
        shutil.copy(idx / name, dirs[2] / name)
    import hashlib

    (dirs[2] / "inception.sha1").write_text(hashlib.sha1(blob).hexdigest() + "\n")
    for d in dirs:
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        if size > BUNDLE_PART_BYTES:
            raise SystemExit(f"gpu-check: {d} holds {size / 2**20:.1f} MiB, more than one carry allows (60 MiB)")
    return dirs


def join_bundle(dirs: list[Path], work: Path) -> tuple[Path, Path, Path | None]:
    """(Inception TorchScript, IDX folder, pylib folder or None) from the folders ``make_bundle`` wrote."""
    import hashlib

    def find(name: str) -> Path | None:
        return next((d / name for d in dirs if (d / name).exists()), None)

    parts = [find("inception.part1"), find("inception.part2")]
    if None in parts:
        raise SystemExit(f"gpu-check: --bundle {' '.join(map(str, dirs))} lacks inception.part1 or .part2")
    weights = work / "inception" / "default_1.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    blob = parts[0].read_bytes() + parts[1].read_bytes()
    sha = find("inception.sha1")
    if sha is not None and hashlib.sha1(blob).hexdigest() != sha.read_text().strip():
        raise SystemExit("gpu-check: the joined Inception file's sha1 differs from inception.sha1; carry it again")
    weights.write_bytes(blob)
    idx = work / "fashion-mnist"
    idx.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES + TRAIN_IDX_FILES:
        if (src := find(name)) is not None:
            shutil.copy(src, idx / name)
    pylib = find("pylib")
    return weights, idx, pylib
