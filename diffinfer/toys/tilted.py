"""The exact reward-tilted target of a Gaussian mixture.

For a prior ``p(x) = sum_k w_k N(x; m_k, C_k)`` and the reward
``r(x) = -|y - A x|^2 / (2 s^2)`` (the Gaussian log-likelihood of a linear measurement
``y = A x + s n``, up to a constant), the tilted target
``p_lambda(x) ∝ p(x) exp(lambda r(x))`` is again a Gaussian mixture: ``exp(lambda r)`` is
a Gaussian likelihood with noise variance ``s^2 / lambda``, so each component is updated
by the Kalman / Gaussian-conditioning formulas

    K_k  = C_k A^T (A C_k A^T + (s^2/lambda) I)^{-1}
    m'_k = m_k + K_k (y - A m_k)
    C'_k = C_k - K_k A C_k
    w'_k ∝ w_k N(y; A m_k, A C_k A^T + (s^2/lambda) I)

(Bishop, "Pattern Recognition and Machine Learning", section 2.3.3; the same closed form
is the exact target in Wu et al. 2023, "Practical and Asymptotically Exact Conditional
Sampling in Diffusion Models"). The covariance form works for singular ``C_k``
(low-rank mixtures). This is the oracle the scaling tests compare SMC, tree search and
search methods against.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .gaussian_mixture import GaussianMixture

_F64 = torch.float64


class LinearGaussianReward:
    """``r(x) = -|y - A x|^2 / (2 noise_std^2)`` ``[B]`` for ``x`` ``[B, D]`` (float64 inside).

    Args:
        A: measurement matrix ``[M, D]``.
        y: measurement ``[M]``.
        noise_std: the measurement noise standard deviation ``s > 0``.
    """

    def __init__(self, A, y, noise_std: float = 1.0):
        A = torch.as_tensor(A, dtype=_F64)
        y = torch.as_tensor(y, dtype=_F64).flatten()
        if A.dim() != 2:
            raise ValueError(f"A must be [M, D], got shape {tuple(A.shape)}")
        if y.shape != (A.shape[0],):
            raise ValueError(f"y must have {A.shape[0]} entries (rows of A), got {y.numel()}")
        if not noise_std > 0:
            raise ValueError(f"noise_std must be positive, got {noise_std}")
        self.A, self.y, self.noise_std = A, y, float(noise_std)

    def __call__(self, x: Tensor) -> Tensor:
        xf = torch.as_tensor(x).reshape(x.shape[0], -1).to(_F64)  # [B, D]
        if xf.shape[1] != self.A.shape[1]:
            raise ValueError(f"points have {xf.shape[1]} features, A has {self.A.shape[1]} columns")
        resid = self.y.to(xf.device) - xf @ self.A.to(xf.device).T  # [B, M]
        return (-0.5 * (resid * resid).sum(1) / self.noise_std ** 2).to(x.dtype)

    def __repr__(self) -> str:
        return f"LinearGaussianReward(M={self.A.shape[0]}, D={self.A.shape[1]}, noise_std={self.noise_std})"


def tilt(prior: GaussianMixture, reward: LinearGaussianReward, lam: float = 1.0) -> GaussianMixture:
    """The exact ``prior(x) exp(lam * reward(x))``, normalised, as a ``GaussianMixture``.

    ``lam = 0`` returns the prior; larger ``lam`` sharpens toward the measurement.
    """
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if lam == 0:
        return GaussianMixture(prior.means, prior.covs, prior.weights)
    A, y = reward.A, reward.y  # [M, D], [M]
    M = A.shape[0]
    noise_var = reward.noise_std ** 2 / lam
    CAt = prior.covs @ A.T  # [K, D, M]
    S = A @ CAt + noise_var * torch.eye(M, dtype=_F64)  # [K, M, M] innovation covariance
    resid = y - prior.means @ A.T  # [K, M]
    gain = CAt @ torch.linalg.inv(S)  # [K, D, M]
    means = prior.means + (gain @ resid.unsqueeze(-1)).squeeze(-1)  # [K, D]
    covs = prior.covs - gain @ A @ prior.covs  # [K, D, D]
    covs = 0.5 * (covs + covs.transpose(-1, -2))
    chol = torch.linalg.cholesky(S)
    z = torch.linalg.solve_triangular(chol, resid.unsqueeze(-1), upper=False).squeeze(-1)  # [K, M]
    log_evidence = (-0.5 * (z * z).sum(-1) - torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
                    - 0.5 * M * math.log(2 * math.pi))  # [K]
    log_w = torch.log(prior.weights) + log_evidence
    return GaussianMixture(means, covs, torch.softmax(log_w, 0))


def mode_fractions(target: GaussianMixture, x: Tensor) -> Tensor:
    """Fraction of samples ``x`` ``[N, D]`` assigned to each component of ``target`` by
    its largest clean-data responsibility ``[K]`` (compare with ``target.weights``)."""
    logpdf, _ = target._component_logpdf(target._flat(x), target.means, target.covs)  # [N, K]
    k = torch.argmax(logpdf + torch.log(target.weights), dim=1)
    return torch.bincount(k, minlength=target.n_components).to(_F64) / x.shape[0]


def tilted_example(lam: float = 1.0) -> tuple[GaussianMixture, LinearGaussianReward, GaussianMixture]:
    """A 2-D test case: three well-separated modes and a measurement of the first
    coordinate that favours the right-hand modes. Returns ``(prior, reward, tilted)``."""
    means = torch.tensor([[-1.5, 0.0], [1.0, 1.2], [1.0, -1.2]], dtype=_F64)
    covs = torch.stack([torch.tensor([[0.09, 0.03], [0.03, 0.09]], dtype=_F64),
                        0.06 * torch.eye(2, dtype=_F64), 0.12 * torch.eye(2, dtype=_F64)])
    prior = GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2], dtype=_F64))
    reward = LinearGaussianReward(torch.tensor([[1.0, 0.5]], dtype=_F64), torch.tensor([1.0], dtype=_F64), 1.0)
    return prior, reward, tilt(prior, reward, lam)
