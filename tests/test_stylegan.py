"""The stylegan preset: model properties, lazy R1, style mixing, resume, truncation and mixing in
`ganforge generate`. One tiny real run on Fashion-MNIST (8 steps) serves the training-level tests."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ganforge import cli
from ganforge.checkpoint import read_checkpoint, write_snapshot
from ganforge.config import ConfigError, build_config
from ganforge.generate import GenerationError, generate_to_dir, seeded_latents, to_uint8_images
from ganforge.models import build_models
from ganforge.models.stylegan import ModulatedConv, modulated_conv2d, style_mixing_images
from ganforge.train import DistInfo, style_mixing, train

R1_INTERVAL = 3


def _cfg(**train):
    return build_config("stylegan", "tiny", {"train": {"log_every": 1, "r1_interval": R1_INTERVAL, **train}})


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread for this module: on the shared 2-core machine two threads contend with the other
    jobs (the 8-step run took 3× longer at two), and training at one thread is what the quality runs do."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run(fashion_train, tmp_path_factory):
    """8 uninterrupted tiny steps, every step's metrics recorded."""
    out = tmp_path_factory.mktemp("stylegan") / "full"
    seen: dict[int, dict] = {}
    result = train(_cfg(), fashion_train, out, on_metrics=lambda step, m: seen.__setitem__(step, m))
    return result, seen


def test_shapes_and_style_layers_at_28_and_32_px():
    for resolution, sides in ((28, [7, 14, 14, 28, 28, 28]), (32, [4, 8, 8, 16, 16, 32, 32, 32])):
        cfg = build_config("stylegan", "tiny", {"data": {"resolution": resolution}})
        G, D = build_models(cfg.model, cfg.data)
        x = G(torch.randn(3, cfg.model.nz))
        assert x.shape == (3, 1, resolution, resolution) and x.abs().max() <= 1
        assert D(x).shape == (3,)
        assert G.num_ws == len(sides) and G.style_layer_sides == sides
        groups = [list(G.layer_group(g)) for g in ("coarse", "middle", "fine")]
        assert sum(groups, []) == list(range(G.num_ws)), groups  # the groups split the layers, in order
    with pytest.raises(ConfigError, match="data.resolution for stylegan"):
        build_config("stylegan", "tiny", {"data": {"resolution": 64}})
    with pytest.raises(ConfigError, match="train.style_mixing=0.9 needs model.arch='stylegan'"):
        build_config("dcgan", "tiny", {"train": {"style_mixing": 0.9}})


def test_demodulation_gives_unit_std_per_output_channel():
    torch.manual_seed(0)
    layer = ModulatedConv(32, 16, w_dim=8, kernel=3, side=64)
    x = torch.randn(16, 32, 64, 64)
    styles = torch.randn(16, 32).mul(1.5).exp()  # scales from ~0.05 to ~20: demodulation must undo them
    with torch.no_grad():
        out = layer.modulated(x, styles)
        grouped = modulated_conv2d(x, layer.weight, styles, demodulate=True, grouped=True)
    std = out.transpose(0, 1).flatten(1).std(dim=1)
    assert std.shape == (16,) and ((std > 0.9) & (std < 1.05)).all(), std  # padding zeros lower the border a bit
    assert torch.allclose(out, grouped, atol=1e-4)  # the paper's grouped conv computes the same


def test_lazy_r1_only_on_interval_steps(run):
    result, seen = run
    assert sorted(seen) == list(range(1, 9)) and all("r1" in m for m in seen.values())
    # logged every step, the latest value: a new one exactly after D steps 0, 3, 6
    new_r1 = [step for step in seen if step == 1 or seen[step]["r1"] != seen[step - 1]["r1"]]
    assert new_r1 == [1 + k for k in range(0, 8, R1_INTERVAL)] == [1, 4, 7]
    assert all(seen[s]["r1"] > 0 for s in new_r1)


