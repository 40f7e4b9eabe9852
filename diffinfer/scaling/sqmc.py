"""Randomised quasi-Monte Carlo driving noise for sequential quasi-Monte Carlo (SQMC).

Gerber & Chopin 2015, "Sequential quasi-Monte Carlo" (JRSS-B), Algorithm 2: at each step
draw ``N`` points of a *scrambled* (randomised) Sobol sequence in ``[0, 1)^(1 + D)``,
sort them by their first coordinate, pick the ancestor of point ``n`` by inverting the
weights' CDF *in Hilbert order* at that first coordinate (``smc.hilbert_resample`` with
``u=``) and move it with the Gaussian noise ``Phi^-1`` of the other ``D`` coordinates. Each
point is uniform on the cube, so each new particle is, marginally, exactly what plain SMC
draws; jointly the points are spread evenly, so the particle set's error shrinks faster
than ``1/sqrt(N)`` (their Theorem 7). Scrambling: ``torch.quasirandom.SobolEngine``
(Owen-style linear matrix scrambling with a digital shift, seeded from the caller's
generator), plus a uniform jitter below the engine's 2^-30 resolution so every
coordinate is exactly uniform on ``[0, 1)`` and never 0 (``Phi^-1(0) = -inf``).
"""
from __future__ import annotations

import torch
from torch import Tensor

_F64 = torch.float64
#: ``torch.quasirandom.SobolEngine``'s dimension limit and bit resolution
MAX_DIM = 21201
_RESOLUTION = 2.0 ** -30


def qmc_uniform(n: int, dim: int, generator: torch.Generator) -> Tensor:
    """``n`` points ``[n, dim]`` (float64) of a freshly scrambled Sobol sequence, each
    exactly uniform on ``[0, 1)^dim`` and in ``(0, 1)``."""
    if not 1 <= int(dim) <= MAX_DIM:
        raise ValueError(f"quasi-Monte Carlo noise needs 1 <= dim <= {MAX_DIM}, got {dim}")
    seed = int(torch.randint(0, 2 ** 62, (), generator=generator))
    u = torch.quasirandom.SobolEngine(int(dim), scramble=True, seed=seed).draw(int(n), dtype=_F64)  # [n, dim]
    jitter = torch.rand(u.shape, dtype=_F64, generator=generator) * _RESOLUTION
    return (u + jitter).clamp(min=2.0 ** -60, max=1.0 - 2.0 ** -53)


def sqmc_points(n: int, dim: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One SQMC step's points: ``(u [n], z [n, dim])`` (float64), ``u`` ascending (the
    resampling coordinate) and ``z`` the standard normal noise ``Phi^-1`` of the other
    coordinates of the same points, in the same order."""
    p = qmc_uniform(n, 1 + int(dim), generator)  # [n, 1 + dim]
    p = p[torch.argsort(p[:, 0], stable=True)]
    return p[:, 0].contiguous(), torch.special.ndtri(p[:, 1:])
