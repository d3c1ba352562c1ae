"""pix2pix: the U-Net and conditional PatchGAN, paired sr/inpaint data from real Fashion-MNIST, the losses and
steps, `ganforge edit` on user files with per-file errors, and PSNR/SSIM/FID scores beside the baselines."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganforge.checkpoint import write_checkpoint
from ganforge.cli import main
from ganforge.config import ConfigError, PipelineConfig, build_config
from ganforge.edit import edit_arrays
from ganforge.edit_data import (
    area_downsample,
    centre_box,
    load_paired,
    make_masks,
    mean_fill,
    prepare_paired,
)
from ganforge.errors import OutputPathError
from ganforge.manifest import DataError
from ganforge.models import build_models
from ganforge.pix2pix import d_loss, d_step, g_loss, g_step, load_editor, paired_batch

PRESETS = {"sr": "pix2pix-sr", "inpaint": "pix2pix-inpaint"}


def _cfg(task: str, *sets: str) -> PipelineConfig:
    return build_config(PRESETS[task], "tiny", ["data.limit=48", *sets])


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict:
    """(task, split) → the prepared paired directory (48 real Fashion-MNIST images each)."""
    root = tmp_path_factory.mktemp("pix2pix-data")
    out = {}
    for task in PRESETS:
        for split in ("train", "test"):
            prepare_paired(_cfg(task).data, root / f"{task}-{split}", split)
            out[task, split] = root / f"{task}-{split}"
    return out


def _train_run(task: str, data: Path, out: Path, steps: int = 3) -> Path:
    """A few real d_step/g_step updates, saved as a run directory with the common checkpoint keys."""
    cfg = _cfg(task)
    torch.manual_seed(0)
    G, D = build_models(cfg.model, cfg.data)
    G_ema, _ = build_models(cfg.model, cfg.data)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.train.lr_g, betas=(cfg.train.beta1, cfg.train.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.train.lr_d, betas=(cfg.train.beta1, cfg.train.beta2))
    ds = load_paired(data, cfg.data)
    for step in range(steps):
        cond, target = paired_batch(ds, np.arange(step * 8, step * 8 + 8), cfg)
        d_step(G, D, opt_d, cond, target)
        g_step(G, D, opt_g, cond, target, cfg.train.l1_weight)
    G_ema.load_state_dict(G.state_dict())
    state = {"G": G.state_dict(), "G_ema": G_ema.state_dict(), "D": D.state_dict(), "step": steps, "epoch": 1}
    write_checkpoint(out / "checkpoint.pt", {**state, "config": cfg.to_dict()})
    return out


@pytest.fixture(scope="module")
def runs(pairs, tmp_path_factory) -> dict:
    return {t: _train_run(t, pairs[t, "train"], tmp_path_factory.mktemp(f"run-{t}")) for t in PRESETS}


@pytest.mark.parametrize("task,c_in", [("sr", 1), ("inpaint", 2)])
def test_unet_keeps_the_shape_and_the_patchgan_scores_condition_and_image(task, c_in):
    cfg = _cfg(task)
    G, D = build_models(cfg.model, cfg.data)
    x = torch.rand(3, c_in, 28, 28) * 2 - 1
    y = G(x)
    assert y.shape == (3, 1, 28, 28) and y.abs().max() <= 1
    scores = D(x, y)
    assert scores.shape == (3, 1, 5, 5)
    assert not torch.equal(D(x, y), D(torch.zeros_like(x), y))  # D sees the condition too


def test_unet_skips_carry_the_input_past_the_bottleneck():
    """With every level below the first silenced, only the outermost skip can carry the input to the output."""
    cfg = _cfg("sr")
    G, _ = build_models(cfg.model, cfg.data)
    G.eval()
    with torch.no_grad():
        for p in G.down[1].parameters():
            p.zero_()
    x1, x2 = torch.rand(2, 1, 1, 28, 28) * 2 - 1
    assert not torch.allclose(G(x1), G(x2))


def test_area_downsampling_averages_two_by_two_blocks():
    x = np.array([[[[0, 1, 10, 10], [2, 3, 10, 11], [255, 255, 0, 0], [255, 254, 0, 1]]]], np.uint8)
    assert area_downsample(x).tolist() == [[[[2, 10], [255, 0]]]]  # (6+2)//4, (41+2)//4, (1019+2)//4, (1+2)//4


def test_sr_pairs_are_the_real_images_and_their_half_size_versions(pairs):
    ds = load_paired(pairs["sr", "test"])
    assert ds.targets.shape == (48, 1, 28, 28) and ds.inputs.shape == (48, 1, 14, 14) and ds.masks is None
    t = np.asarray(ds.targets, dtype=np.int32).reshape(48, 1, 14, 2, 14, 2).sum(axis=(3, 5))
    assert np.array_equal(ds.inputs, ((t + 2) // 4).astype(np.uint8))
    assert ds.manifest["task"] == "sr" and ds.manifest["split"] == "test" and ds.manifest["count"] == 48
    with pytest.raises(DataError, match="inpaint pairs but the config's data.task is 'sr'"):
        load_paired(pairs["inpaint", "test"], _cfg("sr").data)


def test_masks_centre_random_and_mixed_are_seeded_per_image():
    top, left, h, w = centre_box(28)
    assert (top, left, h, w) == (7, 7, 14, 14)
    centre = make_masks(5, 28, "centre", 0, "train")
    assert centre.sum() == 5 * 14 * 14 and centre[:, 0, 7:21, 7:21].all()
    rnd = make_masks(40, 28, "random", 3, "train")
    assert np.array_equal(rnd[:10], make_masks(10, 28, "random", 3, "train"))  # image i's mask ignores N
    assert not np.array_equal(rnd, make_masks(40, 28, "random", 4, "train"))
    assert not np.array_equal(rnd, make_masks(40, 28, "random", 3, "test"))
    for m in rnd[:, 0]:
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        assert 7 <= len(rows) <= 21 and 7 <= len(cols) <= 21 and m.sum() == len(rows) * len(cols)
    mixed = make_masks(40, 28, "mixed", 0, "train")
    is_centre = [np.array_equal(m, centre[0]) for m in mixed]
    assert 5 < sum(is_centre) < 35


def test_mean_fill_sets_the_hole_to_the_mean_of_the_visible_pixels():
    x = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4) * 10
    m = np.zeros((1, 1, 4, 4), np.uint8)
    m[0, 0, 1:3, 1:3] = 1
    out = mean_fill(x, m)
    visible = x[0, 0][m[0, 0] == 0]
    assert np.all(out[0, 0][m[0, 0] == 1] == round(visible.mean()))
    assert np.array_equal(out[0, 0][m[0, 0] == 0], visible)


def test_inpaint_prep_writes_masks_and_mean_filled_inputs_and_guards_its_out(pairs, tmp_path):
    ds = load_paired(pairs["inpaint", "train"])
    assert ds.masks.shape == (48, 1, 28, 28)
    assert np.array_equal(ds.masks, make_masks(48, 28, "centre", 0, "train"))
    assert np.array_equal(ds.inputs, mean_fill(ds.targets, ds.masks))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputPathError, match="not an earlier ganforge prep output"):
        prepare_paired(_cfg("inpaint").data, foreign, "train")
    assert (foreign / "notes.txt").read_text() == "keep me"
    again = tmp_path / "again"
    prepare_paired(_cfg("inpaint", "data.mask=random").data, again, "test")
    prepare_paired(_cfg("inpaint").data, again, "test")  # its own earlier output is replaced whole
    assert load_paired(again).manifest["mask"] == "centre"


def test_losses_are_bce_halved_for_d_and_adversarial_plus_weighted_l1_for_g():
    class Constant(torch.nn.Module):
        def forward(self, cond, image):
            return torch.zeros(len(image), 1, 5, 5)

    cond, target = torch.zeros(2, 1, 28, 28), torch.zeros(2, 1, 28, 28)
    fake = torch.full_like(target, 0.5)
    log2 = float(np.log(2))
    assert float(d_loss(Constant(), cond, target, fake)) == pytest.approx(log2)  # ½ (log 2 + log 2)
    total, adv, l1 = g_loss(Constant(), cond, target, fake, 100.0)
    assert float(adv) == pytest.approx(log2) and float(l1) == pytest.approx(0.5)
    assert float(total) == pytest.approx(log2 + 50.0)


def test_d_step_moves_only_d_and_g_step_only_g_and_l1_falls(pairs):
    cfg = _cfg("sr", "model.ngf=8", "model.ndf=8")
    torch.manual_seed(0)
    G, D = build_models(cfg.model, cfg.data)
    opt_g, opt_d = torch.optim.Adam(G.parameters(), lr=2e-3), torch.optim.Adam(D.parameters(), lr=2e-4)
    cond, target = paired_batch(load_paired(pairs["sr", "train"]), np.arange(8), cfg)
    g0, d0 = [p.clone() for p in G.parameters()], [p.clone() for p in D.parameters()]
    d_step(G, D, opt_d, cond, target)
    assert all(torch.equal(a, b) for a, b in zip(g0, G.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(d0, D.parameters()))
    d1, d_grads = [p.clone() for p in D.parameters()], [p.grad.clone() for p in D.parameters()]
    first = g_step(G, D, opt_g, cond, target, cfg.train.l1_weight)
    assert all(torch.equal(a, b) for a, b in zip(d1, D.parameters()))
    assert all(torch.equal(p.grad, g) for p, g in zip(D.parameters(), d_grads))  # G's loss left D's grads alone
    assert all(p.requires_grad for p in D.parameters())
    for _ in range(10):
        last = g_step(G, D, opt_g, cond, target, cfg.train.l1_weight)
    assert float(last["l1"]) < 0.7 * float(first["l1"])


def test_config_pix2pix_fields_are_checked_and_leave_old_hashes_alone():
    with pytest.raises(ConfigError, match="data.task"):
        build_config("dcgan", "tiny", ["data.task=sr"])
    with pytest.raises(ConfigError, match="data.task"):
        build_config("pix2pix-sr", "tiny", ["data.task="])
    with pytest.raises(ConfigError, match="data.mask='ring' is not valid"):
        build_config("pix2pix-inpaint", "tiny", ["data.mask=ring"])
    with pytest.raises(ConfigError, match="train.l1_weight=-1.0 must be >= 0"):
        build_config("pix2pix-sr", "tiny", ["train.l1_weight=-1"])
    cfg = build_config("dcgan", "tiny")
    old = cfg.to_dict()
    for group, key in (("data", "task"), ("data", "mask"), ("data", "mask_seed"), ("train", "l1_weight")):
        del old[group][key]
    assert PipelineConfig.from_dict(old).config_hash() == cfg.config_hash()


def _png(path: Path, array: np.ndarray, mode: str = "L") -> None:
    Image.fromarray(array, mode).save(path)


def test_edit_super_resolves_pngs_and_names_bad_files(runs, pairs, tmp_path, capsys):
    ds = load_paired(pairs["sr", "test"])
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        _png(inputs / f"small{i}.png", np.asarray(ds.inputs[i, 0]))
    out = tmp_path / "out"
    assert main(["edit", "--checkpoint", str(runs["sr"]), "--input", str(inputs), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == {"task": "sr", "written": 3, "out": str(out)}
    G, cfg = load_editor(runs["sr"])
    expected = edit_arrays(G, cfg, np.asarray(ds.inputs[:3]), None).numpy()
    for i in range(3):
        assert np.array_equal(np.asarray(Image.open(out / f"small{i}.png"))[None], expected[i])

    _png(inputs / "big.png", np.zeros((28, 28), np.uint8))
    assert main(["edit", "--checkpoint", str(runs["sr"]), "--input", str(inputs), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "big.png: it is 28×28 px, and this model super-resolves 14×14 px images" in err
    assert not (tmp_path / "o2").exists()  # every input is checked before anything is written
    (inputs / "big.png").unlink()
    _png(inputs / "colour.png", np.zeros((14, 14, 3), np.uint8) + np.array([255, 0, 0], np.uint8), "RGB")
    assert main(["edit", "--checkpoint", str(runs["sr"]), "--input", str(inputs), "--out", str(tmp_path / "o3")]) == 2
    assert "colour.png: it is a colour image and this model edits grayscale" in capsys.readouterr().err
    (inputs / "colour.png").unlink()
    assert main(["edit", "--checkpoint", str(runs["sr"]), "--input", str(inputs), "--out", str(out)]) == 2
    assert "already exists; edit never replaces files" in capsys.readouterr().err


def test_edit_inpaints_the_alpha_hole_and_keeps_the_visible_pixels(runs, pairs, tmp_path, capsys):
    ds = load_paired(pairs["inpaint", "test"])
    target = np.asarray(ds.targets[0, 0])
    alpha = np.where(ds.masks[0, 0] == 1, 0, 255).astype(np.uint8)
    inputs = tmp_path / "in"
    inputs.mkdir()
    _png(inputs / "holed.png", np.stack([target, alpha], axis=-1), "LA")
    out = tmp_path / "out"
    assert main(["edit", "--checkpoint", str(runs["inpaint"]), "--input", str(inputs), "--out", str(out)]) == 0
    edited = np.asarray(Image.open(out / "holed.png"))
    hole = ds.masks[0, 0] == 1
    assert np.array_equal(edited[~hole], target[~hole])
    G, cfg = load_editor(runs["inpaint"])
    expected = edit_arrays(G, cfg, np.asarray(ds.inputs[:1]), np.asarray(ds.masks[:1])).numpy()[0, 0]
    assert np.array_equal(edited, expected)  # the PNG's alpha hole is the prepared mask, mean-filled alike

    _png(inputs / "opaque.png", target)
    assert (
        main(["edit", "--checkpoint", str(runs["inpaint"]), "--input", str(inputs), "--out", str(tmp_path / "o")]) == 2
    )
    assert "opaque.png: it has no alpha channel; mark the missing pixels with alpha < 128" in capsys.readouterr().err
    assert main(["edit", "--checkpoint", str(runs["sr"]), "--input", str(inputs / "holed.png"), "--out", str(out)]) == 2
    assert "this model super-resolves 14×14 px images" in capsys.readouterr().err


def test_edit_refuses_a_checkpoint_of_another_preset(tmp_path, capsys):
    cfg = build_config("dcgan", "tiny")
    G, D = build_models(cfg.model, cfg.data)
    write_checkpoint(tmp_path / "checkpoint.pt", {"G_ema": G.state_dict(), "step": 1, "config": cfg.to_dict()})
    assert main(["edit", "--checkpoint", str(tmp_path), "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "is a dcgan checkpoint, not a pix2pix one" in capsys.readouterr().err


@pytest.mark.parametrize("task,baseline", [("sr", "bicubic"), ("inpaint", "mean-fill")])
def test_evaluation_scores_edits_and_the_baseline(task, baseline, runs, pairs, tmp_path, torchscript, monkeypatch):
    """PSNR checked against numpy's 10·log10(1/MSE) per image; the CLI routes a pix2pix run to this scoring."""
    from ganforge.edit_metrics import baseline_images, evaluate_editing, ssim

    G, cfg = load_editor(runs[task])
    eval_cfg = dataclasses.replace(cfg.eval, n_samples=16, kid_subset_size=8)
    m = evaluate_editing(G, cfg, pairs[task, "test"], tmp_path / "m", tmp_path / "cache", eval_cfg, torchscript)
    assert m["task"] == task and m["baseline"]["name"] == baseline and m["n"] == 16
    ds = load_paired(pairs[task, "test"])
    masks = ds.masks[:16] if ds.masks is not None else None
    base = baseline_images(np.asarray(ds.inputs[:16]), masks, cfg).astype(np.float64) / 255
    mse = ((base - np.asarray(ds.targets[:16]) / 255) ** 2).mean(axis=(1, 2, 3))
    assert m["baseline"]["psnr"] == pytest.approx(float(np.mean(10 * np.log10(1 / mse))), rel=1e-6)
    assert -1 <= m["ssim"] <= 1 and 0.2 < m["baseline"]["ssim"] < 1  # a 3-step generator may score below 0
    assert ssim(ds.targets[:4], ds.targets[:4]) == pytest.approx(1.0)
    assert ssim(ds.targets[:4], 255 - np.asarray(ds.targets[:4])) < 0
    assert m["fid"] > 0 and m["baseline"]["fid"] > 0 and m["fid"] != m["baseline"]["fid"]
    assert json.loads((tmp_path / "m" / "metrics.json").read_text()) == m
    assert (
        Image.open(m["grid"]).size[1] == 4 * 28 + 5 * 2
    )  # gutters around 4 rows: input / baseline / edited / target rows
    if task == "sr":
        monkeypatch.setenv("GANFORGE_HOME", str(tmp_path / "home"))
        out = tmp_path / "cli"
        assert (
            main(
                [
                    "evaluate",
                    "--run",
                    str(runs[task]),
                    "--data",
                    str(pairs[task, "test"]),
                    "--out",
                    str(out),
                    "--n",
                    "16",
                ]
            )
            == 0
        )
        assert json.loads((out / "metrics.json").read_text())["psnr"] == pytest.approx(m["psnr"])


