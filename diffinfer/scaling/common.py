"""Shared pieces of the scaling drivers: per-sample cost counting, results, rollouts.

Cost unit: the papers on inference-time scaling (Ma et al. 2025; Singhal et al. 2025;
Jain et al. 2025) count *per-sample* network evaluations: denoising ``B`` particles for
one step costs ``B``. ``Tap`` counts that (``rows``) while the wrapped model's own NFE
counter (one per batched call) keeps counting as usual.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .. import grids
from .. import solvers as solver_registry
from ..denoiser import DenoiserBase, Prediction


class Tap(DenoiserBase):
    """A pass-through wrapper that counts per-sample evaluations (``rows``) and remembers
    the first data prediction since ``clear()`` (the solver's prediction at the start of a
    step, which SMC reuses for its potentials at no extra cost). It passes ``t`` on
    unchanged, so solver steps reach the wrapped model's grid-point path through it."""

    def __init__(self, den: DenoiserBase):
        self._wrap(den)
        self.rows = 0
        self.first: tuple[Tensor, Tensor] | None = None  # (x, x0_hat(x))

    def clear(self) -> None:
        self.first = None

    def _seen(self, x: Tensor, x0: Tensor) -> None:
        self.rows += x.shape[0]
        if self.first is None:
            self.first = (x, x0)

    def predict(self, x: Tensor, t) -> Prediction:
        pred = self.den.predict(x, t)
        self._seen(x, pred.x0)
        return pred

    def x0_at(self, x: Tensor, t) -> Tensor:
        """``x0_hat(x, t)``: the remembered prediction if it was made at this very ``x``,
        else a fresh evaluation."""
        if self.first is not None and self.first[0] is x:
            return self.first[1]
        return self.predict(x, t).x0

    def select(self, idx: Tensor) -> "Tap":
        new = Tap(self.den.select(idx))
        new.rows = self.rows
        return new


@dataclass
class ScalingResult:
    """``x``: the returned samples ``[B, ...]``; ``reward``: their rewards ``[B]``;
    ``nfe``: per-sample network evaluations spent; ``verifier_calls``: samples scored;
    ``info``: method-specific diagnostics (histories, weights, ESS, ...)."""

    x: Tensor
    reward: Tensor
    nfe: int
    verifier_calls: int
    method: str
    info: dict = field(default_factory=dict, repr=False)

    @property
    def cost(self) -> int:
        """NFE plus verifier calls: the budget axis of the scaling benchmark."""
        return self.nfe + self.verifier_calls


#: the time grid a driver uses: ``ts`` checked, or ``grids.default``
grid = grids.resolve


def sample_shape(shape) -> tuple[int, ...]:
    """One sample's shape (no batch dimension), checked."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or min(shape) < 1:
        raise ValueError(f"shape must be one sample's shape with positive sizes, got {shape}")
    return shape


def stochastic_solver_names() -> list[str]:
    return [row["name"] for row in solver_registry.describe() if row["stochastic"]]
