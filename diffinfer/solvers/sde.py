"""Reverse-time SDE solvers: Euler-Maruyama and predictor-corrector (Langevin).

Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole, "Score-Based Generative Modeling
through Stochastic Differential Equations" (ICLR 2021): the forward SDE
``dx = f x dt + g dW`` (``f, g^2`` from ``Process.sde``) has the reverse-time family

    dx = [f x - (g^2 + w^2)/2 * score] dt + w dW_bar,       t decreasing,

with the same marginals for any diffusion ``w(t) >= 0``: ``w = g`` is the reverse SDE of
eq. 6, ``w = 0`` the probability-flow ODE of eq. 13.

Where ``g^2`` is infinite (``alpha = 0``: rectified flow at ``t = 1``, where
``f = alpha'/alpha`` diverges) an Euler-Maruyama step is undefined. That step instead
takes the exact solution of the same SDE with the denoiser frozen at the step's start
(an exponential integrator; Lu et al. 2022 "DPM-Solver++" section 5, Gonzalez et al.
2023 "SEEDS"). In ``y = x/alpha``, ``rho = sigma/alpha`` and with ``w^2 = c g^2`` the
frozen SDE is linear and solves to

    x' = alpha' x0 + sigma' (rho'/rho)^c eps + sigma' sqrt(1 - (rho'/rho)^{2c}) z,

which is ``ddim_update`` with ``eta^2 = (1 - r^{2c}) / (1 - r^2)``, ``r = rho'/rho``
(``c = 1``: DDPM's ancestral step). At ``alpha = 0``, ``r = 0``, so the step is finite:
``x' = alpha' x0 + sigma' z`` for any ``c > 0``. EM is the ``h -> 0`` limit of the same
update, so both converge to the same law.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..process import as_time, expand_to
from .base import Solver, State, points
from .ddim import ddim_step

Tensor = torch.Tensor
PREDICTORS = ("euler-maruyama", "ancestral")
#: the Langevin step is at most this many times ``2 (snr sigma_t)^2`` (see ``PredictorCorrector``)
MAX_STEP_RATIO = 4.0


def diffusion_ratio(here, diffusion) -> Tensor:
    """``c(t) = w^2(t) / g^2(t)`` (float64 0-d) at ``here`` (``t`` and ``g2``, e.g. a grid's
    ``PointCoefficients``) for a user ``diffusion``: ``None`` (``c = 1``, the reverse SDE), a
    float ``c``, or a callable ``t -> w^2(t)`` (float64)."""
    if diffusion is None:
        return torch.ones((), dtype=torch.float64)
    if not callable(diffusion):
        return torch.as_tensor(float(diffusion), dtype=torch.float64)
    g2 = here.g2
    w2 = as_time(diffusion(as_time(here.t)))
    return torch.where(torch.isfinite(g2), w2 / g2, torch.zeros_like(g2))


def frozen_denoiser_step(x: Tensor, here, there, x0: Tensor, eps: Tensor,
                         c: Tensor, noise: Tensor | None) -> Tensor:
    """Exact solution from ``here`` to ``there`` (coefficients at the two times, e.g. a grid's
    ``PointCoefficients`` or ``Process.at``) of the reverse SDE with ``w^2 = c g^2`` and the
    prediction ``(x0, eps)`` held fixed (see the module docstring); finite where ``alpha = 0``."""
    if float(there.t) == 0.0:
        return x0
    r = (here.alpha * there.sigma) / (here.sigma * there.alpha)  # rho'/rho = exp(-h)
    if float(c) == 0.0 or float(r) == 0.0:
        eta2 = torch.ones((), dtype=torch.float64) if float(c) > 0 else torch.zeros((), dtype=torch.float64)
    else:
        eta2 = -torch.expm1(2.0 * c * torch.log(r)) / (-torch.expm1(2.0 * torch.log(r)))
    return ddim_step(x, here, there, x0, eps, eta=float(torch.sqrt(eta2)), noise=noise)


def euler_maruyama_step(x: Tensor, here, there, x0: Tensor, eps: Tensor,
                        c: Tensor, noise: Tensor | None) -> Tensor:
    """One Euler-Maruyama step of the reverse SDE (``w^2 = c g^2``) from ``here`` down to
    ``there`` (coefficients at the two times); the frozen-denoiser exact step where ``g^2`` is
    infinite; ``x0`` at ``t = 0``."""
    if float(there.t) == 0.0:
        return x0
    f, g2 = here.f, here.g2
    if not bool(torch.isfinite(f) & torch.isfinite(g2)):
        return frozen_denoiser_step(x, here, there, x0, eps, c, noise)
    dt = here.t - there.t  # > 0: time runs backwards
    score_coef = -0.5 * (1.0 + c) * g2 / here.sigma  # times -eps: -(g^2 + w^2)/2 * score
    drift = expand_to(f, x) * x + expand_to(score_coef, x) * (-eps)
    x_next = x - expand_to(dt, x) * drift
    if noise is not None and float(c) > 0:
        x_next = x_next + expand_to(torch.sqrt(c * g2 * dt), x) * noise
    return x_next


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

    def __init__(self, diffusion: float | Callable | None = None):
        constant = diffusion is not None and not callable(diffusion)
        if constant and not (math.isfinite(float(diffusion)) and float(diffusion) >= 0):
            raise ValueError(f"diffusion must be None, a float >= 0 or a callable t -> w^2(t), got {diffusion!r}")
        self.diffusion = diffusion
        self.stochastic = not (constant and float(diffusion) == 0.0)

    def options(self) -> dict:
        return {"diffusion": self.diffusion}

    def step(self, den, x: Tensor, i: int, state: State):
        here, there = points(state, i)
        x0, eps = den.predict(x, here.t)  # [B, ...]
        c = diffusion_ratio(here, self.diffusion)
        if not bool(torch.isfinite(here.g2)) and callable(self.diffusion):
            c = diffusion_ratio(there, self.diffusion)  # g^2 infinite at t: use the step's end
        noise = state["rng"].randn_like(x) if self.stochastic and float(there.t) > 0 else None
        return euler_maruyama_step(x, here, there, x0, eps, c, noise), state


class PredictorCorrector(Solver):
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 2-4).

    At each grid point ``t_i``: ``corrector_steps`` Langevin MCMC steps at fixed ``t_i``
    (Algorithm 4: ``x <- x + e score + sqrt(2 e) z`` with ``e = 2 (snr |z| / |score|)^2``,
    norms per sample, where the paper averages over the batch, so a sample does not depend
    on its batch), then the predictor to ``t_{i+1}``: ``'euler-maruyama'`` (reverse SDE,
    above) or ``'ancestral'`` (the reverse-diffusion / DDPM ancestral step,
    ``ddim_update`` with ``eta = 1``). The paper's VP factor ``alpha_i = 1 - beta_i`` in
    ``e`` is taken as 1 for every process. The step to ``t = 0`` returns the denoised
    estimate. NFE per step: ``1 + corrector_steps``.

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

    def langevin(self, den, x: Tensor, here, rng) -> Tensor:
        """``corrector_steps`` Langevin steps targeting ``p_t`` (Algorithm 4, per-sample norms,
        step bounded by ``MAX_STEP_RATIO`` times its high-dimensional value; class docstring)."""
        sigma, t = float(here.sigma), here.t
        cap = MAX_STEP_RATIO * 2.0 * (self.snr * sigma) ** 2
        for _ in range(self.corrector_steps):
            score = den.score(x, t)  # [B, ...]
            z = rng.randn_like(x)
            z_norm = z.flatten(1).norm(dim=1)  # [B]
            s_norm = score.flatten(1).norm(dim=1).clamp(min=torch.finfo(x.dtype).tiny)
            step = (2.0 * (self.snr * z_norm / s_norm) ** 2).clamp(max=cap)  # [B]
            step = expand_to(step, x)
            x = x + step * score + torch.sqrt(2.0 * step) * z
        return x

    def step(self, den, x: Tensor, i: int, state: State):
        here, there = points(state, i)
        rng = state["rng"]
        if self.corrector_steps > 0 and self.snr > 0:
            x = self.langevin(den, x, here, rng)
        x0, eps = den.predict(x, here.t)
        noise = rng.randn_like(x) if float(there.t) > 0 else None
        if self.predictor == "ancestral":
            return ddim_step(x, here, there, x0, eps, eta=1.0, noise=noise), state
        one = torch.ones((), dtype=torch.float64)
        return euler_maruyama_step(x, here, there, x0, eps, one, noise), state


__all__ = ["EulerMaruyama", "PredictorCorrector", "euler_maruyama_step", "frozen_denoiser_step",
           "diffusion_ratio", "PREDICTORS"]