def test_ganforge_train_trains_pix2pix_with_the_one_loop_and_resumes_bitwise(pairs, tmp_path, capsys):
    """`ganforge train --preset pix2pix-sr` runs the Pix2PixRecipe: its checkpoint is the common one (edit reads
    it), and 2 steps + --resume to 4 equal 4 steps in one go, bit for bit."""
    from ganforge.checkpoint import TRAINING_STATE_KEYS, read_checkpoint

    args = ["--preset", "pix2pix-sr", "--profile", "tiny", "--data", str(pairs["sr", "train"])]
    sets = ["--set", "train.batch_size=8", "--set", "train.checkpoint_every=2", "--set", "data.limit=48"]
    assert main(["train", *args, *sets, "--set", "train.max_steps=4", "--out", str(tmp_path / "whole")]) == 0
    assert main(["train", *args, *sets, "--set", "train.max_steps=2", "--out", str(tmp_path / "split")]) == 0
    resumed = ["--set", "train.max_steps=4", "--out", str(tmp_path / "split"), "--resume"]
    assert main(["train", *args, *sets, *resumed]) == 0
    whole, split = (read_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("whole", "split"))
    assert set(TRAINING_STATE_KEYS) <= set(whole) and whole["step"] == split["step"] == 4
    for key in ("G", "G_ema", "D"):
        assert all(torch.equal(whole[key][k], split[key][k]) for k in whole[key]), key
    torch.manual_seed(build_config("pix2pix-sr", "tiny").train.seed)  # the recipe's seeded initial networks
    G0, D0 = build_models(_cfg("sr").model, _cfg("sr").data)
    for key, initial in (("G", G0), ("D", D0)):  # both were trained
        assert not all(torch.equal(whole[key][k], v) for k, v in initial.state_dict().items() if v.is_floating_point())
    assert int(whole["opt_D"]["state"][0]["step"]) == int(whole["opt_G"]["state"][0]["step"]) == 4
    G, _ = load_editor(tmp_path / "whole")
    assert all(torch.equal(a, whole["G_ema"][k]) for k, a in G.state_dict().items())
    assert (tmp_path / "whole" / "samples" / "epoch_001.png").is_file()
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--preset",
                "pix2pix-inpaint",
                "--profile",
                "tiny",
                "--data",
                str(pairs["sr", "train"]),
                "--out",
                str(tmp_path / "wrong"),
            ]
        )
        == 2
    )
    assert "holds sr pairs but the config's data.task is 'inpaint'" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["sr", "inpaint"])