def test_style_mixing_is_a_function_of_seed_and_step():
    cfg, rank = _cfg(batch_size=8), DistInfo()
    plans = [style_mixing(cfg, step, 0, rank, num_ws=6) for step in range(300)]
    again = style_mixing(cfg, 17, 0, rank, num_ws=6)
    assert again.keys() == plans[17].keys() and all(
        torch.equal(torch.as_tensor(again[k]), torch.as_tensor(v)) for k, v in plans[17].items()
    )
    mixed = [p for p in plans if p]
    assert 0.84 < len(mixed) / len(plans) < 0.96  # probability 0.9
    assert {p["mix_cutoff"] for p in mixed} == set(range(1, 6))
    assert not torch.equal(mixed[0]["mix_z"], mixed[1]["mix_z"]) and mixed[0]["mix_z"].shape == (8, cfg.model.nz)
    two_ranks = [style_mixing(cfg, 17, 0, DistInfo(rank=r, world_size=2), num_ws=6) for r in (0, 1)]
    if plans[17]:
        assert torch.equal(torch.cat([p["mix_z"] for p in two_ranks]), plans[17]["mix_z"])
    assert style_mixing(_cfg(style_mixing=0.0), 17, 0, rank, num_ws=6) == {}


def test_resume_equals_an_uninterrupted_run_bitwise(run, fashion_train, tmp_path):
    result, _ = run
    cfg = _cfg()
    assert any(style_mixing(cfg, step, k, DistInfo(), 6) for step in range(4, 8) for k in (0, 1))
    half = train(_cfg(max_steps=4), fashion_train, tmp_path)
    assert half.step == 4
    resumed = train(cfg, fashion_train, tmp_path, resume=True)
    a, b = read_checkpoint(result.checkpoint), read_checkpoint(resumed.checkpoint)
    assert b["step"] == 8
    for key in ("G", "G_ema", "D"):
        assert _state_equal(a[key], b[key]), key
    assert a["G_ema"]["mapping.w_avg"].abs().sum() > 0  # w's mean is tracked (for truncation)


