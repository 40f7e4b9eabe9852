"""Solvers by name: ``get(name, **options)``, ``names()``, ``describe()``.

Each solver is a small class with ``init``/``step`` (see ``base``), a declared ``order``,
a ``stochastic`` flag, a typed state record, and a docstring naming the algorithm it
implements. Every fixed-grid step is ``x' = w_x x + sum_j w_j m_j (+ w_z z)`` with host
weights (``base.combine``).
"""
from __future__ import annotations

from ..registry import Registry
from .adaptive import AdaptiveRK, AdaptiveState, StepSizeController
from .base import MultistepState, Solver, SolverState, combine, select
from .ddim import DDIM, DDIMWeights, Euler, ddim, ddim_at, ddim_from_prediction
from .dpmpp import DPMSolverPP, DPMSolverPP2MSDE, dpmpp_2m, dpmpp_3m
from .evodiff import EVODiff
from .heun import Heun, HeunState
from .sde import EulerMaruyama, EulerMaruyamaState, PredictorCorrector
from .unipc import UniPC, UniPCState


def _ddpm(**options) -> DDIM:
    """DDPM ancestral sampling: DDIM with ``eta = 1`` (Ho et al. 2020)."""
    return DDIM(eta=options.pop("eta", 1.0), **options)


REGISTRY = Registry("solver", {
    "euler": Euler,
    "heun": Heun,
    "ddim": DDIM,
    "ddpm": _ddpm,
    "dpmpp-2m": dpmpp_2m,
    "dpmpp-3m": dpmpp_3m,
    "dpmpp-2m-sde": DPMSolverPP2MSDE,
    "unipc": UniPC,
    "evodiff": EVODiff,
    "euler-maruyama": EulerMaruyama,
    "pc": PredictorCorrector,
    "adaptive": AdaptiveRK,
})


def register(name: str, factory, *, replace: bool = False) -> None:
    """Add a solver factory under ``name`` (``replace=True`` to override an existing one)."""
    REGISTRY.register(name, factory, replace=replace)


def names() -> list[str]:
    return REGISTRY.names()


def get(name, **options) -> Solver:
    """A solver instance by name (or a ``Solver`` passed through); unknown names raise
    with the valid ones."""
    if isinstance(name, Solver):
        if options:
            raise ValueError("options are for solver names, not Solver instances")
        return name
    return REGISTRY.get(name, **options)


def describe() -> list[dict]:
    """Name, order, stochasticity and docstring summary of every registered solver."""
    rows = []
    for n in names():
        s = get(n)
        doc = (type(s).__doc__ or "").strip().splitlines()
        rows.append({"name": n, "order": s.order, "stochastic": s.stochastic,
                     "summary": doc[0] if doc else ""})
    return rows


__all__ = ["Solver", "SolverState", "MultistepState", "HeunState", "UniPCState", "AdaptiveState",
           "EulerMaruyamaState", "select", "combine", "get", "names", "register", "describe",
           "DDIM", "Euler", "Heun", "ddim", "ddim_at", "ddim_from_prediction", "DDIMWeights",
           "DPMSolverPP", "DPMSolverPP2MSDE", "UniPC", "EVODiff", "EulerMaruyama", "PredictorCorrector",
           "AdaptiveRK", "StepSizeController"]
