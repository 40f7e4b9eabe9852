"""Acceleration: parts that cut what a solve costs (docs/architecture.md, ``accel/``): fewer
steps, cheaper calls, or a better few-step sampler; each is a ``Denoiser -> Denoiser``
wrapper, a driver option or a network transform that works with every solver.

Submodules load on first use (``from diffinfer.accel import warm`` or ``di.accel.warm``), and
the feature cache's names too (``diffinfer.accel.FeatureCache``):

- ``cache``: feature caching (DeepCache; A-SDM feature inheritance): ``FeatureCache``;
- ``warm``: warm and mid-path starts (an estimate noised to ``t*``), chunked sequences;
- ``tiling``: any-size canvases from a fixed-size model by shifting, blended tiles;
- ``prune``: structured channel pruning (LD-Pruner's output-space importance; learned
  differentiable masks trained through the sampler, "Effortless Efficiency"), with real
  channel removal (``prune.prune``);
- ``mmd``: MMD few-step finetuning through the differentiable sampler (MMD-DDM);
- ``network``: replacing and counting a model's network.
"""
from __future__ import annotations

import importlib

#: submodules loaded on first attribute access
SUBMODULES = ("cache", "warm", "tiling", "prune", "mmd", "network")
#: public name -> submodule that defines it
EXPORTS = {
    "FeatureCache": "cache", "feature_cache": "cache", "CachePlan": "cache", "CacheStats": "cache",
    "plan_for": "cache", "network_plan": "cache", "unet_plan": "cache", "dit_plan": "cache",
    "diffusers_unet_plan": "cache",
}


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'diffinfer.accel' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(SUBMODULES) | set(EXPORTS))


__all__ = sorted(EXPORTS)
