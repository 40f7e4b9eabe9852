"""An exact oracle for bridges between paired domains: jointly Gaussian pairs ``(x0, x1)``.

With ``(x0, x1) ~ N((m0, m1), [[S00, S01], [S10, S11]])`` the conditional law of the target
given the source is ``N(mu(x1), P)``, ``mu = m0 + S01 S11^-1 (x1 - m1)``,
``P = S00 - S01 S11^-1 S10``, and on a bridge ``x_t = alpha x0 + b x1 + sigma eps``
(``diffinfer.bridges.BrownianBridge``) the exact bridge denoiser is linear:

    E[x0 | x_t, x1] = mu + alpha P (alpha^2 P + sigma^2 I)^-1 (x_t - b x1 - alpha mu),

computed through the eigendecomposition of ``P`` (``mu`` where ``alpha = 0``, i.e. at ``t = 1``,
where ``x_t = x1`` says nothing more). A linear energy ``E(x0) = -r . x0`` tilts the target to
``N(mu + P r, P)`` (``tilted``).
"""
from __future__ import annotations

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

