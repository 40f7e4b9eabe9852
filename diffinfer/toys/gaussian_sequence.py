"""A stationary Gaussian autoregressive sequence: the exact oracle for per-element times.

An AR(p) process ``x_l - mu = sum_i phi_i (x_{l-i} - mu) + e_l``, ``e_l ~ N(0, q)``, started in
its stationary law: every window of ``n`` consecutive elements is ``N(mu 1, Gamma_n)`` with the
Toeplitz autocovariance ``Gamma_n[l, m] = gamma(|l - m|)``.

When element ``l`` is noised to its own time ``t_l`` (``x_t,l = alpha(t_l) x0_l + sigma(t_l)
eps_l``, independent ``eps``), ``(x0, x_t)`` is jointly Gaussian and the ideal denoiser is the
linear map

    E[x0 | x_t] = mu + Gamma A (A Gamma A + S^2)^{-1} (x_t - A mu 1),

``A = diag(alpha(t_l))``, ``S = diag(sigma(t_l))``. It stays exact where some ``sigma = 0``
(clean context elements) and where ``alpha = 0`` (pure noise). The model is a ``Denoiser``
(prediction ``x0``) whose network declares ``takes_time_field``: it takes one time per row
``[B]`` or one per entry (shaped like ``x``). The sequence is ``x``'s entries in row-major
order (``[B, 1, L]`` series or ``[B, L]``), any length (the process is stationary).

``fit(series, order)`` is the Yule-Walker estimate (biased sample autocovariances, hence a
stationary fit); ``predictive(history, horizon)`` is the exact conditional law of the next
values, whose CRPS is closed form (``gaussian_crps``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..process import Process, as_time

_F64 = torch.float64


class GaussianAR:
    """The stationary AR(p) sequence ``N(mean, Gamma_n)`` (module docstring), float64."""

    def __init__(self, phi, noise_var: float = 1.0, mean: float = 0.0):
        phi = torch.as_tensor(phi, dtype=_F64).reshape(-1)
        if phi.numel() < 1:
            raise ValueError("phi must hold at least one coefficient")
        if not (math.isfinite(noise_var) and noise_var > 0):
            raise ValueError(f"noise_var must be a positive finite number, got {noise_var}")
        # stationary iff every root of z^p - phi_1 z^{p-1} - ... - phi_p lies inside the unit circle
        companion = torch.zeros(phi.numel(), phi.numel(), dtype=_F64)
        companion[0] = phi
        companion[1:, :-1] = torch.eye(phi.numel() - 1, dtype=_F64)
        if float(torch.linalg.eigvals(companion).abs().max()) >= 1.0:
            raise ValueError(f"AR coefficients {phi.tolist()} are not stationary (a root on or outside the unit circle)")
        self.phi, self.noise_var, self.mean = phi, float(noise_var), float(mean)
        self._gamma = self._first_autocov()

    @classmethod
    def ar1(cls, phi: float, noise_var: float = 1.0, mean: float = 0.0) -> "GaussianAR":
        return cls([phi], noise_var, mean)

    @classmethod
    def fit(cls, series, order: int = 1) -> "GaussianAR":
        """Yule-Walker fit of an AR(``order``) to a 1-D ``series`` (mean removed first)."""
        s = torch.as_tensor(series, dtype=_F64).reshape(-1)
        if not 1 <= order < s.numel() - 1:
            raise ValueError(f"order must be in [1, {s.numel() - 2}] for {s.numel()} values, got {order}")
        mu = float(s.mean())
        d = s - mu
        r = torch.stack([(d[: d.numel() - k] * d[k:]).sum() / d.numel() for k in range(order + 1)])
        R = r[_lags(order)]
        phi = torch.linalg.solve(R, r[1:])
        return cls(phi, float(r[0] - phi @ r[1:]), mu)

    @property
    def order(self) -> int:
        return self.phi.numel()

    def _first_autocov(self) -> Tensor:
        """``gamma(0..p)`` from ``gamma(k) - sum_i phi_i gamma(|k - i|) = q [k == 0]``."""
        p = self.order
        M = torch.eye(p + 1, dtype=_F64)
        for k in range(p + 1):
            for i in range(1, p + 1):
                M[k, abs(k - i)] -= self.phi[i - 1]
        rhs = torch.zeros(p + 1, dtype=_F64)
        rhs[0] = self.noise_var
        return torch.linalg.solve(M, rhs)

    def autocov(self, n: int) -> Tensor:
        """``gamma(0), ..., gamma(n - 1)`` ``[n]``."""
        g = list(self._gamma.tolist())
        while len(g) < n:
            g.append(sum(float(self.phi[i]) * g[-1 - i] for i in range(self.order)))
        return torch.tensor(g[:n], dtype=_F64)

    def covariance(self, n: int) -> Tensor:
        """``Gamma_n`` ``[n, n]``: the covariance of ``n`` consecutive elements."""
        return self.autocov(n)[_lags(n)]

    def sample(self, rows: int, length: int, seed: int | None = 0) -> Tensor:
        """``rows`` exact sequences ``[rows, length]`` (float64)."""
        g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        p = min(self.order, length)
        z = torch.randn(rows, length, dtype=_F64, generator=g)
        x = torch.empty(rows, length, dtype=_F64)
        x[:, :p] = z[:, :p] @ torch.linalg.cholesky(self.covariance(p)).T  # the stationary start
        sd = math.sqrt(self.noise_var)
        for n in range(p, length):  # x_n = sum_i phi_i x_{n-i} + e_n (mean removed)
            x[:, n] = x[:, n - self.order:n].flip(1) @ self.phi + sd * z[:, n]
        return self.mean + x

    def posterior_mean(self, x: Tensor, alpha, sigma) -> Tensor:
        """``E[x0 | x_t = x]`` for ``x`` ``[B, ...]`` whose flattened entries are the sequence,
        with per-entry ``alpha``, ``sigma`` broadcastable to ``x`` (scalars, one per row or one
        per entry); same shape and dtype as ``x``."""
        B = x.shape[0]
        n = x[0].numel()
        xf = x.reshape(B, n).to(_F64)
        a = torch.as_tensor(alpha, dtype=_F64).to(x.device).expand(x.shape).reshape(B, n)
        s = torch.as_tensor(sigma, dtype=_F64).to(x.device).expand(x.shape).reshape(B, n)
        cov = self.covariance(n).to(x.device)
        out = torch.empty_like(xf)
        coeffs, rows = torch.unique(torch.cat([a, s], 1), dim=0, return_inverse=True)
        for u in range(coeffs.shape[0]):  # one solve per distinct noise-level vector
            au, su = coeffs[u, :n], coeffs[u, n:]
            M = au[:, None] * cov * au[None, :] + torch.diag(su * su)  # [n, n]: Cov(x_t)
            gain = torch.linalg.solve(M, au[:, None] * cov).T  # Gamma A M^{-1} (M, Gamma symmetric)
            sel = rows == u
            out[sel] = self.mean + (xf[sel] - au * self.mean) @ gain.T
        return out.reshape(x.shape).to(x.dtype)

    def network(self, process: Process) -> "GaussianARNet":
        return GaussianARNet(self, process)

    def denoiser(self, process: Process) -> Denoiser:
        """The exact model (prediction ``x0``; ``data_scale`` the per-entry RMS)."""
        rms = math.sqrt(float(self._gamma[0]) + self.mean ** 2)
        return Denoiser(self.network(process), process, prediction="x0", data_scale=rms)

    def predictive(self, history, horizon: int) -> tuple[Tensor, Tensor]:
        """The exact law of the next ``horizon`` values after ``history`` ``[H]``: ``(mean
        [horizon], covariance [horizon, horizon])``."""
        h = torch.as_tensor(history, dtype=_F64).reshape(-1)
        H = h.numel()
        C = self.covariance(H + horizon)
        gain = torch.linalg.solve(C[:H, :H], C[:H, H:]).T  # [horizon, H]
        return self.mean + gain @ (h - self.mean), C[H:, H:] - gain @ C[:H, H:]

    def __repr__(self) -> str:
        return f"GaussianAR(phi={[round(v, 4) for v in self.phi.tolist()]}, noise_var={self.noise_var:.4g}, mean={self.mean:.4g})"


class GaussianARNet:
    """The oracle as a network ``net(x, t) -> x0_hat`` for ``Denoiser(prediction='x0')``:
    ``t`` is ``[B]`` or a time per entry (shaped like ``x``): ``takes_time_field``."""

    takes_time_field = True

    def __init__(self, model: GaussianAR, process: Process):
        self.model, self.process = model, process

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        t = as_time(t).to(x.device)
        if t.dim() == 1:
            t = t.reshape((-1,) + (1,) * (x.dim() - 1))
        return self.model.posterior_mean(x, self.process.alpha(t), self.process.sigma(t))


def gaussian_crps(mean, std, truth) -> Tensor:
    """CRPS of ``N(mean, std^2)`` at ``truth`` (elementwise; Gneiting & Raftery 2007):
    ``std (z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi))`` with ``z = (truth - mean) / std``."""
    mean, std, truth = (torch.as_tensor(v, dtype=_F64) for v in (mean, std, truth))
    z = (truth - mean) / std
    cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return std * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - 1.0 / math.sqrt(math.pi))


def _lags(n: int) -> Tensor:
    idx = torch.arange(n)
    return (idx[:, None] - idx[None, :]).abs()


__all__ = ["GaussianAR", "GaussianARNet", "gaussian_crps"]
