"""An exact oracle for bridges between paired domains: jointly Gaussian pairs ``(x0, x1)``.

With ``(x0, x1) ~ N((m0, m1), [[S00, S01], [S10, S11]])`` the conditional law of the target
given the source is ``N(mu(x1), P)``, ``mu = m0 + S01 S11^-1 (x1 - m1)``,
``P = S00 - S01 S11^-1 S10``, and on a bridge ``x_t = alpha x0 + b x1 + sigma eps``
(``diffinfer.bridges.BrownianBridge``) the exact bridge denoiser is linear:

    E[x0 | x_t, x1] = mu + alpha P (alpha^2 P + sigma^2 I)^-1 (x_t - b x1 - alpha mu),

computed through the eigendecomposition of ``P`` (``mu`` where ``alpha = 0``, i.e. at ``t = 1``,
where ``x_t = x1`` says nothing more). A linear energy ``E(x0) = -r . x0`` tilts the target to
``N(mu + P r, P)`` (``tilted``).

With that denoiser every step of ``bridges.BridgeSampler`` is affine in ``x_t`` plus Gaussian
noise, so the sampler's output law on a grid is Gaussian and known exactly
(``bridge_sampler_law``: mean and covariance pushed through the steps, with the weights
written from the Brownian bridge's formulas, not taken from ``BrownianBridge.step_weights``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..process import as_time

_F64 = torch.float64


class GaussianPair:
    """Jointly Gaussian ``(x0, x1)`` in ``R^d x R^d`` (float64): ``mean0``, ``mean1`` ``[d]``,
    ``cov`` ``[2d, 2d]`` (``x0`` first)."""

    def __init__(self, mean0: Tensor, mean1: Tensor, cov: Tensor):
        self.mean0 = torch.as_tensor(mean0, dtype=_F64).reshape(-1)
        self.mean1 = torch.as_tensor(mean1, dtype=_F64).reshape(-1)
        d = self.mean0.numel()
        cov = torch.as_tensor(cov, dtype=_F64)
        if self.mean1.numel() != d or cov.shape != (2 * d, 2 * d):
            raise ValueError(f"need means [d] and cov [2d, 2d], got {d}, {self.mean1.numel()}, {tuple(cov.shape)}")
        cov = 0.5 * (cov + cov.T)
        if float(torch.linalg.eigvalsh(cov).min()) <= 0:
            raise ValueError("the joint covariance must be positive definite")
        self.dim, self.cov = d, cov
        s00, s01, s11 = cov[:d, :d], cov[:d, d:], cov[d:, d:]
        self.gain = torch.linalg.solve(s11, s01.T).T  # [d, d] S01 S11^-1
        p = s00 - self.gain @ s01.T
        self.P = 0.5 * (p + p.T)  # [d, d] Cov[x0 | x1]
        self._lam, self._U = torch.linalg.eigh(self.P)  # P = U diag(lam) U^T

    @classmethod
    def random(cls, dim: int, seed: int) -> "GaussianPair":
        """A pair drawn from ``seed``: means ``N(0, I)``, the joint covariance ``L L^T / (2d) +
        0.05 I`` with ``L`` standard normal ``[2d, 2d]`` (source and target correlated)."""
        g = torch.Generator().manual_seed(int(seed))
        m0 = torch.randn(dim, dtype=_F64, generator=g)
        m1 = torch.randn(dim, dtype=_F64, generator=g)
        L = torch.randn(2 * dim, 2 * dim, dtype=_F64, generator=g)
        return cls(m0, m1, L @ L.T / (2 * dim) + 0.05 * torch.eye(2 * dim, dtype=_F64))

    def sample(self, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """``n`` pairs ``(x0 [n, d], x1 [n, d])``."""
        g = torch.Generator().manual_seed(int(seed))
        z = torch.randn(n, 2 * self.dim, dtype=_F64, generator=g)
        xy = torch.cat([self.mean0, self.mean1]) + z @ torch.linalg.cholesky(self.cov).T
        return xy[:, :self.dim], xy[:, self.dim:]

    def conditional(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu [B, d], P [d, d])``: the law of ``x0`` given ``x1`` ``[B, d]``."""
        return self.mean0 + (x1.to(_F64) - self.mean1) @ self.gain.T, self.P

    def tilted(self, x1: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        """The conditional tilted by ``exp(r . x0)`` (energy ``-r . x0``): ``(mu + P r, P)``."""
        mu, P = self.conditional(x1)
        return mu + P @ torch.as_tensor(r, dtype=_F64), P

    def denoiser_net(self, process):
        """``net(x_t [B, d], t [B], source=x1 [B, d]) -> E[x0 | x_t, x1]`` (module docstring)
        for ``diffinfer.bridges.BridgeDenoiser(net, process, prediction='x0')``."""
        lam, U = self._lam, self._U

        def net(x: Tensor, t, source: Tensor) -> Tensor:
            tb = as_time(t).to(_F64).reshape(-1, 1)  # [B, 1]
            a, s, b = process.alpha(tb), process.sigma(tb), process.source(tb)
            mu, _ = self.conditional(source)
            r = (x.to(_F64) - b * source.to(_F64) - a * mu) @ U  # [B, d] in P's eigenbasis
            den = a * a * lam + s * s  # [B, d]
            gain = torch.where(a == 0, torch.zeros_like(den), a * lam / torch.where(den == 0, 1.0, den))
            return (mu + (gain * r) @ U.T).to(x.dtype)

        return net

    def __repr__(self) -> str:
        return f"GaussianPair(dim={self.dim})"


def bridge_sampler_law(pair: GaussianPair, x1: Tensor, sigma: float, ts, eta: float,
                       r: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean ``[d]`` and covariance ``[d, d]`` of ``BridgeSampler(eta)``'s output from the source
    ``x1`` ``[d]`` on the grid ``ts`` (from 1 to 0) with ``pair``'s exact denoiser on
    ``BrownianBridge(sigma)``. A step ``t -> s`` is ``x_s = w_x x_t + w_x0 D(x_t) + w_src x1 +
    v z`` with, for ``t < 1``, ``v^2 = eta^2 sigma^2 s (t - s) / t`` (``eta`` times the bridge's
    conditional variance), ``k = sqrt(c_s^2 - v^2) / c_t``, ``w_x = k``, ``w_x0 = (1 - s) - k (1 -
    t)``, ``w_src = s - k t``; from ``t = 1``: ``w_x = s``, ``w_x0 = 1 - s``, ``v = c_s``; the step
    to 0 returns ``D(x_t)``. ``r``: the denoiser is the pair's tilted by ``exp(r . x0)`` except
    at ``t = 1`` (``bridges.EnergyGuidance``, which cannot act there)."""
    d = pair.dim
    eye = torch.eye(d, dtype=_F64)
    x1 = torch.as_tensor(x1, dtype=_F64).reshape(d)
    mu, P = pair.conditional(x1[None])
    mu = mu[0]
    shift = torch.zeros(d, dtype=_F64) if r is None else P @ torch.as_tensor(r, dtype=_F64)
    m, S = x1.clone(), torch.zeros(d, d, dtype=_F64)
    ts = [float(t) for t in ts]
    if ts[0] != 1.0 or ts[-1] != 0.0:
        raise ValueError("a bridge grid runs from t = 1 to t = 0")
    sig2 = float(sigma) ** 2
    for t, s in zip(ts[:-1], ts[1:]):
        a, c2 = 1.0 - t, sig2 * t * (1.0 - t)
        K = torch.zeros(d, d, dtype=_F64) if a == 0 else a * P @ torch.linalg.inv(a * a * P + c2 * eye)
        centre = mu + shift if t < 1 else mu  # the (tilted) conditional mean the denoiser uses
        k0 = centre - K @ (t * x1 + a * centre)  # D(x) = K x + k0
        if s == 0.0:
            return K @ m + k0, K @ S @ K.T
        if t == 1.0:
            w_x, w_x0, w_src, v2 = s, 1.0 - s, 0.0, sig2 * s * (1.0 - s)
        else:
            v2 = float(eta) ** 2 * sig2 * s * (t - s) / t
            k = math.sqrt(max(sig2 * s * (1.0 - s) - v2, 0.0) / c2)
            w_x, w_x0, w_src = k, (1.0 - s) - k * (1.0 - t), s - k * t
        M = w_x * eye + w_x0 * K
        m = M @ m + w_x0 * k0 + w_src * x1
        S = M @ S @ M.T + v2 * eye
    raise AssertionError("unreachable: the grid ends at 0")
