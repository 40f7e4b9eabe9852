"""First-order solvers: Euler (= DDIM with eta 0) and DDIM with noise (eta 1 = DDPM)."""
from __future__ import annotations

import torch

from ..process import expand_to
from .base import Solver, State, points

Tensor = torch.Tensor


def ddim_step(x: Tensor, here, there, x0: Tensor, eps: Tensor,
              eta: float = 0.0, noise: Tensor | None = None) -> Tensor:
    """One DDIM step from ``here`` to ``there`` (coefficients at the two times: a grid's
    ``PointCoefficients`` or ``Process.at(t)``) given the prediction at ``here``.

    Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021), eq. 12, for any
    process: ``x' = a' x0 + sqrt(s'^2 - c^2) eps + c z`` with
    ``c = eta * s' * sqrt(1 - exp(-2h))`` and ``exp(-h) = (a s')/(s a')`` (``h`` the log-SNR
    half-step). ``eta = 0`` is deterministic; ``eta = 1`` is DDPM's ancestral step (Ho et
    al. 2020). Written in ``x0`` and ``eps`` so it stays finite where ``alpha(t) = 0``.
    """
    if float(there.t) == 0.0:  # the grid's last point: the denoised estimate
        return x0
    a1, s1 = there.alpha, there.sigma
    if eta == 0.0 or float(s1) == 0.0:
        return there.cast("alpha", x) * x0 + there.cast("sigma", x) * eps
    a0, s0 = here.alpha, here.sigma
    ratio = (a0 * s1) / (s0 * a1)  # exp(-h), in [0, 1)
    c = eta * s1 * torch.sqrt(torch.clamp(1.0 - ratio * ratio, min=0.0))
    keep = torch.sqrt(torch.clamp(s1 * s1 - c * c, min=0.0))
    return there.cast("alpha", x) * x0 + expand_to(keep, x) * eps + expand_to(c, x) * noise


def ddim_update(den, x: Tensor, t: Tensor, t_next: Tensor, x0: Tensor, eps: Tensor,
                eta: float = 0.0, noise: Tensor | None = None) -> Tensor:
    """``ddim_step`` from time ``t`` to ``t_next`` of ``den.process`` (Song et al. 2021, eq. 12);
    the process is evaluated only where the step needs it."""
    p = den.process
    return ddim_step(x, p.at(t), p.at(t_next), x0, eps, eta, noise)


class DDIM(Solver):
    """DDIM (Song et al. 2021) with ``eta``; ``eta = 1`` is DDPM ancestral sampling."""

    name = "ddim"
    order = 1

    def __init__(self, eta: float = 0.0):
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = float(eta)
        self.stochastic = self.eta > 0

    def options(self) -> dict:
        return {"eta": self.eta}

    def step(self, den, x: Tensor, i: int, state: State):
        here, there = points(state, i)
        x0, eps = den.predict(x, here.t)
        noise = state["rng"].randn_like(x) if self.stochastic and float(there.t) > 0 else None
        return ddim_step(x, here, there, x0, eps, self.eta, noise), state


class Euler(DDIM):
    """Euler's method on the probability-flow ODE in the variable ``sigma/alpha`` with
    ``x/alpha`` (Karras et al. 2022, "EDM", Algorithm 1 without the correction; k-diffusion
    ``sample_euler``; diffusers ``EulerDiscreteScheduler``). In that variable the Euler step
    is exactly DDIM with ``eta = 0`` (Song et al. 2021, section 4.3), so this shares its code;
    for rectified flow it is also Euler in ``t`` (diffusers ``FlowMatchEulerDiscreteScheduler``).
    """

    name = "euler"

    def __init__(self):
        super().__init__(eta=0.0)

    def options(self) -> dict:
        return {}
