"""The Inception feature extractor behind FID/KID: TF1-bilinear resize to 299², NVIDIA's TF-2015
FID Inception as TorchScript (frozen, conv+BN folded; OpenVINO on CPU when allowed), registered
with torch-fidelity, and one cached extractor per choice, device and runtime."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from . import inception_runtime
from .errors import GanforgeError
from .weights import EXTRACTOR_TORCHSCRIPT, InceptionChoice, load_torchscript, torchscript_allowed

FEATURE_LAYER = "2048"
FEATURE_DIM = 2048
INCEPTION_SIZE = 299
RESIZE_FILTER = "tf1-bilinear"


class MetricsError(GanforgeError, ValueError):
    """Inputs to FID/KID are unusable; the message names the problem and the fix."""


@functools.lru_cache(maxsize=8)
def tf1_resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """torch-fidelity's TF1 bilinear resize of one axis as a size_out × size_in matrix.

    The resize is linear and separable, so resizing the identity gives its weights, and an image
    resizes as ``rows @ image @ cols.T``: two small matrix products, much cheaper than
    torch-fidelity's gathers and equal to them within float rounding (~1e-4 grey levels;
    tests/test_inception_runtime.py).
    """
    eye = torch.eye(size_in).reshape(size_in, 1, size_in, 1)
    resized = interpolate_bilinear_2d_like_tensorflow1x(eye, size=(size_out, 1), align_corners=False)
    return resized[:, 0, :, 0].T.contiguous()


def uint8_to_inception_input(x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """uint8 N×C×H×W (C = 1 or 3) → float N×3×299×299 in (u8-128)/128, channels_last unless told not.

    TF1 bilinear resize (``tf1_resize_matrix``); three equal channels (grey replicated, as
    ``UInt8Images`` yields) are resized once. channels_last because oneDNN's convolutions run
    faster in NHWC on CPU (FACTS.md); OpenVINO takes plain NCHW and picks its own
    blocked layout.
    """
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise MetricsError(f"expected uint8 N×C×H×W images with C in (1, 3), got {x.dtype} {list(x.shape)}")
    if x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2]):
        x = x[:, :1]
    # the cached matrices live on the CPU; each batch takes them to its own device
    rows = tf1_resize_matrix(x.shape[2], INCEPTION_SIZE).to(x.device)
    cols = tf1_resize_matrix(x.shape[3], INCEPTION_SIZE).to(x.device)
    x = (rows @ x.float() @ cols.T - 128) / 128
    x = x.expand(-1, 3, -1, -1)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def fold_batchnorm_into_convs(frozen: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """Fold each conv's BatchNorm into its weights, in place.

    Every conv in the TorchScript casts its weight to the input's dtype (``weight.to(x.dtype)``),
    which hides the constant weight from the frozen-graph conv–BN folding pass. We only ever feed
    float32 and the weights are float32, so the cast is the identity and can go.
    """
    graph = frozen.graph
    for node in list(graph.nodes()):
        weight = node.inputsAt(0) if node.kind() == "aten::to" else None
        if weight is not None and weight.node().kind() == "prim::Constant" and weight.type().dtype() == torch.float32:
            node.output().replaceAllUsesWith(weight)
            node.destroy()
    torch._C._jit_pass_dce(graph)
    torch._C._jit_pass_optimize_frozen_graph(graph, True)
    return frozen


def torchscript_to_inference_module(
    module: torch.jit.ScriptModule, fold_batchnorm: bool = True
) -> torch.jit.ScriptModule:
    """Freeze the TorchScript (weights become constants) and optionally fold conv+BN."""
    with torchscript_allowed():
        frozen = torch.jit.freeze(module.eval())
    return fold_batchnorm_into_convs(frozen) if fold_batchnorm else frozen


class InceptionTorchScriptExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor around NVIDIA's TF-2015 FID Inception TorchScript.

    Takes uint8 N×C×H×W (C = 1 is replicated to RGB), returns ``(features N×2048 float32,)``.
    On CPU the same network runs in OpenVINO fp32 when ``runtime`` (default
    ``$GANFORGE_INCEPTION_RUNTIME``, ``auto``) allows it (``ganforge.inception_runtime``);
    ``runtime="torchscript"`` is the reference path. There the network is frozen and conv+BN
    folded on the first call per device, so torch-fidelity's ``.cuda()`` still moves the weights
    before freezing.
    """

    def __init__(
        self,
        name: str,
        features_list: list[str],
        feature_extractor_weights_path: str | None = None,
        fold_batchnorm: bool = True,
        runtime: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise MetricsError(
                f"{name} needs feature_extractor_weights_path: pass ganforge.weights.inception_weights_path()"
            )
        self.weights_path = Path(feature_extractor_weights_path)
        self.net = load_torchscript(feature_extractor_weights_path)
        self.fold_batchnorm = fold_batchnorm
        self.runtime = inception_runtime.requested_runtime(runtime)
        self._inference_nets: dict[str, torch.jit.ScriptModule] = {}
        self._fast_nets: dict[str, inception_runtime.OpenVINOInception | None] = {}

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return (FEATURE_LAYER,)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        if metric not in ("fid", "kid", "prc"):
            raise MetricsError(f"the TorchScript Inception has no logits, so it cannot compute {metric!r}")
        return FEATURE_LAYER

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, INCEPTION_SIZE, INCEPTION_SIZE, dtype=torch.uint8)

    def inference_net(self, device: torch.device) -> torch.jit.ScriptModule:
        key = str(device)
        if key not in self._inference_nets:
            self._inference_nets[key] = torchscript_to_inference_module(self.net, self.fold_batchnorm)
        return self._inference_nets[key]

    def fast_net(self, device: torch.device) -> inception_runtime.OpenVINOInception | None:
        """The OpenVINO network for CPU input (built once), or None: use the TorchScript."""
        if device.type != "cpu":
            return None
        key = str(device)
        if key not in self._fast_nets:
            self._fast_nets[key] = inception_runtime.fast_inception(
                self.weights_path, self.runtime, torch.get_num_threads()
            )
        return self._fast_nets[key]

    def runtime_name(self, device: torch.device | str = "cpu") -> str:
        """``openvino-<version>`` or ``torchscript``: what computes features on ``device``."""
        fast = self.fast_net(torch.device(device))
        return f"openvino-{fast.version}" if fast is not None else "torchscript"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        with torch.inference_mode(), exact_fp32():
            fast = self.fast_net(x.device)
            if fast is not None:
                return (torch.from_numpy(fast(uint8_to_inception_input(x, channels_last=False).numpy())),)
            return (self.inference_net(x.device)(uint8_to_inception_input(x)),)


if EXTRACTOR_TORCHSCRIPT not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(EXTRACTOR_TORCHSCRIPT, InceptionTorchScriptExtractor)


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """Disable TF32 convolutions on GPU for the block: they move Inception features by ~1e-3."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def feature_extractor(choice: InceptionChoice, device: str, runtime: str | None = None) -> FeatureExtractorBase:
    """The torch-fidelity extractor for ``choice``, built once per process (loading takes seconds).

    ``runtime`` (default ``$GANFORGE_INCEPTION_RUNTIME``): ``auto``, ``openvino`` or
    ``torchscript``; it applies to the offline TorchScript extractor only.
    """
    runtime = inception_runtime.requested_runtime(runtime) if choice.extractor == EXTRACTOR_TORCHSCRIPT else None
    return _feature_extractor(choice, device, runtime)


@functools.lru_cache(maxsize=8)
def _feature_extractor(choice: InceptionChoice, device: str, runtime: str | None) -> FeatureExtractorBase:
    extra = {"runtime": runtime} if runtime is not None else {}
    return create_feature_extractor(
        choice.extractor,
        [FEATURE_LAYER],
        cuda=device == "cuda",
        verbose=False,
        feature_extractor_weights_path=str(choice.path),
        **extra,
    )
