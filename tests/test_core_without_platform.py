"""The ML core works without the platform layer: with boto3, mlflow, kfp and kubernetes made
unimportable in a fresh process, every core module imports, the tiny profile trains on real
data, its checkpoint reads back, and ``python -m ganforge.cli`` trains; the commands that need
the platform say in one line what to install."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import FASHION_DIR, ROOT

BLOCKED = ("boto3", "botocore", "s3transfer", "mlflow", "kfp", "kfp_server_api", "kubernetes")
# Installed before anything imports ganforge: a finder first on sys.meta_path that refuses the
# platform's packages and their submodules, as if they were not installed.
BLOCK_PLATFORM = textwrap.dedent(f"""
    import sys

    class BlockPlatform:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, BlockPlatform())
""")
CORE_MODULES = sorted(
    ".".join(p.relative_to(ROOT / "src").with_suffix("").parts).removesuffix(".__init__")
    for p in (ROOT / "src" / "ganforge").rglob("*.py")
    if "platform" not in p.relative_to(ROOT / "src").parts
)


def run_blocked(code: str, *args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_PLATFORM + code, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def run_cli_blocked(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m ganforge.cli ARGS`` with the platform blocked."""
    return run_blocked(
        "import runpy; sys.argv = ['ganforge', *sys.argv[1:]]; runpy.run_module('ganforge.cli', run_name='__main__')",
        *args,
        cwd=cwd,
    )


def test_the_blocker_blocks_each_platform_package():
    code = textwrap.dedent(f"""
        import importlib
        for name in {BLOCKED!r} + ("mlflow.tracking", "kfp.dsl", "boto3.s3.transfer"):
            try:
                importlib.import_module(name)
            except ModuleNotFoundError:
                continue
            raise SystemExit(f"{{name}} imported")
        print("blocked")
    """)
    result = run_blocked(code, timeout=120)
    assert result.stdout.strip() == "blocked", result.stderr


def test_core_imports_trains_and_reads_its_checkpoint_without_the_platform(tmp_path):
    assert "ganforge.train" in CORE_MODULES and "ganforge.cli" in CORE_MODULES
    code = textwrap.dedent(f"""
        import importlib, json
        from pathlib import Path

        for name in {CORE_MODULES!r}:
            importlib.import_module(name)
        from ganforge.checkpoint import CHECKPOINT_NAME, read_checkpoint
        from ganforge.config import build_config
        from ganforge.data import prepare
        from ganforge.train import train

        out = Path(sys.argv[1])
        cfg = build_config("dcgan", "tiny", {{"data": {{"source": {str(FASHION_DIR)!r}}},
                                              "train": {{"max_steps": 2, "checkpoint_every": 2}}}})
        prepare(cfg.data, out / "data", split="train")
        result = train(cfg, out / "data", out / "run")
        ckpt = read_checkpoint(out / "run" / CHECKPOINT_NAME)
        platform = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r} or m.startswith("ganforge.platform"))
        print(json.dumps({{"step": result.step, "read_step": ckpt["step"], "name": ckpt["config"]["name"],
                          "platform_modules": platform}}))
    """)
    result = run_blocked(code, str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"step": 2, "read_step": 2, "name": "dcgan", "platform_modules": []}


def test_cli_trains_without_the_platform_and_platform_commands_name_the_extra(tmp_path):
    prep = run_cli_blocked(
        "prep",
        "--preset",
        "dcgan",
        "--profile",
        "tiny",
        "--source",
        str(FASHION_DIR),
        "--out",
        str(tmp_path / "data"),
        cwd=tmp_path,
    )
    assert prep.returncode == 0, prep.stderr[-3000:]
    trained = run_cli_blocked(
        "train",
        "--preset",
        "dcgan",
        "--profile",
        "tiny",
        "--set",
        "train.max_steps=2",
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "run"),
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads(trained.stdout.strip().splitlines()[-1])["step"] == 2
    assert (tmp_path / "run" / "checkpoint.pt").is_file()

    for args in (
        ["registry", "show", "dcgan"],
        ["promote", "dcgan", "1"],
        ["verify-model", "models:/dcgan@champion", "--out", str(tmp_path / "served")],
        [
            "train",
            "--preset",
            "dcgan",
            "--profile",
            "tiny",
            "--mlflow",
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "tracked"),
        ],
    ):
        refused = run_cli_blocked(*args, cwd=tmp_path)
        assert refused.returncode == 2, (args, refused.stderr[-3000:])
        error = refused.stderr.strip().splitlines()[-1]  # after any notice the command printed before it
        assert error.startswith(f"ganforge {args[0]}: error: ") and "Traceback" not in refused.stderr, (
            args,
            refused.stderr[-3000:],
        )
        assert "pip install 'ganforge[platform]'" in error, (args, refused.stderr[-3000:])
