"""Solvers by name: ``get(name, **options)``, ``names()``, ``describe()``.

Each solver is a small class with ``init``/``step`` (see ``base``), a declared ``order``
and a ``stochastic`` flag, and a docstring naming the algorithm it implements.
"""
from __future__ import annotations

from .base import Solver, State, points, select, times
from .ddim import DDIM, Euler, ddim_step, ddim_update
from .heun import Heun
from .dpmpp import DPMSolverPP, DPMSolverPP2MSDE, dpmpp_2m, dpmpp_3m
from .adaptive import AdaptiveRK
from .evodiff import EVODiff
from .sde import EulerMaruyama, PredictorCorrector
from .unipc import UniPC

REGISTRY: dict[str, type[Solver]] = {
    "euler": Euler,
    "heun": Heun,
    "ddim": DDIM,
    "ddpm": lambda **kw: DDIM(eta=kw.pop("eta", 1.0), **kw),
    "dpmpp-2m": dpmpp_2m,
    "dpmpp-3m": dpmpp_3m,
    "dpmpp-2m-sde": DPMSolverPP2MSDE,
    "unipc": UniPC,
    "evodiff": EVODiff,
    "euler-maruyama": EulerMaruyama,
    "pc": PredictorCorrector,
    "adaptive": AdaptiveRK,
}


def register(name: str, factory) -> None:
    REGISTRY[name] = factory


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name, **options) -> Solver:
    """A solver instance by name (or a ``Solver`` passed through); unknown names raise
    with the valid ones."""
    if isinstance(name, Solver):
        if options:
            raise ValueError("options are for solver names, not Solver instances")
        return name
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; valid: {', '.join(names())}") from None
    try:
        return factory(**options)
    except TypeError as e:
        raise ValueError(f"bad options for solver {name!r}: {e}") from None


def describe() -> list[dict]:
    """Name, order, stochasticity and docstring summary of every registered solver."""
    rows = []
    for n in names():
        s = get(n)
        doc = (type(s).__doc__ or "").strip().splitlines()
        rows.append({"name": n, "order": s.order, "stochastic": s.stochastic,
                     "summary": doc[0] if doc else ""})
    return rows


__all__ = ["Solver", "State", "select", "times", "get", "names", "register", "describe",
           "DDIM", "Euler", "Heun", "ddim_update", "ddim_step", "points", "DPMSolverPP", "DPMSolverPP2MSDE", "UniPC",
           "EVODiff", "EulerMaruyama", "PredictorCorrector", "AdaptiveRK"]
