"""The fast CPU path for Inception features: the same TorchScript network run by OpenVINO in fp32.

The TorchScript (``default_1.pt``, see ``ganforge.weights``) is converted once with
``openvino.convert_model`` and saved as OpenVINO IR in a directory next to the weights, named by
the weights' sha1 and the OpenVINO version, so a new weight file or a new OpenVINO rebuilds it
and the old conversion is removed. It is written atomically (a temporary directory renamed into
place) under a file lock, so worker processes converting at the same time build it once.

Chosen by measurement against the frozen, BN-folded, channels_last TorchScript in the same
process, alternating (benchmarks/bench_metrics.py, README "What evaluation costs"): ONNX Runtime
and OpenVINO both beat it on 2 AVX2 cores; OpenVINO with one single-threaded stream per core was
the faster. Precision is forced to f32 (OpenVINO may pick bf16 on CPUs that have it), so
features stay within ~1e-5 of the TorchScript reference.

``GANFORGE_INCEPTION_RUNTIME``: ``auto`` (default: OpenVINO when installed, else TorchScript
with one log line), ``openvino`` (required: an error if it cannot be used) or ``torchscript``
(the reference path).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from .errors import GanforgeError
from .fileio import atomic_dir
from .paths import cache_dir
from .weights import file_sha1, load_torchscript, torchscript_allowed

log = logging.getLogger(__name__)

RUNTIME_ENV = "GANFORGE_INCEPTION_RUNTIME"
RUNTIMES = ("auto", "openvino", "torchscript")
OPENVINO_REQUIREMENT = "openvino==2026.4.1"
MODEL_XML = "inception.xml"
MODEL_BIN = "inception.bin"
META_JSON = "meta.json"
INCEPTION_SIZE = 299


class InceptionRuntimeError(GanforgeError, RuntimeError):
    """The requested Inception runtime cannot be used; the message says why and what to do."""


def requested_runtime(runtime: str | None = None) -> str:
    """``runtime`` or ``$GANFORGE_INCEPTION_RUNTIME`` (default ``auto``), checked."""
    value = (runtime or os.environ.get(RUNTIME_ENV, "") or "auto").strip().lower()
    if value not in RUNTIMES:
        raise InceptionRuntimeError(f"{RUNTIME_ENV}={value!r} is not one of {', '.join(RUNTIMES)}")
    return value


def import_openvino():
    """The ``openvino`` module, or None when it cannot be imported.

    OpenVINO's converter (``convert_model``) sends usage telemetry to Google Analytics unless a
    consent file in ~ says no or CI=true (openvino_telemetry: no consent file counts as yes for
    it). ganforge never lets it: ``openvino_telemetry`` is made unimportable first, so the converter
    takes its own no-op stub (``openvino.tools.ovc.telemetry_stub``).
    """
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # `import` now raises ImportError
    elif sys.modules["openvino_telemetry"] is not None:  # imported before ganforge could block it
        sys.modules["openvino_telemetry"].Telemetry = _NoTelemetry
    try:
        import openvino
    except ImportError:
        return None
    return openvino


class _NoTelemetry:
    """Stands in for openvino_telemetry.Telemetry when that was imported before ganforge could block it."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def openvino_version(ov) -> str:
    """The installed OpenVINO's package version (``2026.4.1``), safe in a file name.

    ``openvino.__version__`` is a build string with slashes (``2026.4.1-22982-…-releases/2026/4``).
    """
    try:
        from importlib.metadata import version

        return version("openvino")
    except Exception:
        return re.sub(r"[^A-Za-z0-9.+-]", "_", ov.__version__)


@functools.lru_cache(maxsize=8)
def _sha1(path: str, size: int, mtime_ns: int) -> str:
    return file_sha1(Path(path))


