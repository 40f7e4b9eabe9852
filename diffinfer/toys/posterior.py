"""Exact posteriors of Gaussian mixtures under linear-Gaussian measurements.

For a prior ``x0 ~ sum_k w_k N(m_k, C_k)`` and ``y = A x0 + n`` with ``n ~ N(0, s_y^2 I)``
the posterior ``p(x0 | y)`` is again a Gaussian mixture (Kalman update of each component,
weights times the evidence ``N(y; A m_k, A C_k A^T + s_y^2 I)``); this reuses the closed
form of ``toys.tilted.tilt`` (a Gaussian likelihood is a tilt with ``lambda = 1``).

Along any noising path ``x_t = a x0 + s eps`` the noisy conditionals follow: ``p(x_t | y)``
is the posterior mixture's marginal, so the exact guidance term of a conditional sampler
is ``grad log p(y | x_t) = grad log p_t(x_t | y) - grad log p_t(x_t)`` (Bayes, the
``log p(y)`` constant drops), available here as a log-likelihood ``noisy_log_likelihood``.

Two priors: for ``y = x + h + n`` with independent ``x ~ p_x`` and ``h ~ p_h`` (the
source-separation / dehazing setting), the joint prior of ``z = (x, h)`` is the product
mixture (``K_x * K_h`` block-diagonal components) and the measurement is ``A = [I, I]``:
``sum_posterior`` gives the exact joint posterior of the pair.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..process import Process, as_time
from .gaussian_mixture import GaussianMixture
from .tilted import LinearGaussianReward, mode_fractions, tilt

_F64 = torch.float64


def linear_gaussian_posterior(prior: GaussianMixture, A, y, noise_std: float) -> GaussianMixture:
    """The exact ``p(x0 | y)`` for ``y = A x0 + noise_std * n`` (``A`` ``[M, D]``, ``y`` ``[M]``)."""
    return tilt(prior, LinearGaussianReward(A, y, noise_std), 1.0)


def product_mixture(px: GaussianMixture, ph: GaussianMixture) -> GaussianMixture:
    """The law of ``z = (x, h)`` for independent ``x ~ px`` (``D_x``) and ``h ~ ph`` (``D_h``):
    ``K_x K_h`` components with block-diagonal covariances, ``x`` first."""
    Kx, Dx = px.means.shape
    Kh, Dh = ph.means.shape
    means = torch.cat([px.means.repeat_interleave(Kh, 0), ph.means.repeat(Kx, 1)], dim=1)  # [KxKh, Dx+Dh]
    covs = torch.zeros(Kx * Kh, Dx + Dh, Dx + Dh, dtype=_F64)
    covs[:, :Dx, :Dx] = px.covs.repeat_interleave(Kh, 0)
    covs[:, Dx:, Dx:] = ph.covs.repeat(Kx, 1, 1)
    weights = (px.weights.unsqueeze(1) * ph.weights.unsqueeze(0)).reshape(-1)
    return GaussianMixture(means, covs, weights)


def sum_matrix(dim: int) -> Tensor:
    """``A = [I, I]`` ``[D, 2D]``: the measurement ``y = x + h`` of the stacked ``(x, h)``."""
    eye = torch.eye(dim, dtype=_F64)
    return torch.cat([eye, eye], dim=1)


def sum_posterior(px: GaussianMixture, ph: GaussianMixture, y, noise_std: float) -> GaussianMixture:
    """The exact joint posterior ``p(x, h | y = x + h + noise_std n)`` over ``(x, h)`` ``[2D]``."""
    if px.dim != ph.dim:
        raise ValueError(f"the two priors must have one dimension, got {px.dim} and {ph.dim}")
    return linear_gaussian_posterior(product_mixture(px, ph), sum_matrix(px.dim), y, noise_std)


class NoisyLogLikelihood:
    """``log p(y | x_t)`` up to a constant, ``[B]``, from the prior and the exact posterior:
    ``log p_t(x_t | y) - log p_t(x_t)``. Differentiable in ``x_t`` (the exact guidance term).

    Called as ``f(x_t, t, pred=None)`` (the guidance plumbing's log-likelihood signature);
    ``t`` is a scalar or ``[B]``.
    """

    def __init__(self, prior: GaussianMixture, posterior: GaussianMixture, process: Process):
        if prior.dim != posterior.dim:
            raise ValueError(f"prior has {prior.dim} dimensions, posterior {posterior.dim}")
        self.prior, self.posterior, self.process = prior, posterior, process

    def _at(self, xf: Tensor, t: Tensor) -> Tensor:
        return (self.posterior.marginal(self.process, t).log_prob(xf)
                - self.prior.marginal(self.process, t).log_prob(xf))

    def __call__(self, x: Tensor, t, pred=None) -> Tensor:
        xf = x.reshape(x.shape[0], -1).to(_F64)  # [B, D]
        t = as_time(t)
        if t.dim() == 0:
            return self._at(xf, t).to(x.dtype)
        t = t.reshape(-1)
        out = []
        order = []
        for tv in torch.unique(t):
            rows = (t == tv).nonzero().squeeze(1)
            out.append(self._at(xf[rows], tv))
            order.append(rows)
        vals = torch.cat(out)
        return vals[torch.argsort(torch.cat(order))].to(x.dtype)


def mode_weight_error(samples: Tensor, target: GaussianMixture) -> float:
    """Total variation between the fraction of ``samples`` ``[N, D]`` nearest (by
    responsibility) to each component of ``target`` and ``target.weights``."""
    return float(0.5 * (mode_fractions(target, samples) - target.weights).abs().sum())


def moment_errors(samples: Tensor, target: GaussianMixture) -> tuple[float, float]:
    """``(|mean error|, max |covariance error|)`` of ``samples`` ``[N, D]`` against ``target``."""
    xf = samples.reshape(samples.shape[0], -1).to(_F64)
    mean_err = float((xf.mean(0) - target.mean()).norm())
    cov_err = float((torch.cov(xf.T).reshape(target.dim, target.dim) - target.covariance()).abs().max())
    return mean_err, cov_err