def _activations(G, ws: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    seen: list[torch.Tensor] = []
    hooks = [conv.register_forward_hook(lambda m, i, o: seen.append(o)) for conv in G.convs]
    try:
        with torch.no_grad():
            image = G.synthesis(ws)
    finally:
        for h in hooks:
            h.remove()
    return image, seen


def test_mixing_fine_styles_changes_the_image_but_not_the_coarse_layers():
    torch.manual_seed(0)
    cfg = build_config("stylegan", "tiny")
    G = build_models(cfg.model, cfg.data)[0].eval()
    z_a, z_b = torch.randn(2, cfg.model.nz), torch.randn(2, cfg.model.nz)
    with torch.no_grad():
        w_a, w_b = G.mapping(z_a), G.mapping(z_b)
    ws_a = w_a[:, None].repeat(1, G.num_ws, 1)
    for group, unchanged in (("fine", 3), ("coarse", 0)):  # convs before the group's first layer keep A's output
        layers = G.layer_group(group)
        ws_mix = ws_a.clone()
        ws_mix[:, layers.start : layers.stop] = w_b[:, None]
        image_a, acts_a = _activations(G, ws_a)
        image_mix, acts_mix = _activations(G, ws_mix)
        assert not torch.allclose(image_a, image_mix, atol=1e-4), group
        assert all(torch.equal(a, m) for a, m in zip(acts_a[:unchanged], acts_mix[:unchanged])), group
        assert not torch.equal(acts_a[unchanged], acts_mix[unchanged]), group
        # the generation table computes the same cell
        table = style_mixing_images(G, z_a, z_b, group).view(2, 2, *image_a.shape[1:])
        assert torch.allclose(table[0, 0], image_mix[0], atol=1e-5) and torch.allclose(
            table[1, 1], image_mix[1], atol=1e-5
        )
    # training's mixing (crossover index) is the same styles built inside forward
    ws_cut = torch.cat([ws_a[:, :2], w_b[:, None].expand(-1, G.num_ws - 2, -1)], dim=1)
    with torch.no_grad():
        assert torch.equal(G(z_a, mix_z=z_b, mix_cutoff=2), G.synthesis(ws_cut))


def test_truncation_pulls_every_sample_to_the_mean(run):
    result, _ = run
    G = result.models["G_ema"].eval()
    z = torch.randn(4, G.nz)
    with torch.no_grad():
        mean_images = G(z, truncation_psi=0.0)
        assert torch.allclose(mean_images, mean_images[:1].expand_as(mean_images))
        assert torch.equal(G(z, truncation_psi=1.0), G(z))
        half = G(z, truncation_psi=0.5)
    spread = lambda x: (x - x.mean(0)).abs().mean()  # noqa: E731
    assert 0 < spread(half) < spread(G(z))


def test_generate_writes_truncated_samples_and_the_mixing_table(run, tmp_path):
    result, _ = run
    written = generate_to_dir(
        str(result.checkpoint), tmp_path / "out", n=5, seed=3, truncation=0.7, mix_seed=9, mix_layers="fine"
    )
    manifest = json.loads(written["manifest"].read_text())
    assert manifest["truncation"] == 0.7 and manifest["mix_seed"] == 9 and manifest["mix_layers"] == "fine"
    assert manifest["mix_seeds"] == 5 and "mixing.png" in manifest["files"]
    assert Image.open(written["mixing"]).size == (2 + 6 * 30, 2 + 6 * 30)  # (5 + 1)² tiles of 28 px + gutters
    G = result.models["G_ema"].eval()
    z_a, z_b = seeded_latents(5, G.nz, 3), seeded_latents(5, G.nz, 9)
    with torch.no_grad():
        expected = style_mixing_images(G, z_a, z_b, "fine", 0.7)
    image = torch.from_numpy(np.array(Image.open(written["mixing"])))
    top = left = 2 + 2 * 30  # table row 2 is A_1 (row 0: the B header), column 2 is B_1 (column 0: the A header)
    cell = image[top : top + 28, left : left + 28]
    assert torch.equal(cell, to_uint8_images(expected[1 * 5 + 1])[0])
    plain = generate_to_dir(str(result.checkpoint), tmp_path / "plain", n=5, seed=3)
    assert "truncation" not in json.loads(plain["manifest"].read_text())
    assert Image.open(plain["grid"]).tobytes() != Image.open(written["grid"]).tobytes()


def test_generate_refuses_style_options_without_a_mapping_network(tmp_path, capsys):
    cfg = build_config("dcgan", "tiny")
    write_snapshot(tmp_path, G_ema=build_models(cfg.model, cfg.data)[0], step=1, epoch=1, cfg=cfg)
    snapshot = str(tmp_path / "snapshots" / "epoch_001.pt")
    for argv, message in (
        (["--model", snapshot, "--truncation", "0.5"], "has no mapping network: --truncation and --mix-seed need"),
        (["--model", snapshot, "--mix-seed", "1"], "has no mapping network"),
        (["--model", snapshot, "--truncation", "1.5"], "ψ must be in [0, 1]"),
    ):
        capsys.readouterr()
        status = cli.main(["generate", *argv, "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1 and message in err[0], err
    with pytest.raises(GenerationError, match="--mix-layers 'top'"):
        generate_to_dir(snapshot, tmp_path / "out", mix_seed=1, mix_layers="top")


def test_lazy_r1_weight_is_gamma_over_two_times_the_interval():
    """D's gradient with R1 minus without it is linear in the weight: interval 4 gives 4× interval 1's."""
    from ganforge.train import _Context, d_step

    torch.manual_seed(0)
    base = build_config("stylegan", "tiny", {"train": {"r1_gamma": 0.5}})
    G, D = build_models(base.model, base.data)
    G.eval()  # fixed noise maps: the three D steps see the same fake batch
    real, z = torch.rand(4, 1, 28, 28) * 2 - 1, torch.randn(4, base.model.nz)

    def d_grad(interval: int, apply_r1: bool) -> torch.Tensor:
        cfg = build_config("stylegan", "tiny", {"train": {"r1_gamma": 0.5, "r1_interval": interval}})
        d_step(G, D, torch.optim.SGD(D.parameters(), lr=0.0), real, z, _Context(cfg, DistInfo()), apply_r1=apply_r1)
        return torch.cat([p.grad.flatten() for p in D.parameters()])

    plain = d_grad(1, apply_r1=False)
    every, lazy = d_grad(1, apply_r1=True) - plain, d_grad(4, apply_r1=True) - plain
    assert every.norm() > 0
    assert (lazy - 4 * every).norm() / (4 * every).norm() < 1e-3  # float cancellation in the differences
