"""First-order solvers: DDIM (any ``eta``; ``eta = 1`` is DDPM) and Euler (= DDIM, ``eta = 0``).

``ddim`` is the one DDIM update in the package: solvers, multistep first-order parts,
Heun's predictor, the SDE solvers' exact frozen-denoiser step and inversion all take their
weights from it.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from torch import Tensor

from ..grids.grid import Grid
from .base import Solver, SolverState, combine


class DDIMWeights(NamedTuple):
    """One DDIM step from ``(a0, s0)`` to ``(a1, s1)`` in both of its forms:
    ``x' = a1 x0 + keep eps + noise z`` and, with ``eps = (x - a0 x0)/s0``,
    ``x' = w_x x + w_x0 x0 + noise z``."""

    a1: float
    keep: float
    noise: float
    w_x: float
    w_x0: float


def ddim(a0: float, s0: float, a1: float, s1: float, eta: float = 0.0) -> DDIMWeights:
    """The DDIM step's weights (Python floats, float64 math).

    Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021), eq. 12, for any
    process: ``noise = eta * s1 * sqrt(1 - exp(-2h))``, ``keep = sqrt(s1^2 - noise^2)`` with
    ``exp(-h) = (a0 s1)/(s0 a1)`` (``h`` the step in half log-SNR); ``eta = 0`` is
    deterministic (``keep = s1``), ``eta = 1`` DDPM's ancestral step (Ho et al. 2020). The
    ``(x0, eps)`` form stays finite where ``a0 = 0`` (rectified flow at ``t = 1``)."""
    if eta == 0.0 or s1 == 0.0:
        keep, c = s1, 0.0
    else:
        ratio = (a0 * s1) / (s0 * a1)  # exp(-h), in [0, 1)
        c = eta * s1 * math.sqrt(max(1.0 - ratio * ratio, 0.0))
        keep = math.sqrt(max(s1 * s1 - c * c, 0.0))
    w_x = keep / s0
    return DDIMWeights(a1, keep, c, w_x, a1 - w_x * a0)


def ddim_at(grid: Grid, i: int, eta: float = 0.0) -> DDIMWeights:
    """``ddim`` from grid point ``i`` to ``i + 1`` (computed once per grid, step and ``eta``)."""
    return grid.memo(("ddim", i, eta), lambda: ddim(grid.alpha[i], grid.sigma[i], grid.alpha[i + 1],
                                                      grid.sigma[i + 1], eta))


def ddim_from_prediction(w: DDIMWeights, x0: Tensor, eps: Tensor, noise: Tensor | None = None) -> Tensor:
    """``a1 x0 + keep eps (+ noise z)``: the step in ``(x0, eps)`` form (``eps`` need not be
    consistent with the sample, as in inversion)."""
    return combine(x0, w.a1, (eps,), (w.keep,), noise, w.noise)


class DDIM(Solver):
    """DDIM (Song et al. 2021) with ``eta``; ``eta = 1`` is DDPM ancestral sampling.

    A step is ``x' = w_x x + w_x0 x0_hat + w_z z`` with the weights of ``ddim`` (Python
    floats from the grid), one model call for ``x0_hat`` and, for ``eta > 0``, noise from
    each row's own stream. The step to ``t = 0`` returns the denoised estimate."""

    name = "ddim"
    order = 1

    def __init__(self, eta: float = 0.0):
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = float(eta)
        self.stochastic = self.eta > 0

    def options(self) -> dict:
        return {"eta": self.eta}

    def step(self, den, x: Tensor, i: int, state: SolverState):
        grid = state.grid
        x0 = den.predict(x, grid.point(i)).x0  # [B, ...]
        if grid.t[i + 1] == 0.0:  # the grid's last point: the denoised estimate
            return x0, state
        w = ddim_at(grid, i, self.eta)
        if not self.stochastic:
            return combine(x, grid.on(x).sigma_ratio[i], (x0,), (w.w_x0,)), state
        return combine(x, w.w_x, (x0,), (w.w_x0,), state.rng.randn_like(x), w.noise), state


class Euler(DDIM):
    """Euler's method on the probability-flow ODE in the variable ``sigma/alpha`` with
    ``x/alpha`` (Karras et al. 2022, "EDM", Algorithm 1 without the correction; k-diffusion
    ``sample_euler``; diffusers ``EulerDiscreteScheduler``). In that variable the Euler step
    is exactly DDIM with ``eta = 0`` (Song et al. 2021, section 4.3), so this is that class;
    for rectified flow it is also Euler in ``t`` (diffusers ``FlowMatchEulerDiscreteScheduler``).
    """

    name = "euler"

    def __init__(self):
        super().__init__(eta=0.0)

    def options(self) -> dict:
        return {}
