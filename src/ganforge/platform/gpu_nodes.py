"""Where GPU pods may run: the GPU node selector and tolerations, from one place.

Two environment variables, read when a pipeline is compiled (``make compile|submit|schedule``)
and by the training step when it launches a TrainJob/PyTorchJob (the compiled training task
carries both, so the job's pods get what the task got):

* ``GANFORGE_GPU_NODE_SELECTOR``: comma-separated ``key=value`` node labels, e.g.
  ``nvidia.com/gpu.present=true``; unset or empty: no node selector.
* ``GANFORGE_GPU_TOLERATIONS``: comma-separated taints to tolerate in ``kubectl taint`` syntax,
  ``key[=value][:Effect]`` (no value: operator ``Exists``; no effect: every effect); unset:
  ``nvidia.com/gpu:NoSchedule``; empty: none.

The gpu-cluster overlay's ConfigMap ``ganforge-cluster`` (k8s/overlays/gpu-cluster/
gpu-node-pool.yaml) holds the same two keys with that cluster's values.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from ..config import ConfigError, PipelineConfig

NODE_SELECTOR_ENV = "GANFORGE_GPU_NODE_SELECTOR"
TOLERATIONS_ENV = "GANFORGE_GPU_TOLERATIONS"
DEFAULT_TOLERATIONS = "nvidia.com/gpu:NoSchedule"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
"""The toleration ``DEFAULT_TOLERATIONS`` parses to: GPU nodes' usual taint."""
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = re.compile(rf"([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}")
_VALUE = re.compile(rf"({_NAME})?")


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_node_selector(text: str, source: str = NODE_SELECTOR_ENV) -> dict[str, str]:
    """``"a=b,c/d=e"`` → ``{"a": "b", "c/d": "e"}``; ConfigError naming the bad item and the syntax."""
    out: dict[str, str] = {}
    for item in _items(text):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _KEY.fullmatch(key) or not _VALUE.fullmatch(value):
            raise ConfigError(
                f"{source}={text!r}: {item!r} is not a node label key=value; write e.g. "
                f"{NODE_SELECTOR_ENV}=nvidia.com/gpu.present=true (comma-separated)"
            )
        out[key] = value
    return out


def parse_tolerations(text: str, source: str = TOLERATIONS_ENV) -> list[dict]:
    """``"nvidia.com/gpu:NoSchedule,pool=gpu:NoExecute"`` → Kubernetes toleration dicts."""
    out = []
    for item in _items(text):
        taint, colon, effect = item.rpartition(":") if ":" in item else (item, "", "")
        key, eq, value = taint.partition("=")
        key, value, effect = key.strip(), value.strip(), effect.strip()
        if (
            not _KEY.fullmatch(key)
            or (eq and not value)
            or not _VALUE.fullmatch(value)
            or (colon and effect not in EFFECTS)
        ):
            raise ConfigError(
                f"{source}={text!r}: {item!r} is not a taint key[=value][:Effect] "
                f"(Effect one of {', '.join(EFFECTS)}); write e.g. "
                f"{TOLERATIONS_ENV}=nvidia.com/gpu:NoSchedule (comma-separated)"
            )
        toleration = {"key": key, "operator": "Equal" if value else "Exists"}
        if value:
            toleration["value"] = value
        if effect:
            toleration["effect"] = effect
        out.append(toleration)
    return out


def format_node_selector(selector: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in selector.items())


def format_tolerations(tolerations) -> str:
    return ",".join(
        t["key"] + (f"={t['value']}" if t.get("value") else "") + (f":{t['effect']}" if t.get("effect") else "")
        for t in tolerations
    )


def gpu_node_selector(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The GPU node selector of this environment (GANFORGE_GPU_NODE_SELECTOR; unset: none)."""
    env = os.environ if env is None else env
    return parse_node_selector(env.get(NODE_SELECTOR_ENV, ""))


def gpu_tolerations(env: Mapping[str, str] | None = None) -> list[dict]:
    """The GPU tolerations of this environment (GANFORGE_GPU_TOLERATIONS; unset: nvidia.com/gpu:NoSchedule)."""
    env = os.environ if env is None else env
    return parse_tolerations(env.get(TOLERATIONS_ENV, DEFAULT_TOLERATIONS))


def gpus_per_node(cfg: PipelineConfig, override: int | None = None) -> int:
    """GPUs per node of a training pod: ``override`` (GANFORGE_GPUS_PER_NODE) when given, else ``train.nproc``
    for the ``full`` profile and none (CPU) otherwise — the one GPU rule, for the KFP train task and the
    TrainJob/PyTorchJob pods alike."""
    if override is not None:
        return override
    return cfg.train.nproc if cfg.profile == "full" else 0
