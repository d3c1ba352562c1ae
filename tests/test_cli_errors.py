"""The command line's error contract: a GanforgeError is one line on stderr and exit 2, Ctrl-C is
one line and exit 130, anything else (a bug) keeps its traceback. Real processes and files."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, cli_env, mount_tmpfs
from ganforge import cli


def run_main(capsys, *argv: str) -> tuple[int, list[str]]:
    capsys.readouterr()
    status = cli.main(list(argv))
    return status, capsys.readouterr().err.strip().splitlines()


def test_nproc_zero_is_refused(fashion_train, tmp_path, capsys):
    status, err = run_main(
        capsys,
        "train",
        "--profile",
        "tiny",
        "--data",
        str(fashion_train),
        "--out",
        str(tmp_path / "run"),
        "--nproc",
        "0",
    )
    assert status == 2 and len(err) == 1 and "--nproc 0: give the number of training processes" in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "content, problem",
    [
        ({"profile": "tiny", "train": {"max_steps": 2}}, "has no 'name'"),
        ({"train": {}}, "has no 'name' or 'profile'"),
        ([1, 2], "has no 'name' or 'profile'"),
        ("{not json", "is not valid JSON"),
        ({"name": "dcgan", "profile": "tiny", "train": 5}, "'int' object is not iterable"),
    ],
)
def test_bad_config_json_names_the_file(fashion_train, tmp_path, capsys, content, problem):
    path = tmp_path / "config.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    status, err = run_main(
        capsys, "train", "--config-json", str(path), "--data", str(fashion_train), "--out", str(tmp_path / "run")
    )
    assert status == 2 and len(err) == 1, err
    assert f"--config-json {path}" in err[0] and problem in err[0] and "Traceback" not in err[0]


def test_missing_config_json_is_named(fashion_train, tmp_path, capsys):
    status, err = run_main(
        capsys,
        "train",
        "--config-json",
        str(tmp_path / "nope.json"),
        "--data",
        str(fashion_train),
        "--out",
        str(tmp_path / "run"),
    )
    assert status == 2 and err == [
        f"ganforge train: error: --config-json {tmp_path / 'nope.json'} does not exist; "
        "pass the config.json of a run directory"
    ]


def test_train_out_under_a_file_is_one_line(fashion_train, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    status, err = run_main(
        capsys, "train", "--profile", "tiny", "--data", str(fashion_train), "--out", str(tmp_path / "afile" / "run")
    )
    assert status == 2 and len(err) == 1, err
    # the first file train writes there is its lock (ganforge.runlock)
    assert (
        f"cannot write {tmp_path / 'afile' / 'run' / '.ganforge-train.lock'}: {tmp_path / 'afile'} is a file" in err[0]
    )


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only tmpfs (root writes through permission bits, not through a read-only mount)."""
    with mount_tmpfs(tmp_path / "ro", "ro,size=1m") as mount:
        yield mount


@pytest.mark.parametrize("command", ["train", "prep"])
def test_unwritable_out_is_one_line(fashion_train, read_only_dir, capsys, command):
    out = read_only_dir / "run"
    extra = ["--data", str(fashion_train)] if command == "train" else ["--source", "/usr/share/datasets/fashion-mnist"]
    status, err = run_main(capsys, command, "--profile", "tiny", *extra, "--out", str(out))
    assert status == 2 and len(err) == 1, err
    assert f"cannot write {out}" in err[0] and "Read-only file system (EROFS)" in err[0] and "Fix:" in err[0]


def test_other_exceptions_keep_their_traceback(monkeypatch, tmp_path):
    """Only GanforgeError becomes a one-line exit 2: a bug must not be dressed up as bad input."""

    def buggy(args):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(cli, "cmd_prep", buggy)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["prep", "--out", str(tmp_path / "x")])


_CHILD = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "  # a background launch
    "from ganforge.cli import main; sys.exit(main(sys.argv[1:]))"
)  # inherits SIG_IGN


def test_ctrl_c_is_one_line_and_exit_130(fashion_train, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CHILD,
            "train",
            "--profile",
            "tiny",
            "--set",
            "train.max_steps=100000",
            "--set",
            "train.epochs=1000",
            "--set",
            "train.log_every=1",
            "--data",
            str(fashion_train),
            "--out",
            str(out),
        ],
        env=cli_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        selector = selectors.DefaultSelector()
        selector.register(proc.stderr, selectors.EVENT_READ)
        deadline, seen = time.monotonic() + 120, ""
        while "step 3/" not in seen and time.monotonic() < deadline and proc.poll() is None:
            if selector.select(timeout=1):
                seen += proc.stderr.readline()
        assert "step 3/" in seen, f"training never got going: {seen[-2000:]}"
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    lines = [line for line in rest.splitlines() if not line.startswith("step ")]
    assert proc.returncode == 130, rest[-3000:]
    assert "Traceback" not in rest and len(lines) == 1, rest[-3000:]
    assert lines[0].startswith("ganforge train: interrupted (Ctrl-C)") and "--resume" in lines[0]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no half-written temp files


def test_resume_with_a_changed_learning_rate_needs_the_flag(fashion_train, tmp_path, capsys):
    common = [
        "train",
        "--profile",
        "tiny",
        "--set",
        "train.checkpoint_every=2",
        "--data",
        str(fashion_train),
        "--out",
        str(tmp_path / "run"),
    ]
    assert run_main(capsys, *common, "--set", "train.max_steps=2")[0] == 0
    changed = [*common, "--set", "train.max_steps=4", "--set", "train.lr_d=0.001", "--resume"]
    status, err = run_main(capsys, *changed)
    assert status == 2 and len(err) == 1 and "train.lr_d 0.0002 → 0.001" in err[0] and "--allow-config-change" in err[0]
    status, _ = run_main(capsys, *changed, "--allow-config-change")
    from ganforge.checkpoint import read_checkpoint

    ckpt = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert status == 0 and ckpt["step"] == 4 and ckpt["opt_D"]["param_groups"][0]["lr"] == 0.001


def test_workers_travel_as_an_argument_not_through_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GANFORGE_EVAL_WORKERS", raising=False)
    for args in (["evaluate", "--checkpoint", str(tmp_path / "none.pt")], ["curve", "--run", str(tmp_path)]):
        status, err = run_main(capsys, *args, "--data", str(tmp_path), "--workers", "3")
        assert status == 2 and err[-1].startswith(f"ganforge {args[0]}: error:"), err  # a missing input
        assert "GANFORGE_EVAL_WORKERS" not in os.environ
