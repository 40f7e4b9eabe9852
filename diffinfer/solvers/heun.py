"""Heun's second-order method on the probability-flow ODE."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import Solver, SolverState, combine
from .ddim import ddim_at

VARIABLES = ("auto", "sigma", "t")
#: 'auto' leaves the sigma variable where sigma/alpha exceeds 1e4 on the grid: x/alpha then
#: carries no precision (alpha = 0 at rectified flow's t = 1; cos(pi/2) ~ 6e-17 in float64)
SIGMA_RATIO_LIMIT_INV = 1e-4


@dataclass(frozen=True)
class HeunState(SolverState):
    """``variable``: the integration variable chosen for the grid (``'sigma'`` or ``'t'``)."""

    variable: str = "sigma"


class Heun(Solver):
    """Heun's method (explicit trapezoidal rule), Karras et al. 2022 "EDM", Algorithm 1.

    ``variable='sigma'`` integrates ``d(x/alpha)/d(sigma/alpha) = eps_hat`` as EDM and
    k-diffusion ``sample_heun`` do; ``variable='t'`` integrates ``dx/dt = a' x0_hat + s' eps_hat``
    (diffusers ``FlowMatchHeunDiscreteScheduler`` for flows). ``'auto'`` takes ``sigma`` unless
    ``alpha = 0`` on the grid (rectified flow at ``t = 1``), where ``sigma/alpha`` is infinite,
    or numerically negligible (``sigma/alpha > 1e4``, e.g. a cosine interpolant at ``t = 1``).
    The predictor is the DDIM (Euler) step ``x_e``; the corrector is

    - sigma: ``x' = (a1/a0) x + (a1 h/2) (eps + eps')``, ``h = s1/a1 - s0/a0``;
    - t: ``x' = x + (dt/2) (a0' x0 + s0' eps + a1' x0' + s1' eps')``,

    with ``eps = (x - a0 x0)/s0``, ``eps' = (x_e - a1 x0')/s1``: each stage is one ``combine``
    of the samples and the data predictions with host weights (``weights``).

    The step to ``t = 0`` is an Euler step (it returns the denoised estimate): 2 NFE per
    step, 1 for the last.
    """

    name = "heun"
    order = 2
    evals_per_step = 2
    State = HeunState

    def __init__(self, variable: str = "auto"):
        if variable not in VARIABLES:
            raise ValueError(f"unknown variable {variable!r}; valid: {', '.join(VARIABLES)}")
        self.variable = variable

    def options(self) -> dict:
        return {"variable": self.variable}

    def initial_fields(self, grid, x) -> dict:
        variable = self.variable
        if variable == "auto":
            tiny = any(a <= SIGMA_RATIO_LIMIT_INV * s for a, s in zip(grid.alpha, grid.sigma))
            variable = "t" if tiny else "sigma"
        return {"variable": variable}

    @staticmethod
    def weights(grid, i: int, variable: str) -> tuple[float, tuple[float, float, float]]:
        """``(w_x, (w_x0, w_xe, w_x0e))`` of the corrector over ``(x, x0, x_euler, x0_euler)``:
        the two stages above with ``eps = (x - a x0)/s`` at both points written out, so the
        step is one ``combine`` of data predictions."""
        a0, s0, a1, s1 = grid.alpha[i], grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1]
        if variable == "sigma":
            k = 0.5 * a1 * (s1 / a1 - s0 / a0)  # (a1 h / 2) times eps + eps'
            return a1 / a0 + k / s0, (-k * a0 / s0, k / s1, -k * a1 / s1)
        hd = 0.5 * (grid.t[i + 1] - grid.t[i])  # dt / 2 times (a0' x0 + s0' eps + a1' x0' + s1' eps')
        ds0, ds1 = grid.d_sigma[i], grid.d_sigma[i + 1]
        return 1.0 + hd * ds0 / s0, (hd * (grid.d_alpha[i] - ds0 * a0 / s0), hd * ds1 / s1,
                                     hd * (grid.d_alpha[i + 1] - ds1 * a1 / s1))

    def step(self, den, x: Tensor, i: int, state: HeunState):
        grid = state.grid
        x0 = den.predict(x, grid.point(i)).x0  # [B, ...]
        if grid.t[i + 1] == 0.0:  # the denoised estimate
            return x0, state
        x_euler = combine(x, grid.on(x).sigma_ratio[i], (x0,), (ddim_at(grid, i).w_x0,))  # DDIM, eta = 0
        x0_b = den.predict(x_euler, grid.point(i + 1)).x0
        w_x, w = self.weights(grid, i, state.variable)
        return combine(x, w_x, (x0, x_euler, x0_b), w), state
