"""A StyleGAN version's programs: what truncation and style mixing need, without pickle.

A stylegan generator is registered as three ``torch.export`` programs in the model's ``data``
folder, all exported from CPU in eval mode with a dynamic batch dimension:

- ``model.pt2``: G(z, truncation) → images, ``truncation`` (ψ) a keyword input, a number or a
  0-d tensor; MLflow's pyfunc passes its inference parameter ``truncation`` (default 1.0, in the
  signature's params) as that keyword, so ``predict(z, params={"truncation": 0.7})`` truncates.
- ``mapping.pt2``: (z, truncation) → w pulled towards the tracked mean: w_avg + ψ(w − w_avg)
  (w_avg is a constant of the program).
- ``synthesis.pt2``: ws (B, num_ws, nz) → images.

The ``MLmodel`` metadata records ``style_layer_sides`` (the side each w index modulates), from
which ``layer_group`` finds the coarse/middle/fine indices. ψ = 1 runs the same lerp, which
returns w exactly, so on CPU every ψ gives the checkpoint's pixels (on CUDA the checkpoint's
modulated convs take their grouped form, which the CPU-traced programs do not).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ParamSchema, ParamSpec

from ganforge.platform.model_files import STYLE_FILES

from .common import RegistryError

MAPPING_FILE, SYNTHESIS_FILE = STYLE_FILES
MODEL_FILE = "data/model.pt2"
TRUNCATION_PARAM = "truncation"
STYLE_SIDES_KEY = "style_layer_sides"


def truncation_tensor(like: torch.Tensor, truncation) -> torch.Tensor:
    """ψ as a 0-d tensor of ``like``'s dtype; a Python number works too (multiplication takes either),
    which is what lets MLflow pass its float parameter straight into the program."""
    return torch.ones((), dtype=like.dtype, device=like.device) * truncation


class TruncatedMapping(torch.nn.Module):
    """(z, truncation) → w_avg.lerp(mapping(z), ψ): the generator's ``truncate`` with ψ an input."""

    def __init__(self, generator: torch.nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor, truncation: torch.Tensor) -> torch.Tensor:
        w = self.generator.mapping(z)
        return self.generator.mapping.w_avg.to(w.dtype).lerp(w, truncation_tensor(w, truncation))


class TruncatedGenerator(torch.nn.Module):
    """(z, truncation) → images: the generator's ``forward`` at ψ, with ψ an input."""

    def __init__(self, generator: torch.nn.Module):
        super().__init__()
        self.generator, self.mapping = generator, TruncatedMapping(generator)

    def forward(self, z: torch.Tensor, truncation: torch.Tensor) -> torch.Tensor:
        w = self.mapping(z, truncation)
        return self.generator.synthesis(w[:, None].repeat(1, self.generator.num_ws, 1))


class Synthesis(torch.nn.Module):
    def __init__(self, generator: torch.nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        return self.generator.synthesis(ws)


class PlainLatentProgram(torch.nn.Module):
    """What MLflow's own export sees (it traces the signature's tensor inputs only): G(z) at ψ = 1.
    Its ``model.pt2`` is replaced by the ``TruncatedGenerator`` program before anything is stored."""

    def __init__(self, generator: torch.nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)


def is_stylegan(generator: torch.nn.Module) -> bool:
    return all(hasattr(generator, name) for name in ("mapping", "synthesis", "num_ws", "style_layer_sides"))


def style_signature(z: np.ndarray, out: np.ndarray) -> ModelSignature:
    """The latent signature with the inference parameter ``truncation`` (ψ, default 1.0)."""
    from mlflow.models import infer_signature

    latent = infer_signature(z, out)
    params = ParamSchema([ParamSpec(TRUNCATION_PARAM, "double", 1.0)])
    return ModelSignature(inputs=latent.inputs, outputs=latent.outputs, params=params)


def style_metadata(generator: torch.nn.Module) -> dict:
    return {
        STYLE_SIDES_KEY: [int(s) for s in generator.style_layer_sides],
        "programs": {
            "model.pt2": "G(z, truncation=ψ) → images",
            "mapping.pt2": "(z, truncation=ψ) → w",
            "synthesis.pt2": "ws (B, num_ws, nz) → images",
        },
    }


def export_style_programs(generator: torch.nn.Module, nz: int, model_dir: Path) -> None:
    """Write the three programs of a CPU, eval-mode ``generator`` into ``model_dir`` (an MLflow model
    saved by ``mlflow.pytorch.save_model``, whose ``model.pt2`` this replaces)."""
    from torch.export import Dim

    z = torch.from_numpy(np.random.default_rng(0).standard_normal((2, nz)).astype(np.float32))
    psi = torch.tensor(1.0)
    batch = {0: Dim.AUTO}
    ws = z[:, None].repeat(1, generator.num_ws, 1)
    programs = {
        MODEL_FILE: (TruncatedGenerator(generator), (z,), {"truncation": psi}, {"z": batch, "truncation": None}),
        MAPPING_FILE: (TruncatedMapping(generator), (z,), {"truncation": psi}, {"z": batch, "truncation": None}),
        SYNTHESIS_FILE: (Synthesis(generator), (ws,), {}, {"ws": batch}),
    }
    for rel, (module, args, kwargs, dynamic) in programs.items():
        try:
            program = torch.export.export(module.eval(), args, kwargs=kwargs, dynamic_shapes=dynamic)
        except RuntimeError as e:
            raise RegistryError(f"torch.export cannot trace the stylegan {rel}: {' '.join(str(e).split())}") from e
        torch.export.save(program, str(model_dir / rel))


class StyleGANFlavor:
    """``mlflow.models.Model.log``'s flavor for a stylegan: MLflow's pytorch ``save_model`` (the files,
    ``MLmodel`` and environment of a ``pt2`` model), then the three programs in its ``data`` folder.
    The stored model is an ordinary ``mlflow.pytorch`` model to every loader."""

    __name__ = "mlflow.pytorch"

    def __init__(self, generator: torch.nn.Module, nz: int):
        self.generator, self.nz = generator, nz

    def save_model(self, path, mlflow_model=None, **kwargs) -> None:
        import mlflow

        mlflow.pytorch.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
        export_style_programs(self.generator, self.nz, Path(path))


class ExportedStyleGAN(torch.nn.Module):
    """A registered stylegan's programs as the generator ``ganforge generate`` samples from: ``forward``
    (G(z) at ``truncation_psi``), ``styles`` (truncated w), ``synthesis``, ``num_ws``, ``layer_group``.

    Exported graphs are fixed in eval mode; ``train()`` is refused as for ``ExportedGenerator``."""

    def __init__(self, model, mapping, synthesis, style_layer_sides: list[int]):
        super().__init__()
        self.graph, self.mapping, self.synthesis_graph = model, mapping, synthesis
        self.style_layer_sides = list(style_layer_sides)
        self.num_ws = len(self.style_layer_sides)
        self.training = False

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        return self.graph(z, truncation=truncation_tensor(z, truncation_psi))

    def styles(self, z: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
        return self.mapping(z, truncation=truncation_tensor(z, psi))

    def synthesis(self, ws: torch.Tensor) -> torch.Tensor:
        return self.synthesis_graph(ws)

    def layer_group(self, name: str) -> range:
        from ganforge.models.stylegan import layer_group

        return layer_group(self.style_layer_sides, name)

    def train(self, mode: bool = True) -> ExportedStyleGAN:
        if mode:
            raise RegistryError(
                "a registered generator is an exported inference graph and cannot train; "
                "resume training from its checkpoint.pt instead"
            )
        return self
