"""Heun's second-order method on the probability-flow ODE."""
from __future__ import annotations

import torch

from ..process import expand_to
from .base import Solver, State, times
from .ddim import ddim_update

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
            p, ts = den.process, state["ts"]
            variable = "t" if bool((p.alpha(ts) <= SIGMA_RATIO_LIMIT_INV * p.sigma(ts)).any()) else "sigma"
        state["variable"] = variable
        return state

    def step(self, den, x: Tensor, i: int, state: State):
        t, t_next = times(state, i)
        x0, eps = den.predict(x, t)
        x_euler = ddim_update(den, x, t, t_next, x0, eps)
        if float(t_next) == 0.0:
            return x_euler, state
        p = den.process
        x0_b, eps_b = den.predict(x_euler, t_next)
        if state["variable"] == "sigma":
            a0, a1 = p.alpha(t), p.alpha(t_next)
            h = p.sigma(t_next) / a1 - p.sigma(t) / a0
            x_new = expand_to(a1, x) * (x / expand_to(a0, x) + expand_to(0.5 * h, x) * (eps + eps_b))
        else:
            u0 = expand_to(p.d_alpha(t), x) * x0 + expand_to(p.d_sigma(t), x) * eps
            u1 = expand_to(p.d_alpha(t_next), x) * x0_b + expand_to(p.d_sigma(t_next), x) * eps_b
            x_new = x + expand_to(0.5 * (t_next - t), x) * (u0 + u1)
        return x_new, state
