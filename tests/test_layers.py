"""The package's import graph, read with ``ast``: no cycles, and the core never imports the platform.

The core is ``ganforge`` outside ``ganforge.platform``; it reaches the platform only through
``ganforge.errors.require_platform`` (a call, not an import, and named below), so that it imports
and trains without boto3, mlflow, kfp or kubernetes (tests/test_core_without_platform.py runs it).
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

SRC = ROOT / "src"
PLATFORM_PACKAGES = {"boto3", "botocore", "s3transfer", "mlflow", "kfp", "kfp_server_api", "kubernetes"}
# Where the core calls require_platform, and for what: each is a user-facing feature that lives in the platform.
CORE_PLATFORM_CALLS = {
    ("ganforge.fileio", "s3"): "an s3:// data source (data and audio preparers)",
    ("ganforge.generate", "registry"): "a models:/ registry URI",
    ("ganforge.cli_train", "tracking"): "train --mlflow",
    ("ganforge.cli_train", "cluster_train"): "train with s3:// --data/--out (cluster job pods)",
    ("ganforge.cli_models", "steps"): "evaluate/curve of a run trained with --mlflow",
    ("ganforge.cli_registry", "tracking"): "ganforge registry / promote",
    ("ganforge.cli_registry", "registry"): "ganforge registry / promote / verify-model",
    ("ganforge.cli_registry", "serving"): "ganforge serve (MLflow's scoring server on a verified model)",
}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


MODULES = {module_name(p): p for p in (SRC / "ganforge").rglob("*.py")}


def is_core(module: str) -> bool:
    return not (module == "ganforge.platform" or module.startswith("ganforge.platform."))


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports(module: str, *, module_level_only: bool) -> set[str]:
    """Modules ``module`` imports (ganforge's by full name; others by top-level package)."""
    tree = ast.parse(MODULES[module].read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    if module_level_only:  # also imports inside module-level if/try blocks
        nodes = [
            n
            for top in tree.body
            if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            for n in ast.walk(top)
        ]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {m if m.startswith("ganforge") else m.split(".")[0] for m in found}


def graph(module_level_only: bool) -> dict[str, set[str]]:
    """ganforge module → the ganforge modules it imports (a submodule import also runs its packages)."""
    edges = {}
    for m in MODULES:
        targets = set()
        for imported in imports(m, module_level_only=module_level_only):
            if imported in MODULES and imported != m:
                targets.add(imported)
        edges[m] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_even_through_function_level_imports():
    assert not cycles(graph(module_level_only=False)), "import cycles in ganforge"


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_core_never_imports_the_platform():
    offending = {}
    for m in filter(is_core, MODULES):
        bad = sorted(
            i
            for i in imports(m, module_level_only=False)
            if not is_core(i) and i.startswith("ganforge") or i in PLATFORM_PACKAGES
        )
        if bad:
            offending[m] = bad
    assert not offending, f"core modules importing the platform layer or its packages: {offending}"


def test_the_core_reaches_the_platform_only_where_listed():
    calls = set()
    for m in filter(is_core, MODULES):
        for node in ast.walk(ast.parse(MODULES[m].read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require_platform":
                target = node.args[0]
                calls.add((m, target.value if isinstance(target, ast.Constant) else "<not a constant>"))
    assert calls == set(CORE_PLATFORM_CALLS)
