"""The test suite's own guards: no subprocess can hang it, and no missing tool skips a test in CI.

pytest-timeout bounds every test (pyproject.toml); these checks read the tests' source with ``ast``.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import skip_or_fail_in_ci

TESTS = Path(__file__).resolve().parent
# subprocess functions that wait for the child: each needs timeout= (getoutput/getstatusoutput cannot take one)
WAITING_CALLS = {"run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"}
TOOLS = ("kubectl", "kustomize", "hadolint", "docker")


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            yield node


def _keywords(call: ast.Call) -> set:
    return {k.arg for k in call.keywords}


def subprocess_calls_without_timeout(path: Path) -> list[str]:
    """``subprocess.run(...)`` & co. without ``timeout=``; ``.wait()``/``.communicate()`` with no timeout
    (a Popen's waits: Popen itself takes none); ``with subprocess.Popen(...)`` (its exit waits forever)."""
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner, name = ast.unparse(node.func.value), node.func.attr
            if owner == "subprocess" and name in WAITING_CALLS and "timeout" not in _keywords(node):
                found.append(f"{where} {ast.unparse(node)[:100]}")
            if name in ("wait", "communicate") and not node.args and "timeout" not in _keywords(node):
                found.append(f"{where} {ast.unparse(node)[:100]}")
        if isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if "Popen(" in ast.unparse(item.context_expr):
                    found.append(f"{where} with {ast.unparse(item.context_expr)[:100]}")
    return found


def test_every_subprocess_wait_in_the_tests_has_a_timeout():
    files = sorted(TESTS.rglob("*.py"))
    assert TESTS / "s3_server.py" in files and Path(__file__) in files
    missing = [line for path in files for line in subprocess_calls_without_timeout(path)]
    assert not missing, "subprocess waits without a timeout (a hung child would hang the suite):\n" + "\n".join(missing)


def test_every_test_runs_under_a_timeout(request):
    """pytest-timeout is active with the suite's default (pyproject.toml), so a hang fails that test."""
    assert request.config.pluginmanager.hasplugin("timeout"), "pytest-timeout is not installed/active"
    assert 300 <= float(request.config.getini("timeout")) <= 1800, request.config.getini("timeout")


def test_the_timeout_scan_finds_each_kind_of_unbounded_wait(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import subprocess\n"
        "subprocess.run(['true'], check=True)\n"
        "subprocess.check_output(['true'], timeout=5)\n"
        "p = subprocess.Popen(['true'])\n"
        "p.wait()\n"
        "p.wait(timeout=5)\n"
        "p.communicate()\n"
        "with subprocess.Popen(['true']) as q:\n"
        "    pass\n"
    )
    assert sorted(line.split()[0] for line in subprocess_calls_without_timeout(sample)) == [
        "sample.py:2",
        "sample.py:5",
        "sample.py:7",
        "sample.py:8",
    ]


def test_missing_tools_are_never_skipped_by_hand():
    """A skip that names a tool goes through conftest.skip_or_fail_in_ci, which fails under CI."""
    raw = []
    for path in sorted(TESTS.glob("*.py")):
        for call in _calls(path):
            text = ast.unparse(call)
            if ast.unparse(call.func) in ("pytest.skip", "pytest.mark.skipif", "pytest.importorskip") and any(
                tool in text.lower() for tool in TOOLS
            ):
                raw.append(f"{path.name}:{call.lineno} {text[:100]}")
    assert not raw, "use conftest.skip_or_fail_in_ci for a missing tool:\n" + "\n".join(raw)


@pytest.mark.parametrize(
    "ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception), ("false", pytest.skip.Exception)]
)
def test_a_missing_tool_fails_under_ci_and_skips_elsewhere(monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="needs kubectl"):
        skip_or_fail_in_ci("needs kubectl")


def test_ci_entry_point_runs_under_ci_true_and_lints_before_testing():
    script = (TESTS.parent / ".ci" / "run").read_text()
    assert 'export CI="${CI:-true}"' in script
    # each make line up to its redirection, `||` or `&`: the image build runs in the background beside the tests
    commands = [
        re.split(r"\s*(?:\|\||>|&)", line.strip())[0]
        for line in script.splitlines()
        if line.strip().startswith("make ")
    ]
    assert commands.index("make lint") < commands.index("make images-local") < commands.index("make test"), commands
    assert 'wait "$images_pid"' in script  # the background build's failure fails CI too
    assert os.access(TESTS.parent / ".ci" / "run", os.X_OK)


def test_readme_make_lint_passes():
    """The README's `make lint`, as written: ruff check and ruff format --check over the tree."""
    done = subprocess.run("make lint", shell=True, cwd=TESTS.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
