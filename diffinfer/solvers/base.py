"""The solver protocol: explicit state in, explicit state out (DESIGN.md section 1).

``state = solver.init(den, x, ts, rng)`` then ``x, state = solver.step(den, x, i, state)``
moves ``x`` from ``ts[i]`` to ``ts[i + 1]``. The state is a dict; every tensor in it has
the batch first (or is shared: the grid ``ts`` and its coefficients ``grid``), so ``select(state, idx)`` can copy, resample and
branch particles mid-trajectory. A step to ``t = 0`` returns the denoised estimate.

``init`` evaluates the process once on the whole grid (``state['grid']``, a
``GridCoefficients``) and prepares it for ``x`` (``GridCoefficients.prepare``: its
coefficients as Python floats, ``host()``, and the per-step ``sigma`` ratios and times
cast once to ``x``'s dtype and device). Steps read them by grid index instead of
re-evaluating the process. The deterministic solvers write every update in data-prediction
form, ``x' = w_x x + sum_j w_j m_j`` over the current and past data predictions ``m_j``,
with weights computed on the host in float64 and applied by ``combine`` (one multiply and
one fused ``add_`` per term): a step converts no tensor to a Python number and copies
nothing to the device, so it never waits for an accelerator.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..denoiser import DenoiserBase
from ..process import GridCoefficients, PointCoefficients, as_time
from ..rng import SampleRNG

Tensor = torch.Tensor
State = dict

# keys of the state that are not per-sample
SHARED_KEYS = ("ts", "grid")


class Solver:
    """Base class. Subclasses set ``name``, ``order``, ``stochastic`` and implement ``step``."""

    name: str = "solver"
    order: int = 1
    stochastic: bool = False
    #: evaluations per step (for NFE budgeting); adaptive solvers report theirs in the state
    evals_per_step: int = 1

    def init(self, den: DenoiserBase, x: Tensor, ts: Tensor, rng: SampleRNG | None = None) -> State:
        if self.stochastic and rng is None:
            raise ValueError(f"solver {self.name!r} is stochastic: pass seed= to sample() or an rng to init()")
        ts = as_time(ts)
        return {"ts": ts, "grid": den.process.on_grid(ts).prepare(x), "rng": rng}

    def step(self, den: DenoiserBase, x: Tensor, i: int, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError

    def options(self) -> dict:
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def times(state: State, i: int) -> tuple[Tensor, Tensor]:
    """``(t_i, t_{i+1})`` as float64 0-d tensors."""
    ts = state["ts"]
    return ts[i], ts[i + 1]


def points(state: State, i: int) -> tuple[PointCoefficients, PointCoefficients]:
    """The process's coefficients at ``(t_i, t_{i+1})`` from the state's precomputed grid."""
    grid: GridCoefficients = state["grid"]
    return grid[i], grid[i + 1]


def combine(x: Tensor, w_x, preds: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """``w_x * x + sum_j weights[j] * preds[j]``: one multiply, then one in-place fused
    ``add_(m, alpha=w)`` per nonzero weight on that fresh tensor (so nothing the caller
    holds is modified). ``w_x``: a 0-d tensor of ``x``'s dtype and device (cheapest, e.g.
    ``GridCoefficients.sigma_ratios(x)[i]``) or a Python float; ``weights``: Python floats."""
    out = torch.mul(x, w_x)
    for m, w in zip(preds, weights):
        if w != 0.0:
            out.add_(m, alpha=w)
    return out


def select(state: State, idx: Tensor) -> State:
    """The state of rows ``idx`` (repeats allowed): batch-first tensors are indexed,
    the random streams copied, shared entries (the grid) kept."""
    out: dict[str, Any] = {}
    for k, v in state.items():
        if k in SHARED_KEYS or v is None:
            out[k] = v
        elif isinstance(v, Tensor):
            out[k] = v[idx]
        elif hasattr(v, "select"):
            out[k] = v.select(idx)
        elif isinstance(v, list):  # history lists of batch-first tensors
            out[k] = [e[idx] if isinstance(e, Tensor) else e for e in v]
        else:
            out[k] = v
    return out
