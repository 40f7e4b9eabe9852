"""Reverse-time SDE solvers: Euler-Maruyama and predictor-corrector (Langevin).

Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole, "Score-Based Generative Modeling
through Stochastic Differential Equations" (ICLR 2021): the forward SDE
``dx = f x dt + g dW`` (``f, g^2`` from ``Process.at(t)``) has the reverse-time family

    dx = [f x - (g^2 + w^2)/2 * score] dt + w dW_bar,       t decreasing,

with the same marginals for any diffusion ``w(t) >= 0``: ``w = g`` is the reverse SDE of
eq. 6, ``w = 0`` the probability-flow ODE of eq. 13. With ``score = -eps/sigma`` an
Euler-Maruyama step from ``t`` down to ``t'`` (``dt = t - t' > 0``, ``w^2 = c g^2``) is the
one step form ``x' = (1 - f dt) x - ((1 + c) g^2 dt / (2 sigma)) eps + sqrt(c g^2 dt) z``.

Where ``g^2`` is infinite (``alpha = 0``: rectified flow at ``t = 1``, where
``f = alpha'/alpha`` diverges) an Euler-Maruyama step is undefined. That step instead
takes the exact solution of the same SDE with the denoiser frozen at the step's start
(an exponential integrator; Lu et al. 2022 "DPM-Solver++" section 5, Gonzalez et al.
2023 "SEEDS"). In ``y = x/alpha``, ``rho = sigma/alpha`` and with ``w^2 = c g^2`` the
frozen SDE is linear and solves to

    x' = alpha' x0 + sigma' (rho'/rho)^c eps + sigma' sqrt(1 - (rho'/rho)^{2c}) z,

which is the DDIM step with ``eta^2 = (1 - r^{2c}) / (1 - r^2)``, ``r = rho'/rho``
(``c = 1``: DDPM's ancestral step). At ``alpha = 0``, ``r = 0``, so the step is finite:
``x' = alpha' x0 + sigma' z`` for any ``c > 0``. EM is the ``h -> 0`` limit of the same
update, so both converge to the same law.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..grids.grid import Grid
from ..process import as_time, expand_to
from .base import Solver, SolverState, combine
from .ddim import ddim, ddim_at, ddim_from_prediction

PREDICTORS = ("euler-maruyama", "ancestral")
#: the Langevin step is at most this many times ``2 (snr sigma_t)^2`` (see ``PredictorCorrector``)
MAX_STEP_RATIO = 4.0


def diffusion_ratios(grid: Grid, diffusion) -> tuple[float, ...]:
    """``c(t_k) = w^2(t_k) / g^2(t_k)`` at every grid point (Python floats) for a user
    ``diffusion``: ``None`` (``c = 1``, the reverse SDE), a float ``c``, or a callable
    ``t -> w^2(t)`` (float64 in, out; evaluated once per grid; ``0`` where ``g^2`` is infinite)."""
    if diffusion is None:
        return (1.0,) * len(grid)
    if not callable(diffusion):
        return (float(diffusion),) * len(grid)
    w2 = as_time(diffusion(grid.ts)).expand(grid.ts.shape).tolist()
    # g^2 = 0 only at t = 0, the grid's last point, where no step starts
    return tuple((w / g if g != 0.0 else math.inf) if math.isfinite(g) else 0.0 for w, g in zip(w2, grid.g2))


def frozen_denoiser_weights(grid: Grid, i: int, c: float):
    """DDIM weights of the exact step from point ``i`` to ``i + 1`` of the reverse SDE with
    ``w^2 = c g^2`` and the prediction held fixed (module docstring); finite where ``alpha = 0``."""
    a0, s0, a1, s1 = grid.alpha[i], grid.sigma[i], grid.alpha[i + 1], grid.sigma[i + 1]
    r = (a0 * s1) / (s0 * a1)  # rho'/rho = exp(-h)
    if c == 0.0 or r == 0.0:
        eta2 = 1.0 if c > 0 else 0.0
    else:
        eta2 = -math.expm1(2.0 * c * math.log(r)) / -math.expm1(2.0 * math.log(r))
    return ddim(a0, s0, a1, s1, eta=math.sqrt(eta2))


def reverse_sde_step(grid: Grid, i: int, x: Tensor, x0: Tensor, eps: Tensor, c: float,
                     noise: Tensor | None) -> Tensor:
    """One Euler-Maruyama step of the reverse SDE (``w^2 = c g^2``) from point ``i`` down to
    ``i + 1``; the frozen-denoiser exact step where ``g^2`` is infinite; ``x0`` at ``t = 0``."""
    if grid.t[i + 1] == 0.0:
        return x0
    f, g2 = grid.f[i], grid.g2[i]
    if not (math.isfinite(f) and math.isfinite(g2)):
        return ddim_from_prediction(frozen_denoiser_weights(grid, i, c), x0, eps, noise)
    dt = grid.t[i] - grid.t[i + 1]  # > 0: time runs backwards
    w_z = math.sqrt(c * g2 * dt) if c > 0 else 0.0
    return combine(x, 1.0 - f * dt, (eps,), (-0.5 * (1.0 + c) * g2 * dt / grid.sigma[i],), noise, w_z)


@dataclass(frozen=True)
class EulerMaruyamaState(SolverState):
    """``ratios``: ``c(t_k) = w^2/g^2`` at each grid point (host floats, ``diffusion_ratios``)."""

    ratios: tuple[float, ...] = ()


class EulerMaruyama(Solver):
    """Euler-Maruyama on the reverse-time SDE (Song et al. 2021, section 3.3 / appendix),
    ``dx = [f x - (g^2 + w^2)/2 score] dt + w dW`` with ``w^2 = c g^2``.

    ``diffusion``: ``None`` (``w = g``, the reverse SDE), a float ``c >= 0`` (``0`` is the
    probability-flow ODE by Euler in ``t``), or a callable ``t -> w^2(t)``. Steps from a
    point where ``g^2`` is infinite (rectified flow at ``t = 1``) use the exact
    frozen-denoiser solution (module docstring). Noise from each row's own stream; the step
    to ``t = 0`` returns the denoised estimate. Strong order 1/2, weak order 1.
    """

    name = "euler-maruyama"
    order = 1
    stochastic = True
    State = EulerMaruyamaState

    def __init__(self, diffusion: float | Callable | None = None):
        constant = diffusion is not None and not callable(diffusion)
        if constant and not (math.isfinite(float(diffusion)) and float(diffusion) >= 0):
            raise ValueError(f"diffusion must be None, a float >= 0 or a callable t -> w^2(t), got {diffusion!r}")
        self.diffusion = diffusion
        self.stochastic = not (constant and float(diffusion) == 0.0)

    def options(self) -> dict:
        return {"diffusion": self.diffusion}

    def initial_fields(self, grid, x) -> dict:
        return {"ratios": diffusion_ratios(grid, self.diffusion)}

    def step(self, den, x: Tensor, i: int, state: EulerMaruyamaState):
        grid = state.grid
        x0, eps = den.predict(x, grid.point(i))  # [B, ...]
        c = state.ratios[i]
        if not math.isfinite(grid.g2[i]) and callable(self.diffusion):
            c = state.ratios[i + 1]  # g^2 infinite at t: use the step's end
        noise = state.rng.randn_like(x) if self.stochastic and grid.t[i + 1] > 0 else None
        return reverse_sde_step(grid, i, x, x0, eps, c, noise), state


class PredictorCorrector(Solver):
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 2-4).

    At each grid point ``t_i``: ``corrector_steps`` Langevin MCMC steps at fixed ``t_i``
    (Algorithm 4: ``x <- x + e score + sqrt(2 e) z`` with ``e = 2 (snr |z| / |score|)^2``,
    norms per sample, where the paper averages over the batch, so a sample does not depend
    on its batch), then the predictor to ``t_{i+1}``: ``'euler-maruyama'`` (reverse SDE,
    above) or ``'ancestral'`` (the reverse-diffusion / DDPM ancestral step, DDIM with
    ``eta = 1``). The paper's VP factor ``alpha_i = 1 - beta_i`` in ``e`` is taken as 1 for
    every process. The step to ``t = 0`` returns the denoised estimate. NFE per step:
    ``1 + corrector_steps``.

    In high dimension ``|z|^2 ~ d`` and ``|score|^2 ~ d / sigma_t^2``, so Algorithm 4's step
    is about ``2 (snr sigma_t)^2``; in low dimension ``|score|`` of a single sample can
    vanish (between modes) and the step would diverge, so it is capped at
    ``MAX_STEP_RATIO = 4`` times that value (the marginal's variance is at least
    ``sigma_t^2`` per direction for any data, so the capped step stays small against it).
    """

    name = "pc"
    order = 1
    stochastic = True

    def __init__(self, snr: float = 0.16, corrector_steps: int = 1, predictor: str = "euler-maruyama"):
        if predictor not in PREDICTORS:
            raise ValueError(f"unknown predictor {predictor!r}; valid: {', '.join(PREDICTORS)}")
        if not (math.isfinite(float(snr)) and float(snr) >= 0):
            raise ValueError(f"snr must be a finite number >= 0, got {snr!r}")
        if int(corrector_steps) != corrector_steps or corrector_steps < 0:
            raise ValueError(f"corrector_steps must be an integer >= 0, got {corrector_steps!r}")
        self.snr, self.corrector_steps, self.predictor = float(snr), int(corrector_steps), predictor
        self.evals_per_step = 1 + (self.corrector_steps if self.snr > 0 else 0)

    def options(self) -> dict:
        return {"snr": self.snr, "corrector_steps": self.corrector_steps, "predictor": self.predictor}

    def langevin(self, den, x: Tensor, grid: Grid, i: int, rng) -> Tensor:
        """``corrector_steps`` Langevin steps targeting ``p_t`` at grid point ``i`` (Algorithm 4,
        per-sample norms, step bounded by ``MAX_STEP_RATIO`` times its high-dimensional value)."""
        sigma = grid.sigma[i]
        cap = MAX_STEP_RATIO * 2.0 * (self.snr * sigma) ** 2
        for _ in range(self.corrector_steps):
            score = den.predict(x, grid.point(i)).eps * (-1.0 / sigma)  # [B, ...]
            z = rng.randn_like(x)
            z_norm = z.flatten(1).norm(dim=1)  # [B]
            s_norm = score.flatten(1).norm(dim=1).clamp(min=torch.finfo(x.dtype).tiny)
            step = expand_to((2.0 * (self.snr * z_norm / s_norm) ** 2).clamp(max=cap), x)  # [B, 1, ...]
            x = x + step * score + torch.sqrt(2.0 * step) * z
        return x

    def step(self, den, x: Tensor, i: int, state: SolverState):
        grid, rng = state.grid, state.rng
        if self.corrector_steps > 0 and self.snr > 0:
            x = self.langevin(den, x, grid, i, rng)
        x0, eps = den.predict(x, grid.point(i))
        noise = rng.randn_like(x) if grid.t[i + 1] > 0 else None
        if self.predictor == "ancestral":
            if noise is None:
                return x0, state
            return ddim_from_prediction(ddim_at(grid, i, eta=1.0), x0, eps, noise), state
        return reverse_sde_step(grid, i, x, x0, eps, 1.0, noise), state
