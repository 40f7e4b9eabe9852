"""Training a diffusion prior through a forward model: learn ``p(x)`` from measurements
``y = A x + noise`` only, never ``x``.

Tewari et al., "Diffusion with Forward Models: Solving Stochastic Inverse Problems Without
Direct Supervision" (NeurIPS 2023): the noising runs on the *observation*, the denoiser
outputs the unobserved *signal* ``x_hat``, and the loss compares its image under the known,
differentiable forward model with the clean observation. Here, for a linear operator with
known Gaussian noise ``y = A x + noise_std n`` (a different ``A_i`` per measurement):

    y_t = alpha(t) y + sigma(t) e,      (x_hat, n_hat) = model(y_t, t, A),
    loss = E_{t, e} | A x_hat + n_hat - y |^2          (per-entry mean)

``n_hat`` is the model's estimate of the measurement noise (``E[n | y_t]``), so the optimum is
the measurement-space posterior mean ``E[y | y_t, A]``; a model whose denoiser matches it for
every ``A`` of the data has the data's measurement laws, which for operators that vary enough
(the union of their row spaces covering ``R^D``, with enough variety for second moments)
identify the prior's mean and covariance.

``GaussianPrior`` is the model family whose moments can be read: a mixture of Gaussians with
learnable means, Cholesky factors and weights, whose ``(x_hat, n_hat)`` is the exact
posterior mean under its own parameters (a Kalman update per component). After training,
``prior.as_mixture()`` is a ``toys.GaussianMixture`` and ``.denoiser(process)`` samples the
learned prior with any solver.

    prior = fit_prior(y, A, noise_std, process, TrainConfig(steps=800, lr=0.05))
    prior.mean(), prior.covariance()         # the learned moments
    di.sample(prior.as_mixture().denoiser(process), shape=(N, D))
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .process import Process
from .toys.gaussian_mixture import GaussianMixture
from .train import TrainConfig, fit, sample_times

_F64 = torch.float64


def _check_measurements(y: Tensor, A: Tensor) -> None:
    if y.dim() != 2 or A.dim() != 3 or A.shape[:2] != y.shape:
        raise ValueError(f"measurements must be y [N, M] with operators A [N, M, D], got {tuple(y.shape)} "
                         f"and {tuple(A.shape)}")
    if not (bool(torch.isfinite(y).all()) and bool(torch.isfinite(A).all())):
        raise ValueError("measurements or operators contain NaN or Inf")


class GaussianPrior(nn.Module):
    """A learnable ``sum_k w_k N(m_k, L_k L_k^T)`` in ``dim`` dimensions (float64), with the
    exact measurement-space denoiser under its own parameters.

    ``L_k`` is lower-triangular with a softplus diagonal (so ``C_k`` stays positive definite);
    the weights are a softmax of logits. Initialised at ``N(0, init_scale^2 I)`` per component
    (means drawn with ``seed`` when ``n_components > 1``)."""

    def __init__(self, dim: int, n_components: int = 1, init_scale: float = 1.0, seed: int = 0):
        super().__init__()
        if dim < 1 or n_components < 1:
            raise ValueError(f"dim and n_components must be >= 1, got {dim}, {n_components}")
        g = torch.Generator().manual_seed(seed)
        means = torch.zeros(n_components, dim, dtype=_F64)
        if n_components > 1:
            means = init_scale * torch.randn(n_components, dim, dtype=_F64, generator=g)
        self.means = nn.Parameter(means)  # [K, D]
        diag0 = math.log(math.expm1(init_scale))  # softplus^{-1}
        self.raw_diag = nn.Parameter(torch.full((n_components, dim), diag0, dtype=_F64))  # [K, D]
        self.lower = nn.Parameter(torch.zeros(n_components, dim, dim, dtype=_F64))  # [K, D, D], strictly lower used
        self.logits = nn.Parameter(torch.zeros(n_components, dtype=_F64))  # [K]
        self.dim, self.n_components = dim, n_components

    @classmethod
    def from_mixture(cls, gm: GaussianMixture) -> "GaussianPrior":
        """The prior with ``gm``'s weights, means and (positive-definite) covariances."""
        prior = cls(gm.dim, gm.n_components)
        L = torch.linalg.cholesky(gm.covs)
        with torch.no_grad():
            prior.means.copy_(gm.means)
            prior.lower.copy_(torch.tril(L, -1))
            prior.raw_diag.copy_(torch.log(torch.expm1(torch.diagonal(L, dim1=-2, dim2=-1))))
            prior.logits.copy_(torch.log(gm.weights))
        return prior

    def cholesky(self) -> Tensor:
        """``L_k`` ``[K, D, D]``."""
        return torch.tril(self.lower, -1) + torch.diag_embed(nn.functional.softplus(self.raw_diag))

    def covs(self) -> Tensor:
        L = self.cholesky()
        return L @ L.transpose(-1, -2)

    def weights(self) -> Tensor:
        return torch.softmax(self.logits, 0)

    @torch.no_grad()
    def as_mixture(self) -> GaussianMixture:
        """The learned prior as an exact toy mixture (detached)."""
        C = self.covs()
        return GaussianMixture(self.means.detach().clone(), 0.5 * (C + C.transpose(-1, -2)), self.weights())

    def mean(self) -> Tensor:
        return self.as_mixture().mean()

    def covariance(self) -> Tensor:
        return self.as_mixture().covariance()

    def measurement_denoiser(self, y_t: Tensor, alpha: Tensor, sigma: Tensor, A: Tensor,
                             noise_std: float) -> tuple[Tensor, Tensor]:
        """``(E[x | y_t, A], E[n | y_t, A])`` under this prior, for ``y_t = alpha (A x + s_n n) +
        sigma e`` (``y_t`` ``[B, M]``, ``alpha`` / ``sigma`` ``[B]``, ``A`` ``[B, M, D]``):
        ``x_hat [B, D]`` and ``n_hat [B, M]`` (the noise term scaled by ``noise_std``)."""
        B, M = y_t.shape
        a, s = alpha.to(_F64)[:, None, None, None], sigma.to(_F64)[:, None, None, None]
        C = self.covs()  # [K, D, D]
        AC = torch.einsum("bmd,kde->bkme", A, C)  # [B, K, M, D]
        eye = torch.eye(M, dtype=_F64)
        S = a * a * (torch.einsum("bkme,bne->bkmn", AC, A) + noise_std ** 2 * eye) + s * s * eye  # [B, K, M, M]
        chol = torch.linalg.cholesky(S)
        diff = (y_t.unsqueeze(1) - a[..., 0] * torch.einsum("bmd,kd->bkm", A, self.means)).unsqueeze(-1)  # [B, K, M, 1]
        u = torch.cholesky_solve(diff, chol).squeeze(-1)  # [B, K, M]
        z = torch.linalg.solve_triangular(chol, diff, upper=False).squeeze(-1)
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # [B, K]
        r = torch.softmax(-0.5 * (z * z).sum(-1) - 0.5 * logdet + torch.log_softmax(self.logits, 0), dim=1)  # [B, K]
        ak = a[..., 0, 0]  # [B, 1]
        x_k = self.means.unsqueeze(0) + ak[..., None] * torch.einsum("bkme,bkm->bke", AC, u)  # [B, K, D]
        n_k = ak[..., None] * noise_std ** 2 * u  # [B, K, M]
        return (r.unsqueeze(-1) * x_k).sum(1), (r.unsqueeze(-1) * n_k).sum(1)

    def log_likelihood(self, y: Tensor, A: Tensor, noise_std: float) -> Tensor:
        """Exact ``log p(y_i | A_i)`` ``[N]`` of the measurements under this prior."""
        _check_measurements(y, A)
        C = self.covs()
        S = torch.einsum("bmd,kde,bne->bkmn", A, C, A) + noise_std ** 2 * torch.eye(y.shape[1], dtype=_F64)
        chol = torch.linalg.cholesky(S)
        diff = (y.to(_F64).unsqueeze(1) - torch.einsum("bmd,kd->bkm", A.to(_F64), self.means)).unsqueeze(-1)
        z = torch.linalg.solve_triangular(chol, diff, upper=False).squeeze(-1)
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        comp = -0.5 * (z * z).sum(-1) - 0.5 * logdet - 0.5 * y.shape[1] * math.log(2 * math.pi)
        return torch.logsumexp(comp + torch.log_softmax(self.logits, 0), dim=1)