def test_a_registered_editor_writes_the_checkpoints_pngs(task, runs, pairs, tmp_path, monkeypatch, capsys):
    """The registry holds the whole editing step (pix2pix.Editor, torch.export, sha256- and content-checked):
    `edit --model models:/…` writes byte for byte the PNGs `edit --checkpoint` writes."""
    from ganforge.platform import registry, tracking

    monkeypatch.setenv("GANFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure()
    G, cfg = load_editor(runs[task])
    version = registry.register_generator(tracking.start_pipeline_run(cfg), G, cfg, {"fid": 50.0}, tags={})
    assert registry.promote(cfg.model_name, version, margin=0.0)["alias"] == "champion"
    ds = load_paired(pairs[task, "test"])
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        if task == "sr":
            _png(inputs / f"x{i}.png", np.asarray(ds.inputs[i, 0]))
        else:
            alpha = np.where(ds.masks[i, 0] == 1, 0, 255).astype(np.uint8)
            _png(inputs / f"x{i}.png", np.stack([np.asarray(ds.targets[i, 0]), alpha], axis=-1), "LA")
    model = f"models:/{cfg.model_name}@champion"
    assert main(["edit", "--model", model, "--input", str(inputs), "--out", str(tmp_path / "reg")]) == 0
    assert main(["edit", "--checkpoint", str(runs[task]), "--input", str(inputs), "--out", str(tmp_path / "ck")]) == 0
    capsys.readouterr()
    for i in range(3):
        assert (tmp_path / "reg" / f"x{i}.png").read_bytes() == (tmp_path / "ck" / f"x{i}.png").read_bytes(), i
