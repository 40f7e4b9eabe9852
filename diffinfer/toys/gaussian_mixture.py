"""Gaussian mixtures: exact denoisers, marginals, scores and densities.

For ``x0 ~ sum_k w_k N(m_k, C_k)`` and ``x_t = a x0 + s eps`` every noisy marginal is a
mixture ``sum_k w_k N(a m_k, a^2 C_k + s^2 I)``, and the posterior mean (the ideal
denoiser) is ``E[x0 | x_t] = sum_k r_k(x_t) (m_k + a C_k S_k^{-1} (x_t - a m_k))`` with
``S_k = a^2 C_k + s^2 I`` and responsibilities ``r_k`` under the marginal. Covariances may
be singular (a mixture of low-rank Gaussians, as in Wang et al. 2024, "Diffusion Models
Learn Low-Dimensional Distributions via Subspace Clustering"): the marginal is then
proper for every ``s > 0``.

All arithmetic is float64; inputs of other dtypes and shapes ``[B, ...]`` are flattened
to ``[B, D]`` and cast back.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import Denoiser
from ..process import Process, as_time
from ..registry import Registry

_F64 = torch.float64


class GaussianMixture:
    """``sum_k w_k N(means[k], covs[k])`` in ``D`` dimensions (float64)."""

    def __init__(self, means, covs=None, weights=None):
        means = torch.as_tensor(means, dtype=_F64)
        if means.dim() != 2:
            raise ValueError(f"means must be [K, D], got shape {tuple(means.shape)}")
        K, D = means.shape
        covs = torch.eye(D, dtype=_F64).expand(K, D, D).clone() if covs is None else torch.as_tensor(covs, dtype=_F64)
        if covs.shape != (K, D, D):
            raise ValueError(f"covs must be [K, D, D] = [{K}, {D}, {D}], got {tuple(covs.shape)}")
        if not torch.allclose(covs, covs.transpose(-1, -2), atol=1e-10):
            raise ValueError("covariances must be symmetric")
        weights = torch.full((K,), 1.0 / K, dtype=_F64) if weights is None else torch.as_tensor(weights, dtype=_F64)
        if weights.shape != (K,) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError("weights must be [K], non-negative, with a positive sum")
        self.means, self.covs, self.weights = means, covs, weights / weights.sum()
        evals, evecs = torch.linalg.eigh(covs)
        if float(evals.min()) < -1e-9 * max(1.0, float(evals.max())):
            raise ValueError("covariances must be positive semi-definite")
        self._sqrt_covs = evecs * evals.clamp(min=0).sqrt().unsqueeze(-2)  # [K, D, D], C = L L^T

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @classmethod
    def low_rank(cls, means, bases, scales=None, noise_var: float = 0.0, weights=None) -> "GaussianMixture":
        """Components ``N(m_k, U_k diag(scales_k^2) U_k^T + noise_var I)`` with ``bases [K, D, r]``."""
        bases = torch.as_tensor(bases, dtype=_F64)
        K, D, r = bases.shape
        scales = torch.ones(K, r, dtype=_F64) if scales is None else torch.as_tensor(scales, dtype=_F64)
        factor = bases * scales.unsqueeze(1)
        covs = factor @ factor.transpose(-1, -2) + noise_var * torch.eye(D, dtype=_F64)
        return cls(means, covs, weights)

    # --- the noisy marginal -------------------------------------------------------------
    def _noisy(self, process: Process, t) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``a, s`` (0-d), marginal means ``[K, D]`` and covariances ``[K, D, D]`` at scalar ``t``."""
        t = as_time(t)
        a, s = process.alpha(t), process.sigma(t)
        eye = torch.eye(self.dim, dtype=_F64)
        return a, s, a * self.means, a * a * self.covs + s * s * eye

    def marginal(self, process: Process, t) -> "GaussianMixture":
        """The exact law of ``x_t`` (scalar ``t``)."""
        _, _, m, S = self._noisy(process, t)
        return GaussianMixture(m, S, self.weights)

    def _component_logpdf(self, x: Tensor, means: Tensor, covs: Tensor) -> tuple[Tensor, Tensor]:
        """``log N(x; m_k, S_k)`` ``[B, K]`` and ``S_k^{-1}(x - m_k)`` ``[B, K, D]``."""
        try:
            chol = torch.linalg.cholesky(covs)  # [K, D, D]
        except RuntimeError:
            raise ValueError("a covariance is singular: densities of a low-rank mixture exist "
                             "only for its noisy marginals (t > 0)") from None
        diff = x.unsqueeze(1) - means.unsqueeze(0)  # [B, K, D]
        # one solve per component with the batch as columns ([K, D, B]): the same arithmetic
        # as broadcasting chol over [B, K, D, 1], an order of magnitude faster on CPU
        cols = diff.permute(1, 2, 0)  # [K, D, B]
        z = torch.linalg.solve_triangular(chol, cols, upper=False).permute(2, 0, 1)  # [B, K, D]
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # [K]
        logpdf = -0.5 * (z * z).sum(-1) - 0.5 * logdet - 0.5 * self.dim * math.log(2 * math.pi)
        prec_diff = torch.cholesky_solve(cols, chol).permute(2, 0, 1)  # [B, K, D]
        return logpdf, prec_diff

    def _flat(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x)
        xf = x.reshape(x.shape[0], -1).to(_F64)
        if xf.shape[1] != self.dim:
            raise ValueError(f"points have {xf.shape[1]} features, the mixture has {self.dim}")
        return xf

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact ``log p(x)`` ``[B]`` (float64)."""
        xf = self._flat(x)
        logpdf, _ = self._component_logpdf(xf, self.means, self.covs)
        return torch.logsumexp(logpdf + torch.log(self.weights), dim=1)

    def responsibilities(self, x: Tensor, process: Process, t) -> Tensor:
        """Posterior component probabilities ``p(k | x_t)`` ``[B, K]``."""
        _, _, m, S = self._noisy(process, t)
        logpdf, _ = self._component_logpdf(self._flat(x), m, S)
        return torch.softmax(logpdf + torch.log(self.weights), dim=1)

    def _posterior(self, xf: Tensor, process: Process, t) -> tuple[Tensor, Tensor]:
        """Posterior mean ``E[x0|x_t]`` and score ``grad log p_t`` at scalar ``t`` (``[B, D]`` each)."""
        a, s, m, S = self._noisy(process, t)
        logpdf, prec_diff = self._component_logpdf(xf, m, S)  # [B,K], [B,K,D]
        r = torch.softmax(logpdf + torch.log(self.weights), dim=1)  # [B, K]
        # E[x0 | x, k] = m_k + a C_k S_k^{-1} (x - a m_k)
        cond_means = self.means.unsqueeze(0) + a * torch.einsum("kde,bke->bkd", self.covs, prec_diff)
        x0 = (r.unsqueeze(-1) * cond_means).sum(1)
        score = -(r.unsqueeze(-1) * prec_diff).sum(1)
        return x0, score

    def _per_time(self, x: Tensor, process: Process, t, which: int) -> Tensor:
        xf = self._flat(x)
        t = as_time(t)
        if t.dim() == 0:
            out = self._posterior(xf, process, t)[which]
        else:
            t = t.reshape(-1).cpu()
            if t.numel() != xf.shape[0]:
                raise ValueError(f"t has {t.numel()} entries for a batch of {xf.shape[0]}")
            out = torch.empty_like(xf)
            for tv in torch.unique(t):
                rows = (t == tv).nonzero().squeeze(1).to(xf.device)
                out[rows] = self._posterior(xf[rows], process, tv)[which]
        return out.reshape(x.shape).to(x.dtype)

    def posterior_mean(self, x: Tensor, process: Process, t) -> Tensor:
        """The ideal denoiser ``E[x0 | x_t = x]`` (same shape and dtype as ``x``)."""
        return self._per_time(x, process, t, 0)

    def score(self, x: Tensor, process: Process, t) -> Tensor:
        """``grad_x log p_t(x)`` (same shape and dtype as ``x``)."""
        return self._per_time(x, process, t, 1)

    def denoiser(self, process: Process) -> Denoiser:
        """The exact model as a ``Denoiser`` (prediction ``x0``; ``data_scale`` the mixture's
        per-entry RMS ``sqrt(E|x|^2 / D)``)."""
        rms = math.sqrt(float(torch.diagonal(self.covariance()).sum() + self.mean().square().sum()) / self.dim)
        return Denoiser(lambda x, t: self.posterior_mean(x, process, t), process, prediction="x0", data_scale=rms)

    def sample(self, n: int, seed: int | None = 0) -> Tensor:
        """``n`` exact samples ``[n, D]`` (float64)."""
        g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        k = torch.multinomial(self.weights, n, replacement=True, generator=g)
        z = torch.randn(n, self.dim, dtype=_F64, generator=g)
        return self.means[k] + torch.einsum("nde,ne->nd", self._sqrt_covs[k], z)

    def mean(self) -> Tensor:
        return (self.weights.unsqueeze(1) * self.means).sum(0)

    def covariance(self) -> Tensor:
        mu = self.mean()
        second = (self.weights[:, None, None] * (self.covs + self.means.unsqueeze(-1) * self.means.unsqueeze(-2))).sum(0)
        return second - mu.unsqueeze(-1) * mu.unsqueeze(-2)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, D={self.dim})"


def ring2d(n_modes: int = 8, radius: float = 1.0, std: float = 0.1) -> GaussianMixture:
    """``n_modes`` isotropic Gaussians evenly spaced on a circle (2-D)."""
    angles = torch.arange(n_modes, dtype=_F64) * (2 * math.pi / n_modes)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    covs = (std ** 2) * torch.eye(2, dtype=_F64).expand(n_modes, 2, 2).clone()
    return GaussianMixture(means, covs)


def molrg(dim: int = 64, rank: int = 4, n_components: int = 5, noise_var: float = 1e-2,
          seed: int = 0) -> GaussianMixture:
    """A mixture of low-rank Gaussians: zero-mean components on random ``rank``-dimensional
    subspaces with unit variance inside, plus ``noise_var`` isotropic variance (so its
    clean density exists for exact log-density metrics; ``noise_var = 0`` is exactly low-rank)."""
    g = torch.Generator().manual_seed(seed)
    bases = torch.linalg.qr(torch.randn(n_components, dim, rank, dtype=_F64, generator=g))[0]
    return GaussianMixture.low_rank(torch.zeros(n_components, dim, dtype=_F64), bases, noise_var=noise_var)


PRESETS = Registry("toy", {"ring2d": ring2d, "molrg": molrg})


def preset(name: str, **options) -> GaussianMixture:
    """A preset mixture by name (``ring2d``, ``molrg``)."""
    return PRESETS.get(name, **options)
