"""What a registered ganforge model may contain: the content rules checked before MLflow loads it.

A model directory is trusted for what it is, not for a tag: whoever can write the model's
files can usually also rewrite its ``ganforge.artifact_sha256`` tag (the same MLflow user owns
both), so the digest catches a changed file but cannot stop a code payload by itself. MLflow
runs code named by the model's own ``MLmodel`` before its pickle checks: ``code:`` puts a
bundled folder first on ``sys.path``, ``pickle_module_info.txt`` beside a ``model.pth`` is
imported, and the pyfunc ``loader_module`` is imported by ``mlflow.pyfunc.load_model``.

So a directory is loaded only if it looks exactly like what ``register_generator`` writes:

- only the files MLflow's ``pytorch`` flavor writes for a ``pt2`` model (``MODEL_FILES``), and for
  a stylegan both of its mapping and synthesis programs (``STYLE_FILES``), no other file, folder
  or link (no ``code/``, no ``*.py``, no ``model.pth``);
- an ``MLmodel`` with the ``pytorch`` flavor and the ``python_function`` one (which MLflow
  leaves out for a class-conditional program of two inputs) and no other, the pyfunc
  ``loader_module`` ``mlflow.pytorch``, no ``code`` in either, data in ``data``, and only the
  keys MLflow writes for such a model;
- environment files that pin only ``torch`` and ``mlflow`` (what ``mlflow models serve``
  would install).

What remains loadable is a ``torch.export`` graph of registered operators plus tensors, which
MLflow's pickle-free check then validates; a writer can still swap the weights (a wrong
model), not run code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from ganforge.errors import GanforgeError

MODEL_FILES = frozenset(
    {
        "MLmodel",
        "conda.yaml",
        "python_env.yaml",
        "requirements.txt",
        "input_example.json",
        "serving_input_example.json",
        "data/model.pt2",
    }
)
"""Every file of a model ``register_generator`` logs (``pt2`` serialization, explicit requirements)."""
STYLE_FILES = ("data/mapping.pt2", "data/synthesis.pt2")
"""A stylegan version's two programs beside ``data/model.pt2``: both or neither."""
REQUIRED_FILES = ("MLmodel", "data/model.pt2")
CLIENT_WRITTEN_FILES = frozenset({"registered_model_meta"})
"""Files MLflow's downloader writes into a model directory itself (name/version of the download)."""
MODEL_DIRS = frozenset({"data"})
LOADER_MODULE = "mlflow.pytorch"
PICKLE_MODULE_NAME = "mlflow.pytorch.pickle_module"
"""What MLflow records in the pyfunc flavor; the pt2 loader never imports it."""
MLMODEL_KEYS = frozenset(
    {
        "artifact_path",
        "flavors",
        "is_signature_from_type_hint",
        "metadata",
        "mlflow_version",
        "model_id",
        "model_size_bytes",
        "model_uuid",
        "prompts",
        "run_id",
        "saved_input_example_info",
        "signature",
        "type_hint_from_example",
        "utc_time_created",
    }
)
PYFUNC_KEYS = frozenset({"config", "data", "env", "loader_module", "pickle_module_name", "python_version"})
PYTORCH_KEYS = frozenset({"code", "model_data", "pytorch_version"})
PINNED = re.compile(r"(torch|mlflow)==[0-9][0-9A-Za-z.+]*")
"""A requirement ganforge writes: ``torch==X`` or ``mlflow==Y``, nothing else (no URL, no option)."""
BUILD_TOOL = re.compile(r"(pip|setuptools|wheel)(==[0-9][0-9A-Za-z.]*)?")


class ModelContentError(GanforgeError, RuntimeError):
    """A model directory holds something ganforge never registers; the message names it."""


def _refuse(uri: str, problem: str) -> ModelContentError:
    return ModelContentError(
        f"refusing to load {uri}: {problem}; ganforge registers only pt2 generators without code, "
        "so this version was changed after registration — do not use it, register the model again "
        "from its checkpoint.pt"
    )