def weights_sha1(path: Path) -> str:
    """sha1 of the weight file, hashed once per (path, size, mtime)."""
    st = os.stat(path)
    return _sha1(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def converted_dir(weights_path: Path, sha1: str, version: str) -> Path:
    """Where the IR of ``weights_path`` lives: beside it, or in the ganforge cache if that folder is read-only."""
    weights_path = Path(weights_path).resolve()
    base = weights_path.parent if os.access(weights_path.parent, os.W_OK) else cache_dir() / "inception"
    return base / f"{weights_path.stem}.{sha1[:16]}.openvino-{version}"


def _cached_ir_is_valid(directory: Path, sha1: str, version: str) -> bool:
    try:
        meta = json.loads((directory / META_JSON).read_text())
        return (
            meta.get("weights_sha1") == sha1
            and meta.get("openvino") == version
            and (directory / MODEL_XML).stat().st_size == meta["xml_bytes"]
            and (directory / MODEL_BIN).stat().st_size == meta["bin_bytes"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _remove_other_conversions(weights_path: Path, keep: Path) -> None:
    for old in keep.parent.glob(f"{Path(weights_path).stem}.*.openvino-*"):
        if old != keep and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def convert_to_openvino(weights_path: Path, directory: Path, sha1: str) -> None:
    """TorchScript → OpenVINO IR (fp32 weights) into ``directory``, atomically."""
    ov = import_openvino()
    with torchscript_allowed():
        model = ov.convert_model(
            load_torchscript(weights_path), example_input=torch.zeros(1, 3, INCEPTION_SIZE, INCEPTION_SIZE)
        )
    model.reshape({model.input(0): ov.PartialShape([-1, 3, INCEPTION_SIZE, INCEPTION_SIZE])})
    with atomic_dir(directory) as tmp:
        ov.save_model(model, str(tmp / MODEL_XML), compress_to_fp16=False)
        meta = {
            "weights": str(weights_path),
            "weights_sha1": sha1,
            "openvino": openvino_version(ov),
            "openvino_build": ov.__version__,
            "xml_bytes": (tmp / MODEL_XML).stat().st_size,
            "bin_bytes": (tmp / MODEL_BIN).stat().st_size,
            "precision": "f32",
        }
        (tmp / META_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        for name in (MODEL_XML, MODEL_BIN, META_JSON):
            os.chmod(tmp / name, 0o644)
        os.chmod(tmp, 0o755)


def openvino_ir(weights_path: Path) -> Path:
    """Directory of the up-to-date IR for ``weights_path``, converting it first if absent or stale."""
    from filelock import FileLock

    ov = import_openvino()
    if ov is None:
        raise InceptionRuntimeError(f"openvino is not installed: pip install {OPENVINO_REQUIREMENT}")
    sha1, version = weights_sha1(weights_path), openvino_version(ov)
    directory = converted_dir(weights_path, sha1, version)
    if _cached_ir_is_valid(directory, sha1, version):
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory) + ".lock"):
        if not _cached_ir_is_valid(directory, sha1, version):
            log.info(
                "converting %s to OpenVINO IR in %s (once per weights and OpenVINO version)", weights_path, directory
            )
            convert_to_openvino(weights_path, directory, sha1)
            _remove_other_conversions(weights_path, directory)
    return directory


class OpenVINOInception:
    """Compiled IR on CPU: one single-threaded stream per thread, fp32, denormals as zero, no pinning.

    ``threads`` is the process's CPU budget (``torch.get_num_threads()``, 1 in eval worker
    processes), so workers × threads stays within the cores. A batch is split across the
    streams and run concurrently; the output is float32 N×2048 in input order.
    """

    def __init__(self, ir_dir: Path, threads: int) -> None:
        ov = import_openvino()
        self.threads = max(1, int(threads))
        self.version = openvino_version(ov)
        # Denormals flushed to zero: ~1.14x here, features unchanged (< 1e-4, tested). No pinning:
        # single-threaded worker processes would each pin their stream to the same first core.
        config = {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": self.threads,
            "NUM_STREAMS": self.threads,
            "ENABLE_CPU_PINNING": False,
            "CPU_DENORMALS_OPTIMIZATION": True,
        }
        self.compiled = ov.Core().compile_model(str(ir_dir / MODEL_XML), "CPU", config)
        precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        if "32" not in precision:
            raise InceptionRuntimeError(f"OpenVINO compiled the Inception at {precision}, not f32")
        self.queue = ov.AsyncInferQueue(self.compiled, self.threads)
        self._outputs: dict[int, np.ndarray] = {}
        self.queue.set_callback(self._done)

    def _done(self, request, index: int) -> None:
        self._outputs[index] = request.get_output_tensor(0).data.copy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """float32 N×3×299×299 (C-contiguous, (u8-128)/128) → float32 N×2048."""
        chunks = np.array_split(np.ascontiguousarray(x, dtype=np.float32), min(self.threads, len(x)))
        self._outputs = {}
        for i, chunk in enumerate(chunks):
            self.queue.start_async({0: chunk}, i)
        self.queue.wait_all()
        return np.concatenate([self._outputs[i] for i in range(len(chunks))])


_warned_fallback = False


def fast_inception(weights_path: Path, runtime: str, threads: int) -> OpenVINOInception | None:
    """The OpenVINO path for ``runtime`` ``auto``/``openvino``; None means: use the TorchScript.

    ``auto`` falls back to TorchScript with one log line per process when OpenVINO is missing
    or fails; ``openvino`` raises instead.
    """
    global _warned_fallback
    if runtime == "torchscript":
        return None
    try:
        return OpenVINOInception(openvino_ir(Path(weights_path)), threads)
    except Exception as e:
        if runtime == "openvino":
            raise InceptionRuntimeError(f"{RUNTIME_ENV}=openvino but OpenVINO cannot run the Inception: {e}") from e
        if not _warned_fallback:
            _warned_fallback = True
            log.warning("Inception features on the TorchScript reference path (slower on CPU): %s", e)
        return None
