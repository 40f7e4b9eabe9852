"""Acceleration: parts that make each model call cheaper or a task need fewer of them
(issue 17), each a ``Denoiser -> Denoiser`` wrapper, a driver option or a network
transform that works with every solver.

- ``cache``: feature caching (DeepCache; A-SDM feature inheritance): ``FeatureCache``.

Names load on first use (``diffinfer.accel.FeatureCache``), so ``import diffinfer.accel``
imports no submodule.
"""
from __future__ import annotations

import importlib

#: public name -> submodule that defines it
EXPORTS = {
    "FeatureCache": "cache", "feature_cache": "cache", "CachePlan": "cache", "CacheStats": "cache",
    "plan_for": "cache", "unet_plan": "cache", "dit_plan": "cache", "diffusers_unet_plan": "cache",
}


def __getattr__(name: str):
    module = EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'diffinfer.accel' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(EXPORTS))


__all__ = sorted(EXPORTS)
