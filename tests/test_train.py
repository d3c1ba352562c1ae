"""Training: checkpoints, resume after SIGKILL (bitwise), DDP on gloo ranks, two torchrun nodes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, cli_env, fill
from ganforge.checkpoint import CheckpointError, load_generator, read_checkpoint
from ganforge.config import build_config
from ganforge.train import NonFiniteLossError, train
from pipelines.stack import free_port


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_writes_complete_checkpoint_and_samples(fashion_train, tmp_path):
    cfg = build_config("dcgan", "tiny")
    seen = []
    result = train(cfg, fashion_train, tmp_path, on_metrics=lambda step, m: seen.append((step, m)))
    ckpt = read_checkpoint(result.checkpoint)  # weights_only=True
    for key in ("G", "G_ema", "D", "opt_G", "opt_D", "step", "epoch", "rng", "config"):
        assert key in ckpt
    assert set(ckpt["rng"]) == {"torch", "numpy", "python"}
    assert ckpt["step"] == cfg.train.max_steps == result.step
    assert [s for s, _ in seen] == list(range(cfg.train.log_every, cfg.train.max_steps + 1, cfg.train.log_every))
    assert {"loss_d", "loss_g", "img_per_s"} <= set(seen[-1][1])
    assert result.samples and result.samples[-1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    G, loaded_cfg = load_generator(result.checkpoint)
    assert loaded_cfg == cfg
    assert G(torch.randn(2, cfg.model.nz)).shape == (2, 1, 28, 28)
    assert not _state_equal(ckpt["G"], ckpt["G_ema"]), "EMA must differ from the raw generator"


def test_same_seed_same_weights_and_resume_continues(fashion_train, tmp_path):
    cfg = build_config("gan", "tiny")
    full = train(cfg, fashion_train, tmp_path / "a")
    half = train(build_config("gan", "tiny", {"train": {"max_steps": 4}}), fashion_train, tmp_path / "b")
    assert half.step == 4
    resumed = train(cfg, fashion_train, tmp_path / "b", resume=True)
    assert resumed.step == cfg.train.max_steps
    a, b = read_checkpoint(full.checkpoint), read_checkpoint(resumed.checkpoint)
    for key in ("G", "G_ema", "D"):
        assert _state_equal(a[key], b[key]), key


def test_non_finite_loss_stops_with_clear_error_and_keeps_last_checkpoint(fashion_train, tmp_path):
    # 4 good steps (checkpoint at step 4), then resumed with learning rates that blow up on the first step:
    # the step-4 checkpoint must survive, untouched and finite.
    train(build_config("gan", "tiny", {"train": {"max_steps": 4, "checkpoint_every": 2}}), fashion_train, tmp_path)
    ckpt = tmp_path / "checkpoint.pt"
    good = ckpt.read_bytes()
    blown = build_config("gan", "tiny", {"train": {"max_steps": 8, "checkpoint_every": 2, "lr_d": 1e30, "lr_g": 1e30}})
    with pytest.raises(NonFiniteLossError, match=f"non-finite .* at step 5; .* kept at {ckpt}"):
        train(blown, fashion_train, tmp_path, resume=True, allow_config_change=True)
    assert ckpt.read_bytes() == good
    state = read_checkpoint(ckpt)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["G"].values())


def test_resume_with_other_config_is_a_clear_error(fashion_train, tmp_path):
    train(build_config("dcgan", "tiny"), fashion_train, tmp_path)
    wider = build_config("dcgan", "tiny", {"model": {"ngf": 16}})
    with pytest.raises(CheckpointError, match="with a changed config: model.ngf 8 → 16"):
        train(wider, fashion_train, tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="does not fit this config"):  # asked for, but the weights cannot fit
        train(wider, fashion_train, tmp_path, resume=True, allow_config_change=True)


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is damaged or not a ganforge checkpoint"):
        read_checkpoint(bad)


def _train_cmd(cfg_path: Path, data: Path, out: Path, resume: bool = False) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ganforge.cli",
        "train",
        "--config-json",
        str(cfg_path),
        "--data",
        str(data),
        "--out",
        str(out),
    ] + (["--resume"] if resume else [])


def _sigkill_then_resume(cfg, fashion_train: Path, tmp_path: Path) -> None:
    """Uninterrupted run vs. a run SIGKILLed after its first checkpoint and resumed: same weights, bit for bit."""
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(cfg.to_json())
    env = cli_env()
    subprocess.run(
        _train_cmd(cfg_path, fashion_train, tmp_path / "ref"), env=env, check=True, capture_output=True, timeout=600
    )
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _train_cmd(cfg_path, fashion_train, out),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: torchrun and its ranks
    proc.wait(timeout=60)
    killed_at = read_checkpoint(out / "checkpoint.pt")["step"]
    assert killed_at < cfg.train.max_steps, "the run finished before it was killed; the test proved nothing"
    subprocess.run(
        _train_cmd(cfg_path, fashion_train, out, resume=True), env=env, check=True, capture_output=True, timeout=600
    )
    ref, resumed = read_checkpoint(tmp_path / "ref" / "checkpoint.pt"), read_checkpoint(out / "checkpoint.pt")
    assert resumed["step"] == ref["step"] == cfg.train.max_steps
    for key in ("G", "G_ema", "D"):
        assert _state_equal(ref[key], resumed[key]), f"{key} differs after resume (killed at step {killed_at})"


def test_sigkill_then_resume_is_bitwise_identical_single_rank(fashion_train, tmp_path):
    cfg = build_config("dcgan", "tiny", {"train": {"epochs": 2, "max_steps": 24, "checkpoint_every": 3}})
    _sigkill_then_resume(cfg, fashion_train, tmp_path)


def test_sigkill_then_resume_is_bitwise_identical_two_ranks(fashion_train, tmp_path):
    cfg = build_config("dcgan", "tiny", {"train": {"epochs": 2, "max_steps": 24, "checkpoint_every": 3, "nproc": 2}})
    _sigkill_then_resume(cfg, fashion_train, tmp_path)


def _torchrun_worker(cfg, data: Path, out: Path, report: Path, nproc: int) -> dict:
    cfg_path = out.parent / f"{out.name}.json"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(cfg.to_json())
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            str(ROOT / "tests" / "ddp_worker.py"),
            str(cfg_path),
            str(data),
            str(out),
            str(report),
        ],
        env=cli_env(),
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # each rank's own line when it finished training (the report is rank 0's)
    return {
        **json.loads(report.read_text()),
        "ranks": sorted(line for line in done.stderr.splitlines() if ": trained steps " in line),
    }


def test_two_gloo_ranks_stay_identical_and_match_single_rank_curve(fashion_train, tmp_path):
    """The MLP GAN has no BatchNorm, so 2 ranks × 16 must reproduce 1 rank × 32 up to float summation order.

    Tolerance: 1e-3 absolute on every logged loss over 8 steps (observed differences are ~1e-6;
    BatchNorm models differ more, since their statistics are per rank).
    """
    base = {"train": {"max_steps": 8, "log_every": 1, "batch_size": 32}}
    one = _torchrun_worker(build_config("gan", "tiny", base), fashion_train, tmp_path / "one", tmp_path / "one.json", 1)
    two_cfg = build_config("gan", "tiny", {"train": {**base["train"], "nproc": 2}})
    two = _torchrun_worker(two_cfg, fashion_train, tmp_path / "two", tmp_path / "two.json", 2)
    assert two["world_size"] == 2 and two["max_rank_param_diff"] == 0.0
    assert two["ranks"] == ["rank 0 of 2: trained steps 1-8", "rank 1 of 2: trained steps 1-8"]
    assert one["ranks"] == []  # a world of 1 prints none
    assert [s for s, *_ in one["curve"]] == [s for s, *_ in two["curve"]] == list(range(1, 9))
    for (_, d1, g1), (_, d2, g2) in zip(one["curve"], two["curve"]):
        assert abs(d1 - d2) < 1e-3 and abs(g1 - g2) < 1e-3


def test_two_torchrun_nodes_on_localhost(fashion_train, tmp_path):
    """Two torchrun 'nodes' (one rank each) meet through the c10d rendezvous on 127.0.0.1."""
    cfg = build_config("dcgan", "tiny", {"train": {"max_steps": 4, "nnodes": 2, "nproc": 1}})
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(cfg.to_json())
    endpoint = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={rank}",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}",
                "--rdzv-id=ganforge-test",
                "-m",
                "ganforge.cli",
                "train",
                "--config-json",
                str(cfg_path),
                "--data",
                str(fashion_train),
                "--out",
                str(tmp_path / f"node{rank}"),
            ],
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for rank, output in enumerate(outputs):  # each node's rank trained all 4 steps
        assert f"rank {rank} of 2: trained steps 1-4" in output.splitlines(), output[-3000:]
    assert read_checkpoint(tmp_path / "node0" / "checkpoint.pt")["step"] == 4
    assert not (tmp_path / "node1" / "checkpoint.pt").exists(), "only global rank 0 writes checkpoints"


# --- resume with a changed config ---


def _tiny(**train_fields):
    return build_config("dcgan", "tiny", {"train": {"max_steps": 4, "checkpoint_every": 2, **train_fields}})


def test_resume_refuses_a_changed_learning_rate_naming_the_field(fashion_train, tmp_path):
    train(_tiny(), fashion_train, tmp_path)
    recorded = (tmp_path / "config.json").read_text()
    with pytest.raises(CheckpointError) as info:
        train(_tiny(max_steps=8, lr_g=1e-3, beta2=0.99), fashion_train, tmp_path, resume=True)
    message = str(info.value)
    assert "\n" not in message and "train.lr_g 0.0002 → 0.001" in message and "train.beta2 0.999 → 0.99" in message
    assert "max_steps" not in message and "--allow-config-change" in message
    assert (tmp_path / "config.json").read_text() == recorded  # nothing rewritten by the refused run
    assert read_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4


def test_allow_config_change_makes_the_optimiser_use_the_new_values(fashion_train, tmp_path):
    train(_tiny(), fashion_train, tmp_path)
    new = _tiny(max_steps=6, lr_g=1e-3, lr_d=5e-4, beta1=0.0)
    train(new, fashion_train, tmp_path, resume=True, allow_config_change=True)
    ckpt = read_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 6
    # The optimisers' param_groups as saved after the resumed steps: the new values, not the checkpoint's.
    assert [g["lr"] for g in ckpt["opt_G"]["param_groups"]] == [1e-3]
    assert [g["lr"] for g in ckpt["opt_D"]["param_groups"]] == [5e-4]
    assert [tuple(g["betas"]) for g in ckpt["opt_G"]["param_groups"]] == [(0.0, 0.999)]
    assert json.loads((tmp_path / "config.json").read_text())["train"]["lr_g"] == 1e-3


def test_resume_accepts_schedule_and_cadence_changes_without_the_flag(fashion_train, tmp_path):
    train(_tiny(), fashion_train, tmp_path)
    longer = build_config(
        "dcgan",
        "tiny",
        {
            "train": {"max_steps": 6, "epochs": 3, "checkpoint_every": 3, "log_every": 1, "snapshot_every": 2},
            "eval": {"n_samples": 100},
        },
    )
    assert train(longer, fashion_train, tmp_path, resume=True).step == 6


def test_resume_at_another_thread_count_says_so(fashion_train, tmp_path, capsys):
    """The thread policy follows the load, so a resume may run at another count than its checkpoint was
    written at; the checkpoint records it and the resume names both and how to pin it."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        train(_tiny(), fashion_train, tmp_path)
        assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["threads"] == 1
        capsys.readouterr()
        train(_tiny(max_steps=6), fashion_train, tmp_path, resume=True)  # same count: nothing said
        assert "thread" not in capsys.readouterr().err
        torch.set_num_threads(2)
        train(_tiny(max_steps=8), fashion_train, tmp_path, resume=True)
        err = capsys.readouterr().err
        assert "at 2 thread(s); it was written at 1" in err and "GANFORGE_THREADS=1" in err, err
    finally:
        torch.set_num_threads(before)


