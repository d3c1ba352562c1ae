"""The one training loop and its recipes: every preset has a recipe; CycleGAN, run by the common loop, gets what
the loop gives every family (EMA of both generators, --allow-config-change, --allow-data-change, snapshots,
AMP and DiffAugment in its steps) and old cyclegan checkpoints still resume."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch.testing import assert_close

from conftest import ROOT, cli_env
from ganforge.augment import diff_augment
from ganforge.checkpoint import CYCLEGAN_STATE_KEYS, CheckpointError, read_checkpoint, write_checkpoint
from ganforge.config import PRESETS, ConfigError, build_config
from ganforge.cyclegan import build_cycle_state, d_step, load_translators, prepare_domain, train_cyclegan
from ganforge.losses import d_loss, g_loss
from ganforge.training.dist import DistInfo
from ganforge.training.recipes import RECIPES, Recipe, recipe_class
from ganforge.training.state import StepContext

NETWORKS = ("G_ab", "G_ba", "G_ab_ema", "G_ba_ema", "D_a", "D_b")


def _cfg(*sets: str):
    return build_config("cyclegan", "tiny", ["train.max_steps=2", "train.checkpoint_every=1", *sets])


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    cfg = build_config("cyclegan", "tiny", ["data.limit=32"])
    root = tmp_path_factory.mktemp("domains")
    for d in ("a", "b"):
        prepare_domain(cfg.data, d, root / d, "train")
    return root / "a", root / "b"


@pytest.fixture(scope="module")
def two_steps(domains, tmp_path_factory):
    """Two cyclegan steps with a checkpoint after each: (run directory, [checkpoint 1, checkpoint 2])."""
    out = tmp_path_factory.mktemp("cyclegan")
    ckpts = []
    train_cyclegan(_cfg(), *domains, out, on_checkpoint=lambda s, p: ckpts.append(read_checkpoint(p)))
    return out, ckpts


def test_every_preset_has_a_recipe():
    assert {build_config(p, "tiny").model.arch for p in PRESETS} <= set(RECIPES)
    for arch in RECIPES:
        assert issubclass(recipe_class(arch), Recipe)
    with pytest.raises(ValueError, match="no training recipe for model.arch 'vqgan'; known: "):
        recipe_class("vqgan")


def test_lsgan_losses():
    real, fake = torch.tensor([0.5, 2.0, -1.0]), torch.tensor([0.25, -0.5, 1.5])
    assert_close(d_loss("lsgan", real, fake), 0.5 * (((real - 1) ** 2).mean() + (fake**2).mean()))
    assert_close(g_loss("lsgan", fake), ((fake - 1) ** 2).mean())


def test_the_loop_updates_both_ema_generators(two_steps):
    """G_xy_ema ← d·G_xy_ema + (1−d)·G_xy after each step, d = min(ema_decay, (1+s)/(10+s)) at step s."""
    _, ckpts = two_steps
    cfg = _cfg()
    m0 = build_cycle_state(cfg)[0]
    for ema_key, key in (("G_ab_ema", "G_ab"), ("G_ba_ema", "G_ba")):
        ema = {n: p.detach() for n, p in getattr(m0, key).named_parameters()}
        for s, ckpt in enumerate(ckpts):
            d = min(cfg.train.ema_decay, (1 + s) / (10 + s))
            ema = {n: d * ema[n] + (1 - d) * ckpt[key][n] for n in ema}
            for n, value in ema.items():
                assert_close(
                    ckpt[ema_key][n], value, rtol=1e-6, atol=1e-7, msg=lambda m, n=n, e=ema_key: f"{e} {n}: {m}"
                )
        assert not torch.equal(ckpts[-1][ema_key]["net.1.weight"], getattr(m0, key).state_dict()["net.1.weight"])


def test_a_cyclegan_checkpoint_keeps_the_common_entries(two_steps):
    _, (c1, c2) = two_steps
    assert set(CYCLEGAN_STATE_KEYS) | {"scaler_G", "scaler_D", "data_sha256"} <= set(c2)
    assert (c1["step"], c2["step"]) == (1, 2)


def test_an_old_cyclegan_checkpoint_resumes_bitwise(two_steps, domains, tmp_path):
    """A checkpoint written before cyclegan runs had scaler states and a data record resumes as before."""
    _, (c1, c2) = two_steps
    old = {k: v for k, v in c1.items() if k not in ("scaler_G", "scaler_D", "data_sha256", "format_version")}
    write_checkpoint(tmp_path / "checkpoint.pt", old)
    r = train_cyclegan(_cfg(), *domains, tmp_path, resume=True)
    assert r.step == 2
    got = read_checkpoint(tmp_path / "checkpoint.pt")
    for key in NETWORKS:
        assert all(torch.equal(c2[key][k], got[key][k]) for k in c2[key]), key
    assert torch.equal(c2["pool_a"], got["pool_a"]) and torch.equal(c2["pool_b"], got["pool_b"])


def test_cyclegan_resume_refuses_a_changed_config_unless_allowed(two_steps, domains, tmp_path):
    run, _ = two_steps
    (tmp_path / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes())
    longer = ["train.max_steps=3"]
    with pytest.raises(CheckpointError, match=r"train.lr_g 0.0002 → 0.0001.*--allow-config-change"):
        train_cyclegan(_cfg(*longer, "train.lr_g=1e-4"), *domains, tmp_path, resume=True)
    r = train_cyclegan(_cfg(*longer, "train.lr_g=1e-4"), *domains, tmp_path, resume=True, allow_config_change=True)
    assert r.step == 3
    assert read_checkpoint(tmp_path / "checkpoint.pt")["opt_G"]["param_groups"][0]["lr"] == 1e-4


def test_cyclegan_resume_refuses_other_data_unless_allowed(two_steps, domains, tmp_path):
    run, _ = two_steps
    (tmp_path / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes())
    swapped, longer = domains[::-1], _cfg("train.max_steps=3")
    with pytest.raises(CheckpointError, match="on other data.*--allow-data-change"):
        train_cyclegan(longer, *swapped, tmp_path, resume=True)
    assert train_cyclegan(longer, *swapped, tmp_path, resume=True, allow_data_change=True).step == 3


def test_cyclegan_writes_snapshots_that_translate(domains, tmp_path):
    train_cyclegan(_cfg("train.snapshot_every=1", "train.max_steps=1"), *domains, tmp_path)
    G_ab, G_ba, cfg = load_translators(tmp_path / "snapshots" / "epoch_001.pt")
    state = read_checkpoint(tmp_path / "checkpoint.pt")
    assert all(torch.equal(v, state["G_ab_ema"][k]) for k, v in G_ab.state_dict().items())
    assert cfg.model.arch == "cyclegan"


def test_cyclegan_refuses_several_critic_steps(domains, tmp_path):
    with pytest.raises(ConfigError, match="train.n_critic=2.*set train.n_critic=1"):
        train_cyclegan(_cfg("train.n_critic=2"), *domains, tmp_path)


def test_cyclegan_discriminators_see_diffaugmented_images():
    """With train.diffaugment the D step scores DiffAugment(real) and DiffAugment(fake), the augmentations drawn
    from the global RNG in the order D_A real, D_A fake, D_B real, D_B fake."""
    cfg = build_config("cyclegan", "tiny", ["train.diffaugment=translation,cutout", "train.batch_size=2"])
    m, _, opt_d = build_cycle_state(cfg)
    g = torch.Generator().manual_seed(3)
    real_a, real_b, fake_a, fake_b = (torch.rand(2, 1, 28, 28, generator=g) * 2 - 1 for _ in range(4))
    m0 = copy.deepcopy(m)
    torch.manual_seed(5)
    out = d_step(m, opt_d, real_a, real_b, fake_a, fake_b, ctx=StepContext(cfg, DistInfo()))
    torch.manual_seed(5)
    aug = [diff_augment(x, cfg.train.diffaugment) for x in (real_a, fake_a, real_b, fake_b)]
    loss_a = 0.5 * ((m0.D_a(aug[0]) - 1).pow(2).mean() + m0.D_a(aug[1]).pow(2).mean())
    loss_b = 0.5 * ((m0.D_b(aug[2]) - 1).pow(2).mean() + m0.D_b(aug[3]).pow(2).mean())
    assert_close(out["loss_d_a"], loss_a.detach())
    assert_close(out["loss_d_b"], loss_b.detach())
    assert not torch.equal(aug[0], real_a)


@pytest.mark.slow  # torchrun and two ranks
def test_cyclegan_on_two_gloo_ranks_keeps_the_ranks_identical(domains, tmp_path):
    """Two ranks, each on its slice of both domains' batches, average their gradients: every network (and EMA
    copy) stays the same on both ranks, and each rank trains every step."""
    from ganforge.threads import usable_cores

    if usable_cores() < 2:
        pytest.skip("one usable core: ganforge refuses two CPU ranks here (one rank per core at most)")
    cfg_path, report = tmp_path / "cfg.json", tmp_path / "report.json"
    cfg_path.write_text(_cfg("train.nproc=2", "train.log_every=1").to_json())
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(ROOT / "tests" / "ddp_worker.py"), str(cfg_path), ",".join(map(str, domains)), str(tmp_path / "run"),
         str(report)],
        env=cli_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(report.read_text())
    assert got["world_size"] == 2 and got["max_rank_param_diff"] == 0.0
    assert [step for step, *_ in got["curve"]] == [1, 2]
    ranks = sorted(line for line in done.stderr.splitlines() if ": trained steps " in line)
    assert ranks == ["rank 0 of 2: trained steps 1-2", "rank 1 of 2: trained steps 1-2"]


def test_train_cyclegan_in_one_process_refuses_several_ranks(domains, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match=r"train.nproc=2: .*ganforge train --preset cyclegan --nproc N"):
        train_cyclegan(_cfg("train.nproc=2"), *domains, tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()
