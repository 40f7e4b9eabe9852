"""An exact oracle for graph states: a jointly Gaussian (node features, symmetric adjacency).

A graph ``(X [n, f], A [n, n])`` with ``A`` symmetric and zero on the diagonal has
``D = n f + n (n - 1) / 2`` free coordinates ``z``; here they are ordered *column-major*
over the strict upper triangle (pairs ``(i, j)``, ``i < j``, ``j`` outer), independently
of ``diffinfer.structured_state``'s row-major packing, and ``z0 ~ N(m, C)``. In matrix
units ``y = (vec X, vec A) = E z`` with the 0/1 embedding ``E`` (``A_ij = A_ji = z_ij``).
The forward process adds GDSS's symmetric noise (Jo et al. 2022): ``y_t = alpha y0 +
sigma E diag(d) xi``, ``xi ~ N(0, I_D)``, i.e. ``triu(Z, 1) + triu(Z, 1)^T`` on the adjacency,
with a per-part noise scale ``d`` (``noise_scale = (nodes, adjacency)``, default 1: a part's
constant log-SNR offset).

Exact answers, in float64, all linear in closed form:

- the denoiser in matrix units, ``E[y0 | y_t] = mu + alpha S K^+ (y_t - alpha mu)`` with
  ``S = E C E^T``, ``K = alpha^2 S + sigma^2 E diag(d^2) E^T`` (``K^+`` the pseudo-inverse; ``y_t``
  lies in the range of ``E``), returned as any prediction type (``net``);
- the probability-flow ODE: with ``diag(d)^-1 C diag(d)^-1 = U diag(lambda) U^T`` each
  eigen-coordinate of ``diag(d)^-1 (z_t - alpha_t m)`` scales as ``sqrt(alpha_t^2 lambda + sigma_t^2)`` (``ode_endpoint``);
- the law tilted by ``exp(<W, y0>)`` (a linear reward): ``N(m + C E^T W, C)`` (``tilted``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import from_x0_eps
from ..process import Process, as_time

_F64 = torch.float64


class GraphGaussian:
    """``z0 ~ N(mean, cov)`` over the free coordinates of ``n``-node graphs with ``f`` node
    features (ordering: node features row-major, then adjacency pairs column-major)."""

    def __init__(self, n: int, f: int, mean: Tensor, cov: Tensor, noise_scale: tuple[float, float] = (1.0, 1.0)):
        self.n, self.f = int(n), int(f)
        self.pairs = [(i, j) for j in range(self.n) for i in range(j)]  # column-major strict upper triangle
        self.dim = self.n * self.f + len(self.pairs)
        self.mean = torch.as_tensor(mean, dtype=_F64)
        self.cov = torch.as_tensor(cov, dtype=_F64)
        if self.mean.shape != (self.dim,) or self.cov.shape != (self.dim, self.dim):
            raise ValueError(f"mean must be [{self.dim}] and cov [{self.dim}, {self.dim}]")
        self.embed = self._embedding()  # [n f + n n, D]
        self.noise_scale = (float(noise_scale[0]), float(noise_scale[1]))
        self.noise_std = torch.cat([torch.full((self.n * self.f,), self.noise_scale[0], dtype=_F64),
                                    torch.full((len(self.pairs),), self.noise_scale[1], dtype=_F64)])  # [D]
        # the flow is diagonal in the eigenbasis of the covariance in noise-whitened coordinates z / d
        d = self.noise_std
        self.evals, self.evecs = torch.linalg.eigh(self.cov / d[:, None] / d[None, :])
        if float(self.evals.min()) < -1e-10 * float(self.evals.max()):
            raise ValueError("cov must be positive semi-definite")
        self.evals = self.evals.clamp(min=0.0)
        self._gains: dict[tuple[float, float], Tensor] = {}

    def _embedding(self) -> Tensor:
        n, f = self.n, self.f
        E = torch.zeros(n * f + n * n, self.dim, dtype=_F64)
        for k in range(n * f):
            E[k, k] = 1.0
        for p, (i, j) in enumerate(self.pairs):
            E[n * f + i * n + j, n * f + p] = 1.0
            E[n * f + j * n + i, n * f + p] = 1.0
        return E

    @classmethod
    def random(cls, n: int = 5, f: int = 2, seed: int = 0, scale: float = 1.0,
               noise_scale: tuple[float, float] = (1.0, 1.0)) -> "GraphGaussian":
        """A random law whose node features and adjacency are correlated (a dense random
        covariance with a floor on its spectrum), seeded."""
        g = torch.Generator().manual_seed(int(seed))
        D = int(n) * int(f) + int(n) * (int(n) - 1) // 2
        L = torch.randn(D, D, generator=g, dtype=_F64) / D ** 0.5
        cov = scale ** 2 * (L @ L.T + 0.05 * torch.eye(D, dtype=_F64))
        mean = scale * 0.5 * torch.randn(D, generator=g, dtype=_F64)
        return cls(n, f, mean, cov, noise_scale)

    # --- coordinates --------------------------------------------------------------------
    def to_matrix(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Free coordinates ``[B, D]`` -> ``(X [B, n, f], A [B, n, n])``."""
        y = z.to(_F64) @ self.embed.T  # [B, n f + n n]
        nf = self.n * self.f
        return y[:, :nf].reshape(-1, self.n, self.f), y[:, nf:].reshape(-1, self.n, self.n)

    def to_free(self, X: Tensor, A: Tensor) -> Tensor:
        """``(X, A)`` -> free coordinates ``[B, D]`` (the upper triangle of ``A``)."""
        nodes = X.to(_F64).reshape(X.shape[0], -1)
        adj = torch.stack([A[:, i, j] for i, j in self.pairs], dim=1).to(_F64)
        return torch.cat([nodes, adj], dim=1)

    def _flat_y(self, X: Tensor, A: Tensor) -> Tensor:
        return torch.cat([X.reshape(X.shape[0], -1), A.reshape(A.shape[0], -1)], dim=1).to(_F64)

    # --- exact answers ------------------------------------------------------------------
    def posterior_mean(self, X: Tensor, A: Tensor, process: Process, t) -> tuple[Tensor, Tensor]:
        """``E[(X0, A0) | (X_t, A_t)]`` in matrix units, by the matrix-space formula
        (module docstring); ``t`` a scalar or ``[B]``."""
        y = self._flat_y(X, A)  # [B, M]
        t = as_time(t)
        tb = t.reshape(-1).expand(y.shape[0]) if t.numel() == 1 else t.reshape(-1)
        out = torch.empty_like(y)
        mu = self.embed @ self.mean
        for tv in torch.unique(tb):
            rows = (tb == tv).nonzero().squeeze(1)
            a, s = float(process.alpha(tv)), float(process.sigma(tv))
            out[rows] = mu + (y[rows] - a * mu) @ self._gain(a, s).T
        nf = self.n * self.f
        return out[:, :nf].reshape(X.shape).to(X.dtype), out[:, nf:].reshape(A.shape).to(A.dtype)

    def _gain(self, a: float, s: float) -> Tensor:
        """``alpha S K^+`` ``[M, M]`` at ``(alpha, sigma)``, cached (solvers revisit grid times)."""
        key = (a, s)
        if key not in self._gains:
            if len(self._gains) > 1024:
                self._gains.clear()
            E = self.embed
            S, N = E @ self.cov @ E.T, (E * self.noise_std.square()) @ E.T
            self._gains[key] = a * S @ torch.linalg.pinv(a * a * S + s * s * N, hermitian=True)
        return self._gains[key]

    def net(self, process: Process, prediction: str = "x0"):
        """The exact joint network ``net(X, A, t) -> (X_pred, A_pred)`` of the given
        prediction type, in matrix units (``eps`` of the adjacency: the symmetric noise)."""
        def net(X: Tensor, A: Tensor, t) -> tuple[Tensor, Tensor]:
            X0, A0 = self.posterior_mean(X, A, process, t)
            c = process.at(as_time(t).reshape(-1)).broadcast(X)  # [B, 1, 1]
            eps_X, eps_A = (X - c.alpha * X0) / c.sigma, (A - c.alpha * A0) / c.sigma
            return from_x0_eps(X0, eps_X, prediction, c), from_x0_eps(A0, eps_A, prediction, c)
        return net

    def ode_endpoint(self, X: Tensor, A: Tensor, process: Process, t_from, t_to) -> tuple[Tensor, Tensor]:
        """``(X, A)`` at ``t_from`` carried exactly along the probability-flow ODE to ``t_to``."""
        a0, s0 = float(process.alpha(as_time(t_from))), float(process.sigma(as_time(t_from)))
        a1, s1 = float(process.alpha(as_time(t_to))), float(process.sigma(as_time(t_to)))
        ratio = ((a1 * a1 * self.evals + s1 * s1) / (a0 * a0 * self.evals + s0 * s0)).sqrt()  # [D]
        d = self.noise_std
        z = self.to_free(X, A)
        w = ((z - a0 * self.mean) / d) @ self.evecs  # whitened eigen-coordinates [B, D]
        z1 = a1 * self.mean + d * ((w * ratio) @ self.evecs.T)
        X1, A1 = self.to_matrix(z1)
        return X1.to(X.dtype), A1.to(A.dtype)

    def sample(self, count: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """``count`` exact graphs ``(X, A)`` (float64)."""
        g = torch.Generator().manual_seed(int(seed))
        xi = torch.randn(int(count), self.dim, generator=g, dtype=_F64)
        z = self.mean + self.noise_std * ((xi * self.evals.sqrt()) @ self.evecs.T)
        return self.to_matrix(z)

    def tilted(self, WX: Tensor, WA: Tensor) -> "GraphGaussian":
        """The law tilted by ``exp(<WX, X0> + <WA, A0>)``: ``N(m + C E^T W, C)``."""
        w = self._flat_y(WX[None], WA[None])[0]  # [M]
        return GraphGaussian(self.n, self.f, self.mean + self.cov @ (self.embed.T @ w), self.cov, self.noise_scale)

    def __repr__(self) -> str:
        return f"GraphGaussian(n={self.n}, f={self.f}, D={self.dim})"


__all__ = ["GraphGaussian"]
