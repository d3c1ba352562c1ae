"""Every tensor the models, the training step and the feature path create follows its input's device and dtype.

No GPU here, so the CUDA device is faked: under torch's FakeTensorMode tensors on ``cuda`` carry only shape,
dtype and device, and an op that mixes a ``cuda`` tensor with a ``cpu`` one raises, as it does on a real GPU
("found at least two devices, cpu and cuda:0"). Building each preset's networks and running its training step
there catches a tensor left on the CPU (a cached constant, a mask, a label, a buffer) without a GPU. The
CUDA-only branches run too (``torch.Tensor.is_cuda`` is true: StyleGAN's grouped modulated convolution).

The dtype half: a few real training steps per preset under bf16 autocast on the CPU (``train.amp=bf16``, a
GPU option), so a float32 buffer mixed with a bf16 activation fails here as it would on the GPU.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ganforge.config import PRESETS, build_config
from ganforge.models import build_models

CUDA = torch.device("cuda")


@pytest.fixture
def fake_cuda(monkeypatch):
    """A FakeTensorMode to enter around device work; CPU tensors made outside it may appear inside (and stay
    on the CPU). Host-side draws (the seeded CPU generators of noise, labels and style mixing) run outside it:
    inside, every tensor is fake, and ``.item()`` has no value to read.

    Autograd's engine needs a real CUDA context to run a backward pass on ``cuda`` tensors, so while the test
    runs ``backward`` is a no-op and ``autograd.grad`` returns zeros on each input's device: the forward passes,
    the losses and the penalties' own tensors run on the fake device; the gradients themselves are torch's.
    ``pin_memory`` is the identity (the fake mode has no implementation of it)."""
    monkeypatch.setattr(torch.autograd, "backward", lambda *a, **k: None)

    def zero_grads(outputs, inputs, **kwargs):
        return tuple(torch.zeros_like(i) for i in ((inputs,) if isinstance(inputs, torch.Tensor) else inputs))

    monkeypatch.setattr(torch.autograd, "grad", zero_grads)
    # pinning host memory (before a copy to the GPU) has no fake implementation; it changes no device
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *args, **kwargs: self)
    # Cached constants (the Inception resize matrices) are made afresh inside the fake mode and dropped after:
    # a real one cached by an earlier test would be copied to the fake device for real (no CUDA here), and a
    # fake one left in the cache would reach later tests.
    from ganforge.metrics import tf1_resize_matrix

    tf1_resize_matrix.cache_clear()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
        yield FakeTensorMode(allow_non_fake_inputs=True)
    tf1_resize_matrix.cache_clear()


def test_fake_cuda_refuses_a_cpu_tensor_beside_a_cuda_one(fake_cuda):
    """The premise of this module: mixing devices raises under the fake mode (it does not on ``meta``)."""
    cpu = torch.ones(3, 3)
    with fake_cuda, pytest.raises(Exception, match="two devices, cpu and cuda"):
        cpu @ torch.empty(2, 3, device=CUDA).T


def test_feature_path_preprocessing_follows_the_batch_device(fake_cuda):
    """Grey N×1×H×W batches (what Fashion-MNIST gives); the 3-channel path first compares channel values,
    which fake tensors do not hold."""
    from ganforge.metrics import INCEPTION_SIZE, uint8_to_inception_input

    with fake_cuda:
        out = uint8_to_inception_input(torch.empty(2, 1, 28, 28, dtype=torch.uint8, device=CUDA))
    assert out.device.type == "cuda" and out.dtype == torch.float32
    assert tuple(out.shape) == (2, 3, INCEPTION_SIZE, INCEPTION_SIZE)


def _one_step(
    preset: str, device: torch.device, mode=None, sets: tuple[str, ...] = (), compile_: str | None = None
) -> dict:
    """One D and one G step of ``preset`` (tiny profile, batch 4) as the training loop runs it, the device work
    on ``device`` (under ``mode`` when given); then an EMA update and a sample from the EMA generator in eval
    mode. stylegan: with R1 and style mixing on this step, so their branches run too."""
    from ganforge import train as T

    extra = ["train.r1_interval=1", "train.style_mixing=1"] if preset == "stylegan" else []
    cfg = build_config(preset, "tiny", ["train.batch_size=4", *extra, *sets])
    dist_info = T.DistInfo(device=device)
    torch.manual_seed(0)
    G, D = build_models(cfg.model, cfg.data)
    audio = cfg.data.kind == "audio"
    shape = (cfg.data.audio_length,) if audio else (cfg.data.resolution, cfg.data.resolution)
    real_u8 = torch.randint(0, 255, (4, cfg.data.channels, *shape)).to(torch.int16 if audio else torch.uint8)
    z = T.global_noise(cfg, 0, 0, dist_info)
    mixing = T.style_mixing(cfg, 0, 0, dist_info, getattr(G, "num_ws", 0))
    labels = {} if not cfg.model.num_classes else {"y_real": torch.arange(4) % cfg.model.num_classes}
    if labels:
        labels["y_fake"] = T.global_labels(cfg, 0, 0, dist_info)
    with mode or contextlib.nullcontext():
        G, D = G.to(device), D.to(device)
        G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        opt_g, opt_d = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
        ctx = T._Context(cfg, dist_info)
        G_train, D_train = (
            (torch.compile(G, backend=compile_), torch.compile(D, backend=compile_)) if compile_ else (G, D)
        )
        real, z = ctx.prepare(T.to_float(real_u8)), ctx.prepare(z)
        cond = {k: v.to(device) for k, v in labels.items()}
        mixing = T._on_device(mixing, ctx)
        m = T.d_step(G_train, D_train, opt_d, real, z, ctx, **cond, apply_r1=cfg.train.r1_gamma > 0, g_kwargs=mixing)
        y = () if not cond else (cond["y_fake"],)
        m.update(T.g_step(G_train, D_train, opt_g, z, ctx, *y, g_kwargs=mixing))
        T.update_ema(G_ema, G, cfg.train.ema_decay, 0)
        with ctx.autocast():
            sample = G_ema(z, *y)
    return {"metrics": m, "sample": sample, "state": [*G.parameters(), *D.parameters(), *G.buffers(), *D.buffers()]}


@pytest.mark.parametrize("preset", [p for p in sorted(PRESETS) if p != "cyclegan" and not p.startswith("pix2pix")])
def test_training_step_stays_on_the_device(fake_cuda, preset):
    got = _one_step(preset, CUDA, fake_cuda)
    assert {v.device.type for v in got["metrics"].values()} == {"cuda"}
    assert got["sample"].device.type == "cuda"
    assert {t.device.type for t in got["state"]} == {"cuda"}


# Every preset, not one per network architecture: dcgan, sngan and wgan-gp share the DCGAN networks but differ
# in D's norm (batch, spectral: power-iteration buffers, layer) and loss (bce, hinge, wgan-gp: a double backward
# through the penalty), which autocast and dynamo trace differently.
# pix2pix (fp32, its own steps: ganforge.pix2pix) is stepped in test_pix2pix.
STEP_PRESETS = [p for p in sorted(PRESETS) if not p.startswith("pix2pix")]


def _cycle_step(sets: tuple[str, ...] = (), compile_: str | None = None) -> dict:
    """One cyclegan step as its recipe runs it (G step, pools, D step) on the CPU, the networks compiled with
    ``compile_`` when given."""
    from types import SimpleNamespace

    from ganforge import cyclegan as C
    from ganforge.training.dist import DistInfo
    from ganforge.training.state import StepContext

    cfg = build_config("cyclegan", "tiny", ["train.batch_size=4", *sets])
    m, opt_g, opt_d = C.build_cycle_state(cfg)
    nets = SimpleNamespace(
        **{k: torch.compile(getattr(m, k), backend=compile_) if compile_ else getattr(m, k) for k in C.NETWORKS}
    )
    ctx = StepContext(cfg, DistInfo())
    g = torch.Generator().manual_seed(0)
    a, b = (torch.rand(4, 1, 28, 28, generator=g) * 2 - 1 for _ in range(2))
    losses, fake_a, fake_b = C.g_step(nets, opt_g, a, b, cfg, ctx)
    losses.update(C.d_step(nets, opt_d, a, b, fake_a, fake_b, ctx))
    with ctx.autocast():
        sample = m.G_ab_ema(a)
    return {"metrics": losses, "sample": sample, "state": [*m.parameters(), *m.buffers()]}


def _step(preset: str, sets: tuple[str, ...] = (), compile_: str | None = None) -> dict:
    if preset == "cyclegan":
        return _cycle_step(sets, compile_)
    return _one_step(preset, torch.device("cpu"), sets=sets, compile_=compile_)


@pytest.mark.parametrize("preset", STEP_PRESETS)
def test_training_step_under_bf16_autocast(preset):
    """``train.amp=bf16`` on the CPU: finite losses, float32 state after the step."""
    got = _step(preset, sets=("train.amp=bf16",))
    assert all(torch.isfinite(v) for v in got["metrics"].values()), got["metrics"]
    assert {t.dtype for t in got["state"] if t.is_floating_point()} == {torch.float32}
    assert torch.isfinite(got["sample"]).all()


def test_stylegan_truncation_under_bf16_autocast():
    """Truncation pulls a bf16 w (autocast) towards the float32 ``w_avg``."""
    cfg = build_config("stylegan", "tiny")
    G, _ = build_models(cfg.model, cfg.data)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = G.eval()(torch.randn(2, cfg.model.nz), truncation_psi=0.7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("preset", STEP_PRESETS)
def test_training_step_under_torch_compile(preset):
    """``train.compile`` for every preset: one D and one G step through torch.compile'd G and D.

    The ``aot_eager`` backend: dynamo's capture and AOTAutograd's forward/backward graphs (where graph
    breaks, a double backward and dtype/device mistakes in tracing show), without Inductor's C++ code
    generation, which costs ~1-2 min per preset on 2 cores (dcgan 138 s, gan 67 s; aot_eager: 13 s, 6 s).
    Inductor's own CUDA kernels, where the GPU's compile failure came from, need a GPU (``make gpu-check``)."""
    got = _step(preset, compile_="aot_eager")
    assert all(torch.isfinite(v) for v in got["metrics"].values()), got["metrics"]


def test_generation_and_translation_take_host_inputs_to_the_model_device(fake_cuda):
    """generate/translate draw latents and read images on the host; the model may sit on ``cuda``."""
    import numpy as np

    from ganforge.generate import mixing_table
    from ganforge.train import generate
    from ganforge.translate import translate_batch

    cfg = build_config("stylegan", "tiny")
    G, _ = build_models(cfg.model, cfg.data)
    z = torch.randn(3, cfg.model.nz)
    cyc = build_config("cyclegan", "tiny")
    T_ab, _ = build_models(cyc.model, cyc.data)
    images = np.zeros((2, cyc.data.channels, cyc.data.resolution, cyc.data.resolution), np.uint8)
    with fake_cuda:
        G, T_ab = G.to(CUDA).eval(), T_ab.to(CUDA).eval()
        outputs = [generate(G, z), mixing_table(G, z[:2], z[2:], "coarse", 0.7), translate_batch(T_ab, images)]
    assert [o.device.type for o in outputs] == ["cpu"] * 3


def test_cyclegan_step_stays_on_the_device(fake_cuda):
    """cyclegan's own step: both generators, both discriminators, the image pools (identity loss off:
    its zero term too)."""
    from ganforge import cyclegan as C

    cfg = build_config("cyclegan", "tiny", ["train.identity_weight=0"])
    side = cfg.data.resolution
    a_u8 = torch.zeros(cfg.train.batch_size, cfg.data.channels, side, side, dtype=torch.uint8)
    m = C.CycleModels(cfg)
    with fake_cuda:
        m = m.to(CUDA)
        opt_g = torch.optim.Adam([*m.G_ab.parameters(), *m.G_ba.parameters()])
        opt_d = torch.optim.Adam([*m.D_a.parameters(), *m.D_b.parameters()])
        a = C.to_float(a_u8).to(CUDA)
        losses, fake_a, fake_b = C.g_step(m, opt_g, a, a, cfg)
        pools = [C.ImagePool(cfg.train.pool_size), C.ImagePool(cfg.train.pool_size)]
        pooled = [pools[0].query(fake_a, torch.Generator()), pools[1].query(fake_b, torch.Generator())]
        losses.update(C.d_step(m, opt_d, a, a, *pooled))
        state = pools[0].state(tuple(a.shape[1:]))
    assert {v.device.type for v in losses.values()} == {"cuda"}
    assert state.device.type == "cpu"  # what the checkpoint holds
    assert {p.device.type for p in m.parameters()} == {"cuda"}
