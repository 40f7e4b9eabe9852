"""Acceleration: parts that cut what a solve costs (docs/architecture.md, ``accel/``).

Modules load on first use (``diffinfer.accel.warm``, ``diffinfer.accel.tiling``, ...):
- ``warm``: warm and mid-path starts (an estimate noised to ``t*``), chunked sequences;
- ``tiling``: any-size canvases from a fixed-size model by shifting, blended tiles.
"""
from __future__ import annotations

import importlib

MODULES = ("warm", "tiling")


def __getattr__(name: str):
    if name in MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'diffinfer.accel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(MODULES))
