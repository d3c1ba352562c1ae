"""Compile a named pipeline to KFP IR YAML (what a cluster runs)."""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from ganforge.fileio import atomic_file

from .factory import build_pipeline


def compile_pipeline(name: str, out: str | Path, profile: str = "full") -> Path:
    out = Path(out)
    with atomic_file(out) as tmp:
        compiler.Compiler().compile(build_pipeline(name, profile), package_path=str(tmp.with_suffix(".yaml")))
        tmp.with_suffix(".yaml").replace(tmp)
    return out
