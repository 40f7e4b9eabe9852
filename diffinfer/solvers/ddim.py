"""First-order solvers: Euler (= DDIM with eta 0) and DDIM with noise (eta 1 = DDPM)."""
from __future__ import annotations

import math

import torch

from .base import Solver, State, combine

Tensor = torch.Tensor


def ddim_split(a0: float, s0: float, a1: float, s1: float, eta: float = 0.0) -> tuple[float, float]:
    """``(keep, c)`` of the DDIM step ``x' = a1 x0 + keep eps + c z`` from ``(a0, s0)`` to
    ``(a1, s1)`` (``alpha``, ``sigma`` at the two times, Python floats, float64 math).

    Song, Meng & Ermon, "Denoising Diffusion Implicit Models" (ICLR 2021), eq. 12, for any
    process: ``c = eta * s1 * sqrt(1 - exp(-2h))``, ``keep = sqrt(s1^2 - c^2)`` with
    ``exp(-h) = (a0 s1)/(s0 a1)`` (``h`` the log-SNR half-step); ``eta = 0`` is
    deterministic (``keep = s1``), ``eta = 1`` DDPM's ancestral step (Ho et al. 2020)."""
    if eta == 0.0 or s1 == 0.0:
        return s1, 0.0
    ratio = (a0 * s1) / (s0 * a1)  # exp(-h), in [0, 1)
    c = eta * s1 * math.sqrt(max(1.0 - ratio * ratio, 0.0))
    return math.sqrt(max(s1 * s1 - c * c, 0.0)), c


def ddim_weights(host, i: int, eta: float = 0.0) -> tuple[float, float, float]:
    """``(w_x, w_x0, w_z)`` of the DDIM step from grid point ``i`` to ``i + 1`` in data
    prediction form, ``x' = w_x x + w_x0 x0 + w_z z`` (``host``: ``GridCoefficients.host()``).
    It is ``ddim_split`` with ``eps = (x - a0 x0)/s0``, finite where ``alpha = 0``; with
    ``eta = 0``, ``w_x = s1/s0`` (``GridCoefficients.sigma_ratios``)."""
    a0, s0, a1, s1 = host.alpha[i], host.sigma[i], host.alpha[i + 1], host.sigma[i + 1]
    keep, c = ddim_split(a0, s0, a1, s1, eta)
    w_x = keep / s0
    return w_x, a1 - w_x * a0, c


def ddim_step(x: Tensor, here, there, x0: Tensor, eps: Tensor,
              eta: float = 0.0, noise: Tensor | None = None) -> Tensor:
    """One DDIM step (``ddim_split``) from ``here`` to ``there`` (coefficients at two scalar
    times: a grid's ``PointCoefficients`` or ``Process.at(t)``) given a prediction
    ``(x0, eps)`` at ``here`` (``eps`` need not be consistent with ``x``, as in inversion);
    the step to ``t = 0`` returns ``x0``. Written in ``x0`` and ``eps`` so it stays finite
    where ``alpha(t) = 0``. Solver steps use the data-prediction form (``ddim_weights``)."""
    if float(there.t) == 0.0:  # the grid's last point: the denoised estimate
        return x0
    a1 = float(there.alpha)
    keep, c = ddim_split(float(here.alpha), float(here.sigma), a1, float(there.sigma), eta)
    out = torch.add(x0 * a1, eps, alpha=keep)
    return out if c == 0.0 else out.add_(noise, alpha=c)


def ddim_update(den, x: Tensor, t: Tensor, t_next: Tensor, x0: Tensor, eps: Tensor,
                eta: float = 0.0, noise: Tensor | None = None) -> Tensor:
    """``ddim_step`` from time ``t`` to ``t_next`` of ``den.process`` (Song et al. 2021, eq. 12);
    the process is evaluated only where the step needs it."""
    p = den.process
    return ddim_step(x, p.at(t), p.at(t_next), x0, eps, eta, noise)


class DDIM(Solver):
    """DDIM (Song et al. 2021) with ``eta``; ``eta = 1`` is DDPM ancestral sampling.

    A step is ``x' = w_x x + w_x0 x0_hat + w_z z`` with the weights of ``ddim_weights``
    (Python floats from the grid), one model call for ``x0_hat`` (``den.x0_on_grid``) and, for
    ``eta > 0``, noise from each row's own stream."""

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
        grid = state["grid"]
        host = grid.host()
        x0 = den.x0_on_grid(x, grid[i])  # [B, ...]
        if host.t[i + 1] == 0.0:  # the grid's last point: the denoised estimate
            return x0, state
        w_x, w_x0, w_z = ddim_weights(host, i, self.eta)
        if not self.stochastic:
            return combine(x, grid.sigma_ratios(x)[i], (x0,), (w_x0,)), state
        x_next = combine(x, w_x, (x0,), (w_x0,))
        return x_next.add_(state["rng"].randn_like(x), alpha=w_z), state


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
