"""The solver protocol: explicit state in, explicit state out (docs/architecture.md).

``state = solver.init(den, x, ts, rng)`` then ``x, state = solver.step(den, x, i, state)``
moves ``x`` from ``ts[i]`` to ``ts[i + 1]``. A state is a small frozen record
(``SolverState`` or a subclass): it is returned, never mutated, and it declares which of
its fields are batch-first (``batch_fields``), so ``select(state, idx)`` can copy,
resample and branch particles mid-trajectory without guessing. A step to ``t = 0``
returns the denoised estimate.

``init`` evaluates the process once on the whole grid (``state.grid``, a ``Grid``: host
float64 coefficients, one cast per device). Every fixed-grid update is one form,

    x' = w_x x + sum_j w_j m_j (+ w_z z),

over the current sample, the model's predictions ``m_j`` (data predictions, or noise
predictions where a step is written in ``(x0, eps)``) and per-row noise ``z``, with weights
computed on the host in float64 and applied by ``combine``: a step converts no tensor to a
Python number and copies nothing to the device, so it never waits for an accelerator.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor

from ..denoiser import DenoiserBase
from ..grids.grid import Grid
from ..rng import SampleRNG


@dataclass(frozen=True)
class SolverState:
    """What every solver carries: the ``grid`` (shared by all rows) and the per-row random
    streams ``rng`` (``None`` for a deterministic solver run without a seed). Subclasses
    add fields and name the batch-first ones in ``batch_fields`` (tensors ``[B, ...]``, or
    tuples of them, possibly paired with grid indices)."""

    grid: Grid
    rng: SampleRNG | None = None

    batch_fields: ClassVar[tuple[str, ...]] = ()

    @property
    def ts(self) -> Tensor:
        return self.grid.ts

    def replace(self, **changes) -> "SolverState":
        """A copy with ``changes`` (what ``dataclasses.replace`` does, without re-running
        ``__init__``: a solver step calls it once or twice, so it is kept cheap)."""
        names = _field_names(type(self))
        unknown = changes.keys() - names
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {sorted(unknown)}")
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new

    def select(self, idx: Tensor) -> "SolverState":
        """The state of rows ``idx`` (repeats allowed): batch fields indexed, streams copied."""
        changes = {name: _take(getattr(self, name), idx) for name in self.batch_fields}
        if self.rng is not None:
            changes["rng"] = self.rng.select(idx)
        return self.replace(**changes)


@functools.cache
def _field_names(cls: type) -> frozenset:
    return frozenset(f.name for f in dataclasses.fields(cls))


def _take(value: Any, idx: Tensor) -> Any:
    """Rows ``idx`` of a batch field: tensors indexed, tuples element-wise, the rest kept."""
    if isinstance(value, Tensor):
        return value[idx.to(value.device)]
    if isinstance(value, tuple):
        return tuple(_take(v, idx) for v in value)
    return value


@dataclass(frozen=True)
class MultistepState(SolverState):
    """A multistep solver's state: ``history`` of ``(grid index, data prediction [B, ...])``,
    oldest first."""

    history: tuple[tuple[int, Tensor], ...] = ()

    batch_fields: ClassVar[tuple[str, ...]] = ("history",)

    def push(self, k: int, x0: Tensor, keep: int) -> tuple[tuple[int, Tensor], ...]:
        """The history with ``(k, x0)`` appended, keeping the newest ``keep`` entries."""
        return (self.history + ((k, x0),))[-keep:]


class Solver:
    """Base class. Subclasses set ``name``, ``order``, ``stochastic``, their ``State`` record
    and implement ``step``; ``init`` builds the record from ``initial_fields``."""

    name: str = "solver"
    order: int = 1
    stochastic: bool = False
    #: evaluations per step (for NFE budgeting); adaptive solvers report theirs in the state
    evals_per_step: int = 1
    State: ClassVar[type[SolverState]] = SolverState

    def init(self, den: DenoiserBase, x: Tensor, ts, rng: SampleRNG | None = None) -> SolverState:
        if self.stochastic and rng is None:
            raise ValueError(f"solver {self.name!r} is stochastic: pass seed= to sample() or an rng to init()")
        grid = Grid.of(den.process, ts)
        grid.on(x)  # cast once, before the first step
        return self.State(grid=grid, rng=rng, **self.initial_fields(grid, x))

    def initial_fields(self, grid: Grid, x: Tensor) -> dict:
        """The solver's own state fields at the start of a run."""
        return {}

    def step(self, den: DenoiserBase, x: Tensor, i: int, state: SolverState) -> tuple[Tensor, SolverState]:
        raise NotImplementedError

    def options(self) -> dict:
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


def combine(x: Tensor, w_x, preds: Sequence[Tensor], weights: Sequence[float],
            noise: Tensor | None = None, w_z: float = 0.0) -> Tensor:
    """``w_x * x + sum_j weights[j] * preds[j] + w_z * noise``: one multiply, then one
    in-place fused ``add_(m, alpha=w)`` per nonzero weight on that fresh tensor (nothing the
    caller holds is modified). ``w_x``: a 0-d tensor of ``x``'s dtype and device (cheapest,
    e.g. ``grid.on(x).sigma_ratio[i]``) or a Python float; ``weights``, ``w_z``: Python floats."""
    out = torch.mul(x, w_x)
    for m, w in zip(preds, weights):
        if w != 0.0:
            out.add_(m, alpha=w)
    if noise is not None and w_z != 0.0:
        out.add_(noise, alpha=w_z)
    return out


def select(state: SolverState, idx: Tensor) -> SolverState:
    """The state of rows ``idx`` (``SolverState.select``)."""
    return state.select(idx)
