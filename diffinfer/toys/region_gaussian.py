"""A Gaussian oracle for region-modulated noise (SAM-DiffSR, ``diffinfer.region_noise``):
``x0 ~ N(mu, C)`` noised as ``x_t = alpha x0 + sigma (eps + m)`` with a per-region mean
shift ``m``. Its exact denoiser is the Gaussian posterior mean
``mu + alpha C (alpha^2 C + sigma^2 I)^{-1} (x_t - alpha mu - sigma m)``."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..process import Process
from ..region_noise import region_shift, region_values

_F64 = torch.float64


def region_gaussian(seed: int, dim: int = 6) -> tuple[Tensor, Tensor, Tensor]:
    """``(mu [D], C [D, D], m [D])``: a seeded Gaussian and a region shift (3 regions of
    random sizes, values from ``region_values(3, 1.0)``), float64."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(dim, generator=g, dtype=_F64) * 0.5
    A = torch.randn(dim, dim, generator=g, dtype=_F64) / math.sqrt(dim)
    C = 0.3 * A @ A.T + 0.05 * torch.eye(dim, dtype=_F64)
    labels = torch.randint(0, 3, (1, 1, 1, dim), generator=g)
    return mu, C, region_shift(labels, region_values(3, 1.0)).reshape(dim)


def modulated_denoiser(mu: Tensor, C: Tensor, m: Tensor, process: Process) -> Denoiser:
    """The exact ``E[x0 | x_t]`` under the modulated forward process (module docstring),
    per row's time, as an ``x0``-predicting ``Denoiser``."""
    eye = torch.eye(mu.numel(), dtype=_F64)

    def x0_hat(x, t):
        t = torch.as_tensor(t, dtype=_F64).reshape(-1).expand(x.shape[0])
        out = torch.empty_like(x)
        for tv in torch.unique(t):
            rows = t == tv
            a, s = float(process.alpha(tv)), float(process.sigma(tv))
            gain = a * C @ torch.linalg.inv(a * a * C + s * s * eye)  # [D, D]
            out[rows] = mu + (x[rows] - a * mu - s * m) @ gain.T
        return out

    return Denoiser(x0_hat, process, prediction="x0")