def forward_model_loss(model, y: Tensor, A: Tensor, noise_std: float, process: Process,
                       generator: torch.Generator | None = None, t: Tensor | None = None,
                       eps: Tensor | None = None, weight: Tensor | None = None) -> Tensor:
    """Tewari et al.'s loss for a linear forward model: noise the clean measurement
    ``y_t = alpha y + sigma e`` (``t`` uniform on the process's range), let the model predict
    the signal (and the measurement noise), map it through ``A`` and compare with ``y``:
    ``mean_b |A_b x_hat_b + n_hat_b - y_b|^2 / M``. ``model.measurement_denoiser(y_t, alpha,
    sigma, A, noise_std) -> (x_hat [B, D], n_hat [B, M])``; ``y`` ``[B, M]``, ``A`` ``[B, M, D]``."""
    _check_measurements(y, A)
    B = y.shape[0]
    t = sample_times(process, B, generator) if t is None else t
    eps = torch.randn(y.shape, generator=generator, dtype=y.dtype) if eps is None else eps
    c = process.at(t)
    a, s = c.alpha.to(y.dtype), c.sigma.to(y.dtype)  # [B]
    y_t = a[:, None] * y + s[:, None] * eps
    x_hat, n_hat = model.measurement_denoiser(y_t, a, s, A, noise_std)
    y_hat = torch.einsum("bmd,bd->bm", A, x_hat) + n_hat  # the forward model applied to the signal estimate
    per_row = (y_hat - y).pow(2).mean(1)  # [B]
    return (per_row * weight.to(per_row.dtype)).mean() if weight is not None else per_row.mean()


