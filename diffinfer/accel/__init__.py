"""Acceleration: parts that make each model call cheaper or a few-step sampler better.

Submodules load on first use (``from diffinfer.accel import prune`` or ``di.accel.prune``):

- ``prune``: structured channel pruning (LD-Pruner's output-space importance; learned
  differentiable masks trained through the sampler, "Effortless Efficiency"), with real
  channel removal (``prune.prune``);
- ``mmd``: MMD few-step finetuning through the differentiable sampler (MMD-DDM).
"""
from __future__ import annotations

import importlib

#: submodules loaded on first attribute access
SUBMODULES = ("prune", "mmd", "network")


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'diffinfer.accel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(SUBMODULES))
