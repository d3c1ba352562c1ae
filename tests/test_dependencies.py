"""What the code needs from outside is written down: every third-party module it imports is a
dependency in pyproject.toml, and every environment variable it reads is in docs/environment.md."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("src", "pipelines", "components")
FIRST_PARTY = {"ganforge", "pipelines", "components"}


def code_files() -> list[Path]:
    return sorted(f for d in CODE_DIRS for f in (ROOT / d).rglob("*.py"))


def imported_modules(source: str) -> set[str]:
    """Top-level names of absolute imports anywhere in the module (function-level ones included)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def declared_dependencies(*extras: str) -> set[str]:
    """The core's dependencies, plus those of the named extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [d for e in extras for d in project["optional-dependencies"][e]]
    return {canonicalize_name(Requirement(spec).name) for spec in specs}


def is_core(f: Path) -> bool:
    """The ML core: ganforge outside ganforge.platform (pipelines/ and components/ are platform)."""
    relative = f.relative_to(ROOT).parts
    return relative[:2] == ("src", "ganforge") and relative[2] != "platform"


def test_every_direct_import_is_a_declared_dependency():
    """The core's imports are core dependencies; the platform's may also come from the extra ``platform``."""
    distributions = metadata.packages_distributions()  # import name → distributions providing it
    core, platform = declared_dependencies(), declared_dependencies("platform")
    undeclared = {}
    for f in code_files():
        for module in imported_modules(f.read_text()) - FIRST_PARTY - set(sys.stdlib_module_names):
            providers = {canonicalize_name(d) for d in distributions.get(module, [])}
            if not providers & (core if is_core(f) else platform):
                undeclared.setdefault(module, []).append(str(f.relative_to(ROOT)))
    assert not undeclared, (
        "imported but not declared in pyproject.toml (the core: [project] dependencies; "
        f"ganforge.platform, pipelines/, components/: also the extra platform): {undeclared}"
    )


def test_the_platform_packages_are_an_extra_not_core_dependencies():
    core, platform = declared_dependencies(), declared_dependencies("platform")
    assert {"boto3", "mlflow", "kfp", "kubernetes"} <= platform - core


def test_the_import_scan_sees_function_level_imports():
    assert imported_modules("def f():\n    import yaml.x\n    from matplotlib import pyplot\nfrom . import y\n") == {
        "yaml",
        "matplotlib",
    }


# os.environ.get("X") / os.getenv("X") / os.environ["X"] (not an assignment) / "X" in os.environ /
# NAME_ENV = "X" (a constant that names a variable read elsewhere)
ENV_READ = re.compile(
    r"""(?:os\.environ\.get|os\.getenv|environ\.get)\(\s*["']([A-Z][A-Z0-9_]+)["']"""
    r"""|os\.environ\[\s*["']([A-Z][A-Z0-9_]+)["']\s*\](?!\s*=[^=])"""
    r"""|["']([A-Z][A-Z0-9_]+)["']\s+(?:not\s+)?in\s+os\.environ"""
    r"""|\b[A-Z_]+_ENV\s*=\s*["']([A-Z][A-Z0-9_]+)["']"""
)


def environment_variables_read() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for f in code_files():
        for match in ENV_READ.finditer(f.read_text()):
            found.setdefault(next(g for g in match.groups() if g), []).append(str(f.relative_to(ROOT)))
    return found


def table_variables(text: str) -> set[str]:
    """The variables named in the first column of the markdown tables in ``text``."""
    first_cells = re.findall(r"^\|([^|]+)\|", text, flags=re.M)
    return {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}


def test_every_environment_variable_read_is_in_the_docs():
    listed = table_variables((ROOT / "docs" / "environment.md").read_text())
    missing = {name: files for name, files in environment_variables_read().items() if name not in listed}
    assert not missing, f"read by the code but not in docs/environment.md's table: {missing}"


def test_the_readme_names_only_variables_the_code_reads():
    section = (ROOT / "README.md").read_text().split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    shown = table_variables(section)
    assert shown, "the README's environment variables section has no table"
    unknown = shown - set(environment_variables_read())
    assert not unknown, f"the README's table names variables the code never reads: {unknown}"


def test_the_env_scan_finds_each_form_of_read():
    text = (
        'os.environ.get("VAR_A", "x")\nos.getenv(\'VAR_B\')\nos.environ["VAR_C"]\nos.environ["VAR_D"] = "1"\n'
        'if "VAR_E" in os.environ: pass\nF_ENV = "VAR_F"\nos.environ["VAR_G"] == "1"\n'
    )
    assert {next(g for g in m.groups() if g) for m in ENV_READ.finditer(text)} == {
        "VAR_A",
        "VAR_B",
        "VAR_C",
        "VAR_E",
        "VAR_F",
        "VAR_G",
    }
