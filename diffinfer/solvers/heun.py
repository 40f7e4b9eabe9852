"""Heun's second-order method on the probability-flow ODE."""
from __future__ import annotations

import torch

from ..process import expand_to
from .base import Solver, State, points
from .ddim import ddim_step

Tensor = torch.Tensor
VARIABLES = ("auto", "sigma", "t")
#: 'auto' leaves the sigma variable where sigma/alpha exceeds 1e4 on the grid: x/alpha then
#: carries no precision (alpha = 0 at rectified flow's t = 1; cos(pi/2) ~ 6e-17 in float64)
SIGMA_RATIO_LIMIT_INV = 1e-4


class Heun(Solver):
    """Heun's method (explicit trapezoidal rule), Karras et al. 2022 "EDM", Algorithm 1.

    ``variable='sigma'`` integrates ``d(x/alpha)/d(sigma/alpha) = eps_hat`` as EDM and
    k-diffusion ``sample_heun`` do; ``variable='t'`` integrates ``dx/dt = a' x0_hat + s' eps_hat``
    (diffusers ``FlowMatchHeunDiscreteScheduler`` for flows). ``'auto'`` takes ``sigma`` unless
    ``alpha = 0`` on the grid (rectified flow at ``t = 1``), where ``sigma/alpha`` is infinite,
    or numerically negligible (``sigma/alpha > 1e4``, e.g. a cosine interpolant at ``t = 1``).
    The step to ``t = 0`` is an Euler step (it returns the denoised estimate): 2 NFE per
    step, 1 for the last.
    """

    name = "heun"
    order = 2
    evals_per_step = 2

    def __init__(self, variable: str = "auto"):
        if variable not in VARIABLES:
            raise ValueError(f"unknown variable {variable!r}; valid: {', '.join(VARIABLES)}")
        self.variable = variable

    def options(self) -> dict:
        return {"variable": self.variable}

    def init(self, den, x, ts, rng=None) -> State:
        state = super().init(den, x, ts, rng)
        variable = self.variable
        if variable == "auto":
            grid = state["grid"]
            variable = "t" if bool((grid.alpha <= SIGMA_RATIO_LIMIT_INV * grid.sigma).any()) else "sigma"
        state["variable"] = variable
        return state

    def step(self, den, x: Tensor, i: int, state: State):
        here, there = points(state, i)
        x0, eps = den.predict(x, here.t)
        x_euler = ddim_step(x, here, there, x0, eps)
        if float(there.t) == 0.0:
            return x_euler, state
        x0_b, eps_b = den.predict(x_euler, there.t)
        if state["variable"] == "sigma":
            h = there.sigma_over_alpha - here.sigma_over_alpha
            x_new = there.cast("alpha", x) * (x / here.cast("alpha", x) + expand_to(0.5 * h, x) * (eps + eps_b))
        else:
            u0 = here.cast("d_alpha", x) * x0 + here.cast("d_sigma", x) * eps
            u1 = there.cast("d_alpha", x) * x0_b + there.cast("d_sigma", x) * eps_b
            x_new = x + expand_to(0.5 * (there.t - here.t), x) * (u0 + u1)
        return x_new, state