# --- checkpoints: checksum, snapshots, full disks ---


def test_flipped_byte_in_a_checkpoint_is_caught(fashion_train, tmp_path, capsys):
    from ganforge import cli

    train(_tiny(), fashion_train, tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.pt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # the middle of the file: tensor data, which torch.load does not check
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"is damaged: its contents hash to sha256 .* but it records"):
        read_checkpoint(path)
    capsys.readouterr()
    status = cli.main(
        [
            "train",
            "--profile",
            "tiny",
            "--set",
            "train.max_steps=4",
            "--set",
            "train.checkpoint_every=2",
            "--data",
            str(fashion_train),
            "--out",
            str(tmp_path / "run"),
            "--resume",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and f"checkpoint {path} is damaged" in err[0] and "Fix:" in err[0], err


def test_checkpoint_is_a_plain_torch_zip_and_old_checkpoints_still_load(fashion_train, tmp_path):
    result = train(_tiny(), fashion_train, tmp_path)
    plain = torch.load(result.checkpoint, weights_only=True)  # any torch.load reads it
    legacy = tmp_path / "legacy.pt"
    torch.save(plain, legacy)  # as written before checkpoints carried a checksum
    assert read_checkpoint(legacy)["step"] == plain["step"] == 4


def test_a_snapshot_given_as_checkpoint_is_named(fashion_train, tmp_path):
    train(_tiny(), fashion_train, tmp_path)
    snapshot = tmp_path / "snapshots" / "epoch_001.pt"
    (tmp_path / "checkpoint.pt").write_bytes(snapshot.read_bytes())
    with pytest.raises(CheckpointError, match=r"checkpoint.pt is a snapshot .*cannot resume from it. Fix:"):
        train(_tiny(max_steps=6), fashion_train, tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="has no G .*drop --raw-generator"):
        load_generator(snapshot, ema=False)


def test_disk_full_during_a_checkpoint_is_one_line_and_keeps_the_previous_one(fashion_train, small_tmpfs):
    from ganforge.errors import GanforgeError

    out = small_tmpfs / "run"
    cfg = build_config("dcgan", "tiny", {"train": {"max_steps": 12, "checkpoint_every": 4, "snapshot_every": 0}})

    def fill_after_first(step, path):
        if step == 4:
            fill(small_tmpfs)  # the disk fills up between two checkpoints

    with pytest.raises(GanforgeError) as info:
        train(cfg, fashion_train, out, on_checkpoint=fill_after_first)
    message = str(info.value)
    assert "\n" not in message and f"cannot write {out / 'checkpoint.pt'}: No space left on device (ENOSPC)" in message
    assert "Fix: free space" in message
    assert read_checkpoint(out / "checkpoint.pt")["step"] == 4  # the previous checkpoint, intact
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no half-written temp file


def test_non_finite_loss_is_caught_before_a_checkpoint_between_log_points(fashion_train, tmp_path):
    """The finiteness check reads the device only at log, sample and checkpoint steps: with log_every far
    away, a blow-up at step 5 still stops before step 6's checkpoint, and names step 5."""
    sets = {"max_steps": 8, "checkpoint_every": 2, "log_every": 100}
    train(build_config("gan", "tiny", {"train": {**sets, "max_steps": 4}}), fashion_train, tmp_path)
    ckpt = tmp_path / "checkpoint.pt"
    good = ckpt.read_bytes()
    blown = build_config("gan", "tiny", {"train": {**sets, "lr_d": 1e30, "lr_g": 1e30}})
    with pytest.raises(NonFiniteLossError, match="non-finite .* at step 5;"):
        train(blown, fashion_train, tmp_path, resume=True, allow_config_change=True)
    assert ckpt.read_bytes() == good
