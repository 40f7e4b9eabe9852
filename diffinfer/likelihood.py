"""Log-likelihood through the probability-flow ODE (instantaneous change of variables).

Song et al. 2021 ("Score-Based Generative Modeling through SDEs", appendix D.2), following
Chen et al. 2018 (neural ODEs) and Grathwohl et al. 2019 (FFJORD):
``log p_{t0}(x) = log p_{T}(x_T) + int_{t0}^{T} div v(x_t, t) dt`` along ``dx/dt = v``,
the velocity ``den.velocity``. The divergence is exact (one backward pass per dimension,
for small dimensions) or Hutchinson's estimate ``E[z^T (dv/dx) z]`` with Rademacher or
Gaussian probes held fixed along the path (FFJORD). Integration is classical RK4 on a
``grids.default_builder`` grid from ``t0`` up to ``T``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from . import grids
from .denoiser import DenoiserBase

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


@dataclass
class Likelihood:
    """``logp``: nats per sample ``[B]``; ``bpd``: bits per dimension ``[B]``;
    ``prior_logp``: the prior term ``[B]``; ``x_T``: the encoded noise; ``nfe``."""

    logp: Tensor
    bpd: Tensor
    prior_logp: Tensor
    x_T: Tensor
    nfe: int


def _divergence(den: DenoiserBase, x: Tensor, t, probes: Tensor | None) -> tuple[Tensor, Tensor]:
    """Velocity ``[B, ...]`` and its divergence ``[B]`` (exact, or averaged over ``probes [P, B, ...]``)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = den.velocity(x, t)
        flat_v = v.reshape(v.shape[0], -1)
        if probes is None:
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for d in range(flat_v.shape[1]):
                (g,) = torch.autograd.grad(flat_v[:, d].sum(), x, retain_graph=True)
                div = div + g.reshape(g.shape[0], -1)[:, d]
        else:
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for z in probes:
                (g,) = torch.autograd.grad((v * z).sum(), x, retain_graph=True)
                div = div + (g * z).reshape(x.shape[0], -1).sum(1)
            div = div / probes.shape[0]
    return v.detach(), div.detach()


def gaussian_prior(process) -> Callable[[Tensor, Tensor], Tensor]:
    """``log N(x; 0, sigma(T)^2 I)`` — the usual prior at the top of the path."""
    def logp(x: Tensor, t_max: Tensor) -> Tensor:
        s2 = float(process.sigma(t_max)) ** 2
        flat = x.reshape(x.shape[0], -1)
        return -0.5 * (flat * flat).sum(1) / s2 - 0.5 * flat.shape[1] * math.log(2 * math.pi * s2)
    return logp


def log_likelihood(den: DenoiserBase, x: Tensor, steps: int = 100, t_min: float | None = None,
                   t_max: float | None = None, divergence: str = "exact", n_probes: int = 1,
                   probe: str = "rademacher", prior: Callable | None = None, seed: int = 0) -> Likelihood:
    """Log-density of ``x`` ``[B, ...]`` at ``t_min`` under the model (default
    ``process.t_min``, or ``1e-3`` where that is 0: the velocity of an x0/eps model is
    singular at ``sigma = 0``).

    Args:
        steps: RK4 steps (4 velocity evaluations each).
        divergence: ``'exact'`` (``D`` backward passes per evaluation) or ``'hutchinson'``.
        n_probes / probe: Hutchinson probes per evaluation, ``'rademacher'`` or ``'gaussian'``.
        prior: ``prior(x_T, t_max) -> [B]`` log-density at the top; default
            ``N(0, sigma(t_max)^2 I)``. Give the exact marginal for exactness checks.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; valid: {', '.join(DIVERGENCES)}")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; valid: {', '.join(PROBES)}")
    process = den.process
    if t_min is None:
        t_min = process.t_min if process.t_min > 0 else 1e-3
    grid = grids.default_builder(process)(process, steps, t_max=t_max, t_min=t_min, final_zero=False).flip(0)  # ascending
    probes = None
    if divergence == "hutchinson":
        g = torch.Generator(device=x.device).manual_seed(seed)
        if probe == "rademacher":
            probes = torch.randint(0, 2, (n_probes,) + tuple(x.shape), generator=g, device=x.device).to(x.dtype) * 2 - 1
        else:
            probes = torch.randn((n_probes,) + tuple(x.shape), generator=g, device=x.device, dtype=x.dtype)
    nfe0 = den.nfe
    delta = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)  # int div v dt
    y = x.detach()
    for i in range(grid.numel() - 1):
        t0, t1 = grid[i], grid[i + 1]
        h = float(t1 - t0)
        tm = 0.5 * (t0 + t1)
        v1, d1 = _divergence(den, y, t0, probes)
        v2, d2 = _divergence(den, y + 0.5 * h * v1, tm, probes)
        v3, d3 = _divergence(den, y + 0.5 * h * v2, tm, probes)
        v4, d4 = _divergence(den, y + h * v3, t1, probes)
        y = y + h / 6.0 * (v1 + 2 * v2 + 2 * v3 + v4)
        delta = delta + h / 6.0 * (d1 + 2 * d2 + 2 * d3 + d4)
    prior = prior or gaussian_prior(process)
    prior_logp = prior(y, grid[-1])
    logp = prior_logp + delta
    dims = x[0].numel()
    return Likelihood(logp=logp, bpd=-logp / (dims * math.log(2.0)), prior_logp=prior_logp,
                      x_T=y, nfe=den.nfe - nfe0)
