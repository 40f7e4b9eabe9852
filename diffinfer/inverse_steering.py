"""Tractable-model steering for inpainting: a ``Denoiser -> Denoiser`` wrapper.

Liu, Niepert & Van den Broeck, "Image Inpainting via Tractable Steering of Diffusion
Models" (ICLR 2024): a tractable probabilistic model (there a probabilistic circuit; here a
Gaussian mixture, ``toys.GaussianMixture`` or one fitted with scikit-learn) computes the
*exact* conditional of the missing pixels given the observed ones, and each denoising step's
clean estimate ``x0_hat`` is moved toward it.

Two targets, both closed form for a mixture ``sum_k w_k N(m_k, C_k)``; ``O`` the observed
coordinates (``mask == 1``), ``U`` the missing ones, ``y_O`` the observation with noise
``noise_std = tau`` (``tau = 0``: exact conditioning):

1. ``target="posterior"`` (default): ``E[x0_U | x_t, x0_O = y_O]`` under the mixture. Each
   component conditioned on ``y_O`` is ``N(mu_k, P_k)`` on ``U`` with
   ``G_k = C_k[U,O] (C_k[O,O] + tau^2 I)^{-1}``, ``mu_k = m_k[U] + G_k (y_O - m_k[O])``,
   ``P_k = C_k[U,U] - G_k C_k[O,U]``, and weight ``w_k N(y_O; m_k[O], C_k[O,O] + tau^2 I)``.
   Given ``x0_O = y_O`` the noisy ``x_t[O] = a y_O + s eps_O`` carries nothing more about
   ``x0_U``, so ``p(x0_U | x_t, y)`` is that conditional mixture observed through
   ``x_t[U] = a x0_U + s eps_U``: responsibilities under ``N(a mu_k, a^2 P_k + s^2 I)`` and
   component means ``mu_k + a P_k (a^2 P_k + s^2 I)^{-1} (x_t[U] - a mu_k)`` (the mixture's
   ideal denoiser, ``toys.gaussian_mixture``). Exact at ``tau = 0``; at ``tau > 0`` it leaves
   out what ``x_t[O]`` says about the noisy ``x0_O``.
2. ``target="conditional"``: the time-independent ``E[x_U | x_O = y_O]``.

The steered prediction is ``x0[U] = (1 - w) x0_hat[U] + w target``, ``x0[O] = y_O`` (as
projection does; ``replace_observed=False`` keeps the model's), ``eps`` re-derived from
``x0``. With ``w = 1`` and the tractable model equal to the prior, the wrapper is the exact
conditional denoiser ``E[x0 | x_t, y]``, so any solver samples ``p(x_U | x_O = y_O)``
(``tests/test_tractable_steering.py``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .denoiser import DenoiserBase, Prediction
from .process import as_time
from .toys.gaussian_mixture import GaussianMixture

_F64 = torch.float64
TARGETS = ("posterior", "conditional")


def mixture_from_sklearn(gm) -> GaussianMixture:
    """A ``toys.GaussianMixture`` from a fitted ``sklearn.mixture.GaussianMixture`` (any
    ``covariance_type``: full, tied, diag, spherical)."""
    means = torch.as_tensor(gm.means_, dtype=_F64)  # [K, D]
    K, D = means.shape
    cov = torch.as_tensor(gm.covariances_, dtype=_F64)
    kind = gm.covariance_type
    if kind == "full":
        covs = cov
    elif kind == "tied":
        covs = cov.expand(K, D, D).clone()
    elif kind == "diag":
        covs = torch.diag_embed(cov)
    elif kind == "spherical":
        covs = cov[:, None, None] * torch.eye(D, dtype=_F64)
    else:
        raise ValueError(f"unknown covariance_type {kind!r}; valid: full, tied, diag, spherical")
    return GaussianMixture(means, 0.5 * (covs + covs.transpose(-1, -2)), torch.as_tensor(gm.weights_, dtype=_F64))


def as_mixture(tractable) -> GaussianMixture:
    if isinstance(tractable, GaussianMixture):
        return tractable
    if hasattr(tractable, "means_") and hasattr(tractable, "covariances_"):
        return mixture_from_sklearn(tractable)
    raise TypeError(f"the tractable model must be a toys.GaussianMixture or a fitted sklearn GaussianMixture, "
                    f"got {type(tractable).__name__}")


class MaskedConditional:
    """The mixture conditioned on ``y_O``, row by row: means ``mu`` ``[B, K, U]``, shared
    covariances ``P`` ``[K, U, U]`` and log weights ``[B, K]`` (module docstring, item 1)."""

    def __init__(self, mix: GaussianMixture, observed: Tensor, y_obs: Tensor, noise_std: float = 0.0):
        O = observed.nonzero().squeeze(1)  # [|O|]
        U = (~observed).nonzero().squeeze(1)  # [|U|]
        C, m = mix.covs, mix.means
        Coo = C[:, O][:, :, O] + (noise_std ** 2) * torch.eye(O.numel(), dtype=_F64)  # [K, |O|, |O|]
        Cuo = C[:, U][:, :, O]  # [K, |U|, |O|]
        chol = torch.linalg.cholesky(Coo)
        r = (y_obs.unsqueeze(1) - m[:, O].unsqueeze(0))  # [B, K, |O|]
        sol = torch.cholesky_solve(r.permute(1, 2, 0), chol)  # [K, |O|, B]: (C_OO + tau^2)^{-1} r
        self.mu = m[:, U].unsqueeze(0) + torch.einsum("kuo,kob->bku", Cuo, sol)  # [B, K, |U|]
        gain_t = torch.cholesky_solve(Cuo.transpose(1, 2), chol)  # [K, |O|, |U|] = G_k^T
        P = C[:, U][:, :, U] - Cuo @ gain_t  # [K, |U|, |U|]
        self.P = 0.5 * (P + P.transpose(1, 2))
        z = torch.linalg.solve_triangular(chol, r.permute(1, 2, 0), upper=False)  # [K, |O|, B]
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # [K]
        loglik = -0.5 * (z * z).sum(1).T - 0.5 * logdet - 0.5 * O.numel() * math.log(2 * math.pi)  # [B, K]
        self.logw = torch.log(mix.weights).unsqueeze(0) + loglik  # [B, K] unnormalised
        self.U = U

    def mean(self) -> Tensor:
        """``E[x_U | y_O]`` ``[B, |U|]``."""
        return (torch.softmax(self.logw, 1).unsqueeze(-1) * self.mu).sum(1)

    def denoise(self, xu: Tensor, a: float, s: float) -> Tensor:
        """``E[x0_U | x_t[U] = xu, y_O]`` ``[B, |U|]`` at scalar ``(a, s)``."""
        n = self.U.numel()
        if s == 0.0:
            return xu / a
        S = a * a * self.P + s * s * torch.eye(n, dtype=_F64)  # [K, |U|, |U|]
        chol = torch.linalg.cholesky(S)
        diff = xu.unsqueeze(1) - a * self.mu  # [B, K, |U|]
        cols = diff.permute(1, 2, 0)  # [K, |U|, B]
        z = torch.linalg.solve_triangular(chol, cols, upper=False)
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # [K]
        logpdf = -0.5 * (z * z).sum(1).T - 0.5 * logdet  # [B, K] (constants cancel)
        resp = torch.softmax(self.logw + logpdf, 1)  # [B, K]
        prec_diff = torch.cholesky_solve(cols, chol).permute(2, 0, 1)  # [B, K, |U|]
        means = self.mu + a * torch.einsum("kuv,bkv->bku", self.P, prec_diff)
        return (resp.unsqueeze(-1) * means).sum(1)


class TractableSteering(DenoiserBase):
    """Steer ``den``'s clean estimate toward a tractable model's exact inpainting answer
    (Liu et al., ICLR 2024; module docstring).

    ``mask`` ``[*x_shape]`` (1 observed, 0 missing, as ``inverse.Inpaint``), ``y``
    ``[B, *x_shape]`` or ``[*x_shape]`` (read where ``mask`` is 1), ``weight`` in ``[0, 1]``
    (1: the tractable target alone on the hole), ``noise_std`` the measurement noise the
    tractable model conditions with. ``t`` is passed on unchanged to ``den``."""

    def __init__(self, den: DenoiserBase, tractable, mask: Tensor, y: Tensor, weight: float = 1.0,
                 target: str = "posterior", noise_std: float = 0.0, replace_observed: bool = True):
        if target not in TARGETS:
            raise ValueError(f"unknown steering target {target!r}; valid: {', '.join(TARGETS)}")
        weight = float(weight)
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"steering weight must be in [0, 1], got {weight}")
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        mix = as_mixture(tractable)
        mask = torch.as_tensor(mask)
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("an inpainting mask must hold only 0 and 1")
        if mask.numel() != mix.dim:
            raise ValueError(f"mask {tuple(mask.shape)} has {mask.numel()} entries, the tractable model has {mix.dim}")
        y = torch.as_tensor(y)
        if tuple(y.shape) == tuple(mask.shape):
            y = y.unsqueeze(0)
        if tuple(y.shape[1:]) != tuple(mask.shape):
            raise ValueError(f"y must be [B, *mask.shape] or mask.shape {tuple(mask.shape)}, got {tuple(y.shape)}")
        observed = mask.reshape(-1).bool()  # [D]
        if bool(observed.all()) or not bool(observed.any()):
            raise ValueError("the mask must observe some entries and leave some missing")
        yf = y.reshape(y.shape[0], -1).to(_F64)  # [B, D]
        if not bool(torch.isfinite(yf[:, observed]).all()):
            raise ValueError("the observation y contains NaN or Inf on the observed entries")
        self._wrap(den)
        self.mix, self.mask, self.y, self.weight = mix, mask, y, weight
        self.target, self.noise_std, self.replace_observed = target, float(noise_std), bool(replace_observed)
        self.observed, self._yf = observed, yf
        self.cond = MaskedConditional(mix, observed, yf[:, observed], self.noise_std)

    def _target(self, x: Tensor, t) -> Tensor:
        """The tractable model's estimate of ``x0_U`` ``[B, |U|]`` (float64)."""
        if self.target == "conditional":
            return self.cond.mean()
        xu = x.reshape(x.shape[0], -1).to(_F64)[:, self.cond.U]  # [B, |U|]
        tv = as_time(t)
        p = self.process
        if tv.dim() == 0:
            return self.cond.denoise(xu, float(p.alpha(tv)), float(p.sigma(tv)))
        tv = tv.reshape(-1).cpu()
        out = torch.empty_like(xu)
        for v in torch.unique(tv):
            rows = (tv == v).nonzero().squeeze(1)
            sub = _rows(self.cond, rows)
            out[rows] = sub.denoise(xu[rows], float(p.alpha(v)), float(p.sigma(v)))
        return out

    def predict(self, x: Tensor, t) -> Prediction:
        """``(x0, eps)`` at ``x`` ``[B, *x_shape]``: the hole steered, the observed entries ``y``."""
        B = x.shape[0]
        if self._yf.shape[0] not in (1, B):
            raise ValueError(f"y has {self._yf.shape[0]} rows for a batch of {B}")
        if self._yf.shape[0] == 1 and B != 1:
            self._expand(B)
        x0_model = self.den.predict(x, t).x0  # [B, *x_shape]
        if not bool(torch.isfinite(x0_model).all()):
            raise ValueError("the wrapped model returned NaN or Inf")
        flat = x0_model.reshape(B, -1).to(_F64).clone()  # [B, D]
        U = self.cond.U
        flat[:, U] = (1.0 - self.weight) * flat[:, U] + self.weight * self._target(x, t)
        if self.replace_observed:
            flat[:, self.observed] = self._yf[:, self.observed]
        x0 = flat.reshape(x.shape).to(x.dtype)
        c = self.process.at(t).broadcast(x)
        return Prediction(x0, derive=(x, c.alpha, c.sigma))

    def _expand(self, B: int) -> None:
        """One shared observation ``[1, ...]`` repeated for a batch of ``B``."""
        self._yf = self._yf.expand(B, -1)
        self.cond = _rows(self.cond, torch.zeros(B, dtype=torch.long))

    def select(self, idx: Tensor) -> "TractableSteering":
        y = self.y if self._yf.shape[0] == 1 else self._yf[idx].reshape((len(idx),) + tuple(self.mask.shape))
        return TractableSteering(self.den.select(idx), self.mix, self.mask, y, self.weight, self.target,
                                 self.noise_std, self.replace_observed)


def _rows(cond: MaskedConditional, rows: Tensor) -> MaskedConditional:
    """The conditional restricted to ``rows`` (shares ``P``)."""
    out = MaskedConditional.__new__(MaskedConditional)
    out.mu, out.logw, out.P, out.U = cond.mu[rows], cond.logw[rows], cond.P, cond.U
    return out