def check_files(root: Path, uri: str) -> None:
    """Only ``MODEL_FILES`` (and the downloader's own file), as plain files; no links."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                raise _refuse(uri, f"it holds a link {rel!r}")
            if name in dirnames and rel not in MODEL_DIRS:
                raise _refuse(uri, f"it holds a folder {rel!r} (code, or files ganforge never writes)")
            if name in filenames and rel not in MODEL_FILES | CLIENT_WRITTEN_FILES | set(STYLE_FILES):
                raise _refuse(uri, f"it holds a file {rel!r} that ganforge never writes")
    for rel in REQUIRED_FILES:
        if not (root / rel).is_file():
            raise _refuse(uri, f"it has no {rel}")
    present = [rel for rel in STYLE_FILES if (root / rel).is_file()]
    if present and len(present) != len(STYLE_FILES):
        missing = sorted(set(STYLE_FILES) - set(present))
        raise _refuse(uri, f"it has {present[0]} without {missing[0]} (a stylegan version has both)")


def _yaml(root: Path, name: str, uri: str) -> object:
    try:
        return yaml.safe_load((root / name).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise _refuse(uri, f"its {name} is not readable YAML ({type(e).__name__})") from None


def check_mlmodel(root: Path, uri: str) -> None:
    """The ``MLmodel`` names no code and no loader other than MLflow's pytorch flavor."""
    meta = _yaml(root, "MLmodel", uri)
    if not isinstance(meta, dict):
        raise _refuse(uri, "its MLmodel is not a mapping")
    if extra := sorted(set(meta) - MLMODEL_KEYS):
        raise _refuse(uri, f"its MLmodel has keys {extra} that ganforge never writes")
    flavors = meta.get("flavors")
    if not isinstance(flavors, dict) or set(flavors) not in ({"python_function", "pytorch"}, {"pytorch"}):
        found = sorted(flavors) if isinstance(flavors, dict) else flavors
        raise _refuse(uri, f"its MLmodel flavors are {found}, not ['python_function', 'pytorch'] or ['pytorch']")
    # A class-conditional program (inputs z and labels) is logged without the pyfunc flavor.
    pyfunc = flavors.get("python_function", {"loader_module": LOADER_MODULE, "data": "data"})
    pytorch = flavors["pytorch"]
    if not isinstance(pyfunc, dict) or not isinstance(pytorch, dict):
        raise _refuse(uri, "its MLmodel flavors are not mappings")
    if pyfunc.get("code") or pytorch.get("code"):
        raise _refuse(uri, "its MLmodel bundles code (a 'code' entry), which MLflow would put on sys.path")
    if pyfunc.get("loader_module") != LOADER_MODULE:
        raise _refuse(uri, f"its MLmodel names loader_module {pyfunc.get('loader_module')!r}, not {LOADER_MODULE!r}")
    if extra := sorted(set(pyfunc) - PYFUNC_KEYS) + sorted(set(pytorch) - PYTORCH_KEYS):
        raise _refuse(uri, f"its MLmodel flavors have keys {extra} that ganforge never writes")
    if pyfunc.get("pickle_module_name", PICKLE_MODULE_NAME) != PICKLE_MODULE_NAME:
        raise _refuse(uri, f"its MLmodel names pickle_module_name {pyfunc['pickle_module_name']!r}")
    if pyfunc.get("data") != "data" or pytorch.get("model_data") != "data":
        raise _refuse(uri, "its MLmodel points the model data somewhere other than 'data'")
    config = pyfunc.get("config")
    if config is not None and not (isinstance(config, dict) and set(config) <= {"device"}):
        raise _refuse(uri, "its MLmodel's pyfunc config holds more than 'device'")
    env = pyfunc.get("env")
    if env is not None and not (
        isinstance(env, dict) and all(v in ("conda.yaml", "python_env.yaml") for v in env.values())
    ):
        raise _refuse(uri, "its MLmodel's environment points at files ganforge never writes")


def _check_requirements(lines: object, where: str, uri: str) -> None:
    if not isinstance(lines, list) or not all(isinstance(x, str) and PINNED.fullmatch(x.strip()) for x in lines):
        raise _refuse(uri, f"its {where} asks for packages other than pinned torch and mlflow")


def check_environment(root: Path, uri: str) -> None:
    """The environment files pin torch and mlflow only (``mlflow models serve`` installs them)."""
    if (root / "requirements.txt").is_file():
        lines = [line for line in (root / "requirements.txt").read_text().splitlines() if line.strip()]
        _check_requirements(lines, "requirements.txt", uri)
    if (root / "python_env.yaml").is_file():
        env = _yaml(root, "python_env.yaml", uri)
        build = env.get("build_dependencies", []) if isinstance(env, dict) else None
        if (
            not isinstance(env, dict)
            or env.get("dependencies") not in (None, ["-r requirements.txt"])
            or not isinstance(build, list)
            or not all(isinstance(x, str) and BUILD_TOOL.fullmatch(x) for x in build)
        ):
            raise _refuse(uri, "its python_env.yaml installs more than requirements.txt and pip/setuptools/wheel")
    if (root / "conda.yaml").is_file():
        conda = _yaml(root, "conda.yaml", uri)
        deps = conda.get("dependencies") if isinstance(conda, dict) else None
        if not isinstance(deps, list) or conda.get("channels", ["conda-forge"]) != ["conda-forge"]:
            raise _refuse(uri, "its conda.yaml asks for channels or packages ganforge never writes")
        for dep in deps:
            if isinstance(dep, dict) and set(dep) == {"pip"}:
                _check_requirements(dep["pip"], "conda.yaml", uri)
            elif not (isinstance(dep, str) and re.fullmatch(r"(python|pip)[=<>0-9.]*", dep)):
                raise _refuse(uri, f"its conda.yaml asks for {dep!r}")


def check_model_dir(root: str | os.PathLike, uri: str) -> None:
    """Refuse (``ModelContentError``, one line) a downloaded model ganforge would not have written."""
    root = Path(root)
    check_files(root, uri)
    check_mlmodel(root, uri)
    check_environment(root, uri)