def fit_prior(y: Tensor, A: Tensor, noise_std: float, process: Process, cfg: TrainConfig | None = None,
              n_components: int = 1, batch: int = 512, init_scale: float = 1.0, progress: bool = False,
              model: nn.Module | None = None, likelihood_weighting: bool = False,
              logsnr_range: tuple[float, float] = (-8.0, 8.0)):
    """Train a ``GaussianPrior`` (or ``model``) on measurements ``y [N, M]`` with operators
    ``A [N, M, D]`` by ``forward_model_loss`` under ``train.fit`` (minibatches of ``batch``
    rows, all randomness from ``cfg.seed``). Returns the EMA model."""
    _check_measurements(y, A)
    if not (math.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"noise_std must be finite and >= 0, got {noise_std}")
    y, A = y.to(_F64), A.to(_F64)
    cfg = cfg or TrainConfig(steps=800, lr=0.05, warmup=20, ema_decay=0.9, checkpoint_every=0)
    model = model or GaussianPrior(A.shape[2], n_components, init_scale, seed=cfg.seed)
    N = y.shape[0]
    lam_lo, lam_hi = logsnr_range

    def loss_fn(m, gen):
        idx = torch.randint(0, N, (min(batch, N),), generator=gen)
        if not likelihood_weighting:
            return forward_model_loss(m, y[idx], A[idx], noise_std, process, gen)
        lam = lam_lo + (lam_hi - lam_lo) * torch.rand(len(idx), dtype=_F64, generator=gen)
        return forward_model_loss(m, y[idx], A[idx], noise_std, process, gen, t=process.t_from_logsnr(lam),
                                  weight=lam.exp())

    return fit(model, loss_fn, cfg, progress=progress, desc="forward-model prior").ema_model()


def cramer_rao(cov: Tensor, A: Tensor, noise_std: float) -> tuple[Tensor, Tensor]:
    """The Cramer-Rao standard deviations of any unbiased estimate of a Gaussian prior's mean
    ``[D]`` and covariance entries ``[D, D]`` from measurements ``y_i = A_i x_i + noise_std n``
    (``A`` ``[N, M, D]``): the inverse of the expected Fisher information, which for
    ``y_i ~ N(A_i mu, S_i)``, ``S_i = A_i Sigma A_i^T + noise_std^2 I``, ``P_i = A_i^T S_i^{-1} A_i``
    is ``sum_i P_i`` for ``mu`` and ``1/2 sum_i tr(P_i B_j P_i B_k)`` for the covariance entries
    (``B_j`` the symmetric unit matrices); the two blocks are orthogonal. The floor the learned
    moments are measured against."""
    A = A.to(_F64)
    N, M, D = A.shape
    S = torch.einsum("nmd,de,nke->nmk", A, cov.to(_F64), A) + noise_std ** 2 * torch.eye(M, dtype=_F64)
    P = A.transpose(1, 2) @ torch.linalg.solve(S, A)  # [N, D, D]
    mean_std = torch.linalg.inv(P.sum(0)).diagonal().sqrt()
    pairs = [(a, b) for a in range(D) for b in range(a, D)]
    basis = torch.zeros(len(pairs), D, D, dtype=_F64)
    for j, (a, b) in enumerate(pairs):
        basis[j, a, b] = basis[j, b, a] = 1.0
    Q = torch.einsum("nab,jbc->njac", P, basis)  # [N, J, D, D]
    fisher = 0.5 * torch.einsum("njab,nkba->jk", Q, Q)
    var = torch.linalg.inv(fisher).diagonal()
    cov_std = torch.zeros(D, D, dtype=_F64)
    for j, (a, b) in enumerate(pairs):
        cov_std[a, b] = cov_std[b, a] = var[j].sqrt()
    return mean_std, cov_std
