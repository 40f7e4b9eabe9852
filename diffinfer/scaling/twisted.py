"""The Twisted Diffusion Sampler (TDS): SMC with twisted proposals for measurements.

Wu, Trippe, Naesseth, Blei & Cunningham 2023, "Practical and Asymptotically Exact
Conditional Sampling in Diffusion Models" (Algorithm 1). For ``y = A x0 + s_y n`` the
*twisting function* approximates ``p(y | x_t)`` through the denoiser,

    log p~_t(y | x_t) = log N(y; A x0_hat(x_t, t), (s_y^2 + (sigma_t / alpha_t)^2) I),

the paper's variance for linear-Gaussian measurements (its inpainting choice: the
variance of ``x0`` given ``x_t`` under a flat prior, ``(1 - abar_t) / abar_t``, added to
the measurement noise). ``N`` particles run the DDPM ancestral transition (DDIM with
``eta``, ``solvers.ddim.ddim_at``: mean ``m = w_x x + w_x0 x0_hat``, std ``sigma_i``) with
the *twisted proposal*

    x_{i+1} ~ N(m + sigma_i^2 grad_x log p~_i(y | x_i), sigma_i^2 I),

and the weights are the target ratio over the proposal, exactly as in Algorithm 1:

    w_{i+1} = p(x_{i+1} | x_i) p~_{i+1}(y | x_{i+1}) / (q(x_{i+1} | x_i) p~_i(y | x_i)),
    w_0 at x_T: p~_T(y | x_T); the last step (to t = 0, the denoised estimate): the true
    likelihood p(y | x_0) / p~(y | x_1).

Resampling when the ESS falls below ``ess_threshold * N``; the product of all weights is
``p(y | x_0)`` times the ratio of base to proposal paths, so the weighted particles target
``p(x_0 | y)`` exactly as ``N`` grows, whatever the twisting function's quality.

Twist covariance (``LinearGaussianTwist``): the paper's flat ``(sigma_t/alpha_t)^2 I``, or
by default for small measurements ``A Cov[x0 | x_t] A^T`` from the denoiser's Jacobian
(second-order Tweedie; exact for a Gaussian prior, ``M`` vector-Jacobian products per
step), which kept the weights far more even on the random suite's training seeds (final
ESS without resampling about 3x the flat twist's on the hardest ones). Proposal: the
paper's gradient step, or ``proposal="gaussian"``: the transition times the twist
linearised in ``x`` (a Gaussian conditioning update, ``_gaussian_move``); not better on
those seeds, kept as an option.

Variance (defaults chosen on the random suite's training seeds): the base chain is the
moment-matched one (``transition="auto"``) for small samples, each particle's noise path is
one point of a scrambled Sobol set (``qmc="auto"`` -> ``"path"``, randomised QMC, exact
marginals) and resampling orders the particles along a Hilbert curve first
(``resample="hilbert"``, Gerber & Chopin 2015); ``qmc="sqmc"`` is sequential QMC proper.

On the loop: the proposal is a wrapper (``TwistedDenoiser``) whose data prediction is
shifted by ``sigma_i^2 grad log p~ / w_x0``, so the solver's own DDIM step draws from the
twisted proposal; the driver only reads the wrapper's record of that step to weight it,
and resamples by assigning ``step.x``, ``step.state``, ``step.den``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..denoiser import DenoiserBase, Prediction
from ..grids.grid import Grid, GridPoint
from ..loop import initial_noise, iterate
from ..rng import SampleRNG
from ..solvers.ddim import DDIM, DDIMWeights, ddim_at
from .common import ScalingResult, Tap, sample_shape
from .smc import ORDERED, effective_sample_size, get_resampler, reselect
from .sqmc import MAX_DIM as SOBOL_MAX_DIM
from .sqmc import qmc_uniform, sqmc_points

_F64 = torch.float64


#: how ``LinearGaussianTwist`` models ``Cov[A x0 | x_t]`` (the spread of the denoised
#: estimate around the clean data; ``twist`` below)
COVARIANCES = ("flat", "jacobian", "none")


class LinearGaussianTwist:
    """The twisting function ``log p~_t(y | x_t) = log N(y; A x0_hat, s^2 I + C_t)`` ``[B]``
    and the exact ``log p(y | x_0) = log N(y; A x_0, s^2 I)`` for ``y = A x0 + s n``; ``lam``
    tempers the likelihood (``s^2 / lam``: the tilt ``p(x) exp(lam r(x))`` of
    ``toys.tilted.LinearGaussianReward``). ``C_t`` approximates ``A Cov[x0 | x_t] A^T``:

    * ``covariance="flat"``: ``(sigma_t / alpha_t)^2 I``, the variance of ``x0`` given
      ``x_t`` under a flat prior (TDS's choice for linear-Gaussian measurements, Wu et al.
      2023, section 3.3);
    * ``"jacobian"``: ``(sigma_t^2 / alpha_t) A J A^T`` with ``J = d x0_hat / d x_t`` (the
      second-order Tweedie identity ``Cov[x0 | x_t] = sigma^2/alpha dE[x0 | x_t]/dx_t``, as
      in PiGDM / TMPD): exact, with ``p~_t = p_t(y | x_t)``, when the prior is Gaussian;
      ``M`` vector-Jacobian products per evaluation (``M`` rows of ``A``) instead of one;
      the symmetrised ``A J A^T`` is clipped to be positive semi-definite;
    * ``"none"``: ``0`` (the measurement variance alone, DPS's choice; ``inflate=False``).

    The proposal uses the gradient with ``C_t`` held fixed, ``(A J)^T (s^2 I + C_t)^{-1}
    (y - A x0_hat)``; the weights use the twist's value, so any choice keeps TDS exact."""

    def __init__(self, A, y, noise_std: float, lam: float = 1.0, inflate: bool = True, covariance: str | None = None):
        self.A = torch.as_tensor(A, dtype=_F64)
        self.y = torch.as_tensor(y, dtype=_F64).reshape(-1)
        if self.A.dim() != 2 or self.A.shape[0] != self.y.numel():
            raise ValueError(f"A must be [M, D] with M = len(y), got {tuple(self.A.shape)} and {self.y.numel()}")
        if not noise_std > 0 or not lam > 0:
            raise ValueError(f"need noise_std > 0 and lam > 0, got {noise_std}, {lam}")
        covariance = ("flat" if inflate else "none") if covariance is None else covariance
        if covariance not in COVARIANCES:
            raise ValueError(f"unknown twist covariance {covariance!r}; valid: {', '.join(COVARIANCES)}")
        self.noise_var = float(noise_std) ** 2 / float(lam)
        self.covariance = covariance
        self.inflate = covariance != "none"

    @classmethod
    def of(cls, measurement, lam: float = 1.0, covariance: str = "flat") -> "LinearGaussianTwist":
        if isinstance(measurement, cls):
            return measurement
        for name in ("A", "y", "noise_std"):
            if not hasattr(measurement, name):
                raise TypeError("the measurement must have A, y and noise_std (e.g. toys.tilted.LinearGaussianReward)")
        return cls(measurement.A, measurement.y, measurement.noise_std, lam, covariance=covariance)

    def variance(self, alpha: float, sigma: float) -> float:
        """The flat twisting variance at a point with coefficients ``alpha``, ``sigma``."""
        if not self.inflate:
            return self.noise_var
        return math.inf if alpha == 0.0 else self.noise_var + (sigma / alpha) ** 2

    def _log_normal(self, x0: Tensor, var: float) -> Tensor:
        xf = x0.reshape(x0.shape[0], -1).to(_F64)
        r = self.y.to(xf.device) - xf @ self.A.to(xf.device).T  # [B, M]
        return -0.5 * (r * r).sum(1) / var - 0.5 * self.y.numel() * math.log(2 * math.pi * var)

    def __call__(self, x0_hat: Tensor, alpha: float, sigma: float) -> Tensor:
        """The flat (or ``none``) twist's value ``[B]`` (differentiable in ``x0_hat``)."""
        var = self.variance(alpha, sigma)
        if math.isinf(var):  # alpha = 0: x_t holds no information, the twist is flat
            return torch.zeros(x0_hat.shape[0], dtype=_F64, device=x0_hat.device) + 0.0 * x0_hat.sum()
        return self._log_normal(x0_hat, var)

    def value_and_grad(self, x0_hat: Tensor, x: Tensor, alpha: float, sigma: float, jac: Tensor | None = None):
        """``log p~_t(y | x)`` ``[B]`` (float64), its proposal gradient in ``x`` (``x``'s
        shape) and, for ``covariance="jacobian"``, the linearisation ``(A x0_hat [B, M],
        A J [B, M, D], s^2 I + C_t [B, M, M])`` (float64; else ``None``), for ``x0_hat``
        computed from ``x`` (``requires_grad``) with its graph. ``jac``: the full Jacobian
        ``d x0_hat / d x`` ``[B, D, D]`` when the caller has it (``A J = A jac``, no further
        vector-Jacobian products)."""
        if self.covariance != "jacobian" or alpha == 0.0:
            log_twist = self(x0_hat, alpha, sigma)
            (grad,) = torch.autograd.grad(log_twist.sum(), x, allow_unused=True)
            return log_twist.detach(), (torch.zeros_like(x) if grad is None else grad.detach()), None
        B, M = x0_hat.shape[0], self.y.numel()
        A = self.A.to(x0_hat.device)
        ax = x0_hat.reshape(B, -1) @ A.to(x0_hat.dtype).T  # [B, M]
        if jac is not None:
            aj = A @ jac  # [B, M, D]
        else:
            rows = []
            for m in range(M):  # row m of A J for every particle: one vector-Jacobian product
                (g,) = torch.autograd.grad(ax[:, m].sum(), x, retain_graph=m < M - 1, allow_unused=True)
                rows.append(torch.zeros_like(x) if g is None else g)
            aj = torch.stack([r.reshape(B, -1) for r in rows], 1).to(_F64)  # [B, M, D]
        c = (sigma ** 2 / alpha) * aj @ A.T  # [B, M, M]: A Cov[x0 | x] A^T
        evals, evecs = torch.linalg.eigh(0.5 * (c + c.transpose(1, 2)))
        cov = (evecs * (evals.clamp(min=0.0) + self.noise_var).unsqueeze(1)) @ evecs.transpose(1, 2)
        chol = torch.linalg.cholesky(cov)  # [B, M, M]
        r = (self.y.to(ax.device) - ax.detach().to(_F64)).unsqueeze(-1)  # [B, M, 1]
        sol = torch.cholesky_solve(r, chol)  # [B, M, 1]: cov^-1 r
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)
        log_twist = -0.5 * (r * sol).sum((1, 2)) - 0.5 * logdet - 0.5 * M * math.log(2 * math.pi)
        grad = (sol.transpose(1, 2) @ aj).reshape(x.shape).to(x.dtype)  # (A J)^T cov^-1 r
        return log_twist, grad, (ax.detach().to(_F64), aj, cov)

    def exact(self, x0: Tensor) -> Tensor:
        """``log p(y | x0)`` ``[B]`` (float64)."""
        return self._log_normal(x0, self.noise_var)


@dataclass(frozen=True)
class TwistRecord:
    """The twist at one batch ``x`` at grid point ``k``: the wrapped model's ``x0``, ``log p~``
    ``[B]`` (float64), its gradient in ``x`` and the DDIM weights of the step from ``k``."""

    x: Tensor
    k: int
    x0: Tensor
    log_twist: Tensor
    grad: Tensor
    weights: DDIMWeights | None  # None at the last step (to t = 0)
    lin: tuple | None = None  # (A x0_hat [B, M], A J [B, M, D], twist covariance [B, M, M]) or None
    root: tuple | None = None  # (V [B, D, D], std [B, D]): the moment transition's covariance V diag(std^2) V^T

    def select(self, idx: Tensor) -> "TwistRecord":
        lin = None if self.lin is None else tuple(v[idx] for v in self.lin)
        root = None if self.root is None else tuple(v[idx] for v in self.root)
        return TwistRecord(self.x[idx], self.k, self.x0[idx], self.log_twist[idx], self.grad[idx], self.weights, lin,
                           root)


class TwistedDenoiser(DenoiserBase):
    """The TDS proposal as a model view: at grid point ``k`` it returns the wrapped model's
    ``x0_hat`` shifted by ``sigma_k^2 grad log p~ / w_x0``, so a DDIM(``eta``) step from
    ``k`` draws ``N(m + sigma_k^2 grad log p~, sigma_k^2)``. The last step (to ``t = 0``,
    deterministic) and times that are not grid points get the unshifted prediction.
    ``evaluate`` computes (and keeps, by identity of ``x``) the twist record, so the
    driver's weight and the next step's proposal share one network call."""

    def __init__(self, den: DenoiserBase, twist: LinearGaussianTwist, eta: float = 1.0, shift: bool = True,
                 transition: str = "ddpm"):
        if transition not in TRANSITIONS:
            raise ValueError(f"unknown TDS transition {transition!r}; valid: {', '.join(TRANSITIONS)}")
        self._wrap(den)
        self.twist, self.eta, self.shift, self.transition = twist, float(eta), bool(shift), transition
        self.cached: TwistRecord | None = None  # the latest evaluation
        self.last: TwistRecord | None = None    # the record the latest predict used

    def evaluate(self, x: Tensor, point: GridPoint) -> TwistRecord:
        c = self.cached
        if c is not None and c.x is x and c.k == point.k:
            return c
        g, k = point.grid, point.k
        weights = ddim_at(g, k, self.eta) if g.t[k + 1] != 0.0 else None
        root = jac = None
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            pred = self.den.predict(xg, point)
            # at alpha = 0 (a flow's t = 1) Tweedie's covariance is undefined: that step keeps the DDPM transition
            if self.transition == "moment" and weights is not None and g.alpha[k] > 0.0:
                jac = _jacobian(pred.x0, xg)  # [B, D, D], shared with the Jacobian twist
                root = _moment_root(jac, g.alpha[k], g.sigma[k], weights)
            log_twist, grad, lin = self.twist.value_and_grad(pred.x0, xg, g.alpha[k], g.sigma[k], jac)
        self.cached = TwistRecord(x, k, pred.x0.detach(), log_twist, grad, weights, lin, root)
        return self.cached

    def predict(self, x: Tensor, t) -> Prediction:
        if not isinstance(t, GridPoint):
            return self.den.predict(x, t)
        rec = self.last = self.evaluate(x, t)
        g, k = t.grid, t.k
        w = rec.weights
        if w is None or w.noise == 0.0 or not self.shift:
            return Prediction(rec.x0, derive=(x, g.alpha[k], g.sigma[k]))
        if w.w_x0 == 0.0:
            raise ValueError(f"the step from t={g.t[k]:.4g} ignores the data prediction; it cannot be twisted")
        x0 = rec.x0 + (w.noise ** 2 / w.w_x0) * rec.grad
        return Prediction(x0, derive=(x, g.alpha[k], g.sigma[k]))

    def select(self, idx: Tensor) -> "TwistedDenoiser":
        new = TwistedDenoiser(self.den.select(idx), self.twist, self.eta, self.shift, self.transition)
        new.cached = None if self.cached is None else self.cached.select(idx)
        return new

    @property
    def rows(self) -> int:
        return getattr(self.den, "rows", 0)


#: the base transition ``p(x_{i+1} | x_i)`` TDS weights against (``tds(transition=)``):
#: ``ddpm``, the ancestral step ``N(m, sigma_i^2 I)`` with the plug-in ``x0_hat``; or
#: ``moment``, the same mean with the covariance of the true reverse transition,
#: ``sigma_i^2 I + w_x0^2 Cov[x0 | x_i]`` (``Cov`` by second-order Tweedie from the
#: denoiser's full Jacobian: Bao et al. 2022, "Estimating the Optimal Covariance with
#: Imperfect Mean in Diffusion Probabilistic Models"; exact for a Gaussian prior)
TRANSITIONS = ("ddpm", "moment")

#: ``tds(transition="auto")`` takes ``moment`` for samples of at most this many entries (``D``
#: vector-Jacobian products per step), ``ddpm`` above; ``tds(qmc="auto")`` takes ``path``
#: when ``D * steps`` fits one Sobol set (``sqmc.MAX_DIM``). Chosen on the training seeds
#: 1000-1019 (``bench/results/posterior_smc_train.md``, 3 sampler seeds each)
MOMENT_MAX_DIM = 32


def _jacobian(x0_hat: Tensor, x: Tensor) -> Tensor:
    """``d x0_hat / d x`` ``[B, D, D]`` (float64) per particle: ``D`` vector-Jacobian products,
    keeping ``x0_hat``'s graph."""
    B = x0_hat.shape[0]
    flat = x0_hat.reshape(B, -1)  # [B, D]
    rows = []
    for d in range(flat.shape[1]):  # row d of J for every particle
        (gd,) = torch.autograd.grad(flat[:, d].sum(), x, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(x).reshape(B, -1) if gd is None else gd.reshape(B, -1))
    return torch.stack(rows, 1).to(_F64)


def _moment_root(jac: Tensor, alpha: float, sigma: float, w: DDIMWeights) -> tuple[Tensor, Tensor]:
    """``(V [B, D, D], std [B, D])`` (float64) with ``V diag(std^2) V^T = w.noise^2 I +
    w.w_x0^2 Cov[x0 | x]``, ``V`` orthogonal, where ``Cov[x0 | x] = (sigma^2 / alpha) J``
    (``jac``: ``J = d x0_hat / d x`` ``[B, D, D]``, symmetrised and clipped to be positive
    semi-definite)."""
    cov = (sigma ** 2 / alpha) * 0.5 * (jac + jac.transpose(1, 2))
    evals, evecs = torch.linalg.eigh(cov)
    var = w.w_x0 ** 2 * evals.clamp(min=0.0) + w.noise ** 2  # [B, D]
    return evecs, var.sqrt()


def _moment_move(rec: TwistRecord, u: Tensor) -> tuple[Tensor, Tensor]:
    """The twisted proposal on the moment-matched transition ``N(m, S)`` (``S = V diag(std^2)
    V^T`` from ``rec.root``): ``x' = m + S g + V diag(std) z ~ N(m + S g, S)`` with
    ``g = grad log p~`` and ``z`` recovered from the solver's draw ``u = m + sigma^2 g +
    sigma z`` (so the per-row noise streams are kept). Returns ``x'`` (``u``'s shape) and
    ``log N(x'; m, S) - log N(x'; m + S g, S) = -|a + z|^2 / 2 + |z|^2 / 2`` ``[B]`` with
    ``a = diag(std) V^T g``."""
    w = rec.weights
    n = u.shape[0]
    evecs, std = rec.root
    m = (w.w_x * rec.x + w.w_x0 * rec.x0).reshape(n, -1).to(_F64)  # [B, D]
    g = rec.grad.reshape(n, -1).to(_F64)
    z = (u.reshape(n, -1).to(_F64) - m - w.noise ** 2 * g) / w.noise  # [B, D] the step's standard normal
    a = std * torch.einsum("bdk,bd->bk", evecs, g)  # [B, D] diag(std) V^T g
    xn = m + torch.einsum("bdk,bk->bd", evecs, std * (a + z))  # m + S g + V diag(std) z
    return xn.to(u.dtype).reshape(u.shape), -0.5 * ((a + z) ** 2).sum(1) + 0.5 * (z * z).sum(1)


def _sq(x: Tensor) -> Tensor:
    return (x.reshape(x.shape[0], -1).to(_F64) ** 2).sum(1)


#: ``tds(covariance="auto")`` takes the Jacobian twist for measurements of at most this many
#: rows (one vector-Jacobian product per row and step), the flat one above: chosen on the
#: training seeds 1000-1019 (mass error rms 0.021 against 0.023 for the flat twist, 2
#: sampler seeds each); the row limit keeps large measurements (inpainting) affordable
JACOBIAN_MAX_ROWS = 32

#: how TDS moves a particle (``tds``): ``gradient`` (the paper's ``N(m + sigma^2 grad log p~,
#: sigma^2 I)``) or ``gaussian`` (the transition times the twist linearised in ``x``)
PROPOSALS = ("gradient", "gaussian")


def _log_normal_full(r: Tensor, cov: Tensor) -> Tensor:
    """``log N(r; 0, cov)`` ``[B]`` for residuals ``r`` ``[B, M]`` and covariances ``[B, M, M]``."""
    chol = torch.linalg.cholesky(cov)
    sol = torch.cholesky_solve(r.unsqueeze(-1), chol).squeeze(-1)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)
    return -0.5 * (r * sol).sum(1) - 0.5 * logdet - 0.5 * r.shape[1] * math.log(2 * math.pi)


def _gaussian_move(y: Tensor, rec: TwistRecord, u: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """The linear-Gaussian proposal from the twist record ``rec`` at ``x``: with the twist
    linearised, ``l(x') = N(y; A x0_hat(x) + A J (x' - x), C)`` (``C``: the twist's
    covariance at ``x``), draw ``x' ~ q(x') = p(x' | x) l(x') / Z(x)`` from the untwisted
    transition's draw ``u ~ p(. | x) = N(m, sigma^2 I)`` by the Gaussian conditioning update
    ``x' = u + sigma^2 B^T S^{-1} (y - a - B u - v)``, ``v ~ N(0, C)``, ``B = A J``,
    ``S = C + sigma^2 B B^T``, ``a = A x0_hat - B x``. Returns ``x'`` (``u``'s shape) and
    ``log p(x' | x) / q(x' | x) = log Z(x) - log l(x')`` ``[B]`` with ``Z = N(y; a + B m, S)``.
    Without a linearisation (``alpha = 0``: a flat twist) ``x' = u`` and the ratio is 0."""
    if rec.lin is None:
        return u, torch.zeros(u.shape[0], dtype=_F64, device=u.device)
    n = u.shape[0]
    w = rec.weights
    var = w.noise ** 2
    ax, b, cov = rec.lin  # [N, M], [N, M, D], [N, M, M]
    xf = rec.x.reshape(n, -1).to(_F64)
    uf = u.reshape(n, -1).to(_F64)
    m = w.w_x * xf + w.w_x0 * rec.x0.reshape(n, -1).to(_F64)  # [N, D] the transition's mean
    yv = y.to(ax.device)
    a = ax - torch.einsum("nmd,nd->nm", b, xf)  # [N, M]
    s = cov + var * b @ b.transpose(1, 2)  # [N, M, M]
    z = torch.randn(ax.shape, dtype=_F64, generator=gen).to(ax.device)
    v = (torch.linalg.cholesky(cov) @ z.unsqueeze(-1)).squeeze(-1)  # [N, M] ~ N(0, C)
    innov = yv - a - torch.einsum("nmd,nd->nm", b, uf) - v
    gain = torch.linalg.solve(s, innov.unsqueeze(-1))  # [N, M, 1]
    xn = uf + var * (b.transpose(1, 2) @ gain).squeeze(-1)  # [N, D]
    log_z = _log_normal_full(yv - a - torch.einsum("nmd,nd->nm", b, m), s)
    log_l = _log_normal_full(yv - a - torch.einsum("nmd,nd->nm", b, xn), cov)
    return xn.to(u.dtype).reshape(u.shape), log_z - log_l


def _with_noise(rec: TwistRecord, z: Tensor, u: Tensor) -> Tensor:
    """The twisted gradient proposal's draw from ``rec`` with the standard normal noise
    ``z`` ``[B, D]``: ``m + sigma^2 grad log p~ + sigma z`` (``u``'s shape and dtype; ``u``
    is the solver's own draw, replaced)."""
    w = rec.weights
    mean = w.w_x * rec.x + w.w_x0 * rec.x0 + (w.noise ** 2) * rec.grad
    return mean + w.noise * z.reshape(u.shape).to(u)


#: ``tds``'s ESS threshold (resample when ``ESS < threshold * N``)
DEFAULT_ESS_THRESHOLD = 0.25

#: ``tds(qmc=)`` modes: sequential QMC, or QMC over each particle's whole noise path
QMC = ("sqmc", "path")


def _qmc_normal(n: int, width: int, dim: int, gen: torch.Generator) -> Tensor:
    """``[n, width, dim]`` standard normals, row ``n`` the ``Phi^-1`` of point ``n`` of a
    freshly scrambled Sobol set of dimension ``width * dim`` (``sqmc.qmc_uniform``)."""
    return torch.special.ndtri(qmc_uniform(n, width * dim, gen)).reshape(n, width, dim)


#: the grid family ``tds`` and ``mcgdiff`` run on when no ``ts`` is given: chosen on the
#: training seeds 1000-1019 of ``toys.random_problem`` (Karras spacing puts more steps at
#: low noise, where the posterior's components separate; the log-SNR grid left DDPM's
#: discretisation bias at 100 steps near 0.05 in component mass on several of them)
DEFAULT_GRID = "karras"


def _grid(process, steps: int, ts, schedule: str):
    """``ts`` checked, else ``schedule`` on ``process`` (the process's default grid where
    that family does not apply, e.g. log-SNR spacing on a flow, infinite at ``t = 1``)."""
    from .. import grids
    if ts is not None:
        return grids.validate(ts)
    try:
        return grids.get(schedule, process, steps)
    except ValueError:
        return grids.default(process, steps)


def tds(den: DenoiserBase, measurement, n_particles: int, shape, steps: int = 100, ts=None, eta: float = 1.0,
        lam: float = 1.0, twist: LinearGaussianTwist | None = None, covariance: str = "auto",
        proposal: str = "gradient", transition: str = "auto", resample: str = "hilbert",
        ess_threshold: float | None = None, qmc: str | None = "auto", seed: int = 0, return_weighted: bool = False,
        schedule: str = DEFAULT_GRID, dtype=torch.float32, device="cpu") -> ScalingResult:
    """Twisted Diffusion Sampler targeting ``p(x0 | y)`` (module docstring).

    Args:
        den: the prior model; ``measurement``: ``y = A x0 + noise_std n`` (an object with
            ``A``, ``y``, ``noise_std``, e.g. ``toys.tilted.LinearGaussianReward``); ``lam``
            tempers it (the target ``p(x) exp(lam r(x))``).
        n_particles: ``N``; ``shape``: one sample's shape (``A`` acts on it flattened).
        steps / ts: the grid (default: ``schedule``, a ``grids`` family name, with ``steps``
            steps); ``eta``: the DDIM noise level of the transition (1: DDPM).
        covariance: the twist's model of ``A Cov[x0 | x_t] A^T`` (``LinearGaussianTwist``;
            ``auto``: ``jacobian`` up to ``JACOBIAN_MAX_ROWS`` measurement rows, else ``flat``).
        proposal: ``gradient`` (the paper's) or ``gaussian`` (``_gaussian_move``; needs
            ``covariance="jacobian"``).
        transition: the base transition the weights are exact for (``TRANSITIONS``):
            ``ddpm`` or ``moment`` (its covariance from the denoiser's full Jacobian:
            ``D`` vector-Jacobian products per step; with ``proposal="gradient"``);
            ``auto``: ``moment`` up to ``MOMENT_MAX_DIM`` entries, else ``ddpm``.
        twist: a ``LinearGaussianTwist`` to use instead (for ablations).
        resample, ess_threshold: as ``smc`` (the default threshold, 0.25, was chosen on the
            training seeds, as ``DEFAULT_GRID``); ``resample`` may order the particles by
            state (``hilbert``, the default, or ``sorted``: SQMC-style, ``smc.ORDERED``).
        qmc: randomised quasi-Monte Carlo driving noise (``QMC``; gradient proposal only;
            each particle's noise stays marginally exactly what plain TDS draws):
            ``"sqmc"``, sequential QMC (Gerber & Chopin 2015; ``sqmc``): resample at every
            step (``ess_threshold`` 1) with an ordered ``resample``, ancestors and the
            proposal noise from one scrambled Sobol point set per step (``x_T`` and the
            first step's noise from one more); ``"path"``: particle ``n``'s whole noise
            path (``x_T`` and every step) is point ``n`` of one scrambled Sobol set of
            dimension ``D * steps`` (RQMC importance sampling; Owen 1997), and a resampling
            redraws the remaining steps' noise from a fresh set (so it is independent of
            the past, as plain SMC's); ``"auto"`` (default): ``path`` when ``D * steps``
            fits one Sobol set (``sqmc.MAX_DIM``) and the proposal is the gradient one, else
            none; ``None``: the solver's own pseudo-random noise.
        return_weighted: keep the final weighted particles (``info['log_weights']``).
    Returns:
        ``ScalingResult``; ``info``: ``ess`` per step, ``resampled`` step indices,
        ``log_weights`` (final), ``final_ess``.
    """
    resampler = get_resampler(resample)
    qmc = None if qmc is False else qmc
    dim = math.prod(sample_shape(shape))
    if transition == "auto":
        transition = "moment" if proposal == "gradient" and dim <= MOMENT_MAX_DIM else "ddpm"
    auto_qmc = qmc == "auto"
    if auto_qmc:
        qmc = "path" if proposal == "gradient" else None  # (dropped below when D * steps is too wide)
    if qmc is not None and qmc not in QMC:
        raise ValueError(f"unknown TDS qmc mode {qmc!r}; valid: {', '.join(QMC)} (or None)")
    if qmc == "sqmc":
        if resample not in ORDERED:
            raise ValueError(f"qmc='sqmc' resamples in state order: resample must be one of "
                             f"{', '.join(ORDERED)}, got {resample!r}")
        if ess_threshold is not None and ess_threshold != 1.0:
            raise ValueError(f"qmc='sqmc' resamples at every step: ess_threshold must be 1 or None, "
                             f"got {ess_threshold}")
        ess_threshold = 1.0
    if qmc is not None and proposal != "gradient":
        raise ValueError(f"qmc={qmc!r} takes the gradient proposal (proposal='gradient')")
    ess_threshold = DEFAULT_ESS_THRESHOLD if ess_threshold is None else ess_threshold
    if not 0.0 <= ess_threshold <= 1.0:
        raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold}")
    if not eta > 0:
        raise ValueError(f"TDS needs a stochastic transition (eta > 0), got eta={eta}")
    if proposal not in PROPOSALS:
        raise ValueError(f"unknown TDS proposal {proposal!r}; valid: {', '.join(PROPOSALS)}")
    n = int(n_particles)
    if n < 1:
        raise ValueError(f"n_particles must be >= 1, got {n_particles}")
    if covariance == "auto":
        rows = getattr(twist, "y", getattr(measurement, "y", None))
        m = torch.as_tensor(rows).numel() if rows is not None else 0
        covariance = "jacobian" if m <= JACOBIAN_MAX_ROWS else "flat"
    twist = LinearGaussianTwist.of(measurement, lam, covariance) if twist is None else twist
    if proposal == "gaussian" and twist.covariance != "jacobian":
        raise ValueError("proposal='gaussian' needs the twist's Jacobian: pass covariance='jacobian'")
    if transition not in TRANSITIONS:
        raise ValueError(f"unknown TDS transition {transition!r}; valid: {', '.join(TRANSITIONS)}")
    if transition == "moment" and proposal != "gradient":
        raise ValueError("transition='moment' takes the gradient proposal (proposal='gradient')")
    solver = DDIM(eta)
    ts = _grid(den.process, steps, ts, schedule)
    g = Grid.of(den.process, ts)
    n_steps = ts.numel() - 1
    if qmc == "path" and dim * n_steps > SOBOL_MAX_DIM and auto_qmc:
        qmc = None
    gen = torch.Generator().manual_seed(int(seed) ^ 0x7D5)
    rng = SampleRNG.from_seed(seed, batch=n, device=device)
    x = initial_noise(den, (n,) + sample_shape(shape), ts, rng, dtype=dtype, device=device)
    noise = None  # [N, K, D]: the proposal noise of the next K steps (qmc)
    if qmc is not None:  # x_T and the first step's noise (sqmc) or every step's (path): one point set
        z = _qmc_normal(n, 2 if qmc == "sqmc" else n_steps, dim, gen)  # [N, K + 1, D]
        x = (z[:, 0] * float(den.process.sigma(ts[0]))).reshape(x.shape).to(x)
        noise = z[:, 1:]
    model = TwistedDenoiser(Tap(den), twist, eta, shift=proposal == "gradient", transition=transition)
    log_w = model.evaluate(x, g.point(0)).log_twist.clone()  # p(x_T) p~_T / p(x_T)
    ess, resampled = [], []
    for step in iterate(model, solver, x, ts, rng):
        i, x = step.i, step.x
        prev = model.last  # the twist at x_i that this step's proposal used
        if noise is not None and i < n_steps - 1:  # the solver's draw, with the QMC noise instead
            x = _with_noise(prev, noise[:, 0], x)
            step.x, noise = x, noise[:, 1:]
        if i < n_steps - 1 and proposal == "gaussian":
            x, log_ratio = _gaussian_move(twist.y, prev, x, gen)
            step.x = x
            new = model.evaluate(x, g.point(i + 1))
            log_w = log_w + log_ratio + new.log_twist - prev.log_twist
        elif i < n_steps - 1 and prev.root is not None:
            x, log_ratio = _moment_move(prev, x)
            step.x = x
            new = model.evaluate(x, g.point(i + 1))
            log_w = log_w + log_ratio + new.log_twist - prev.log_twist
        elif i < n_steps - 1:
            w = prev.weights
            mean = w.w_x * prev.x + w.w_x0 * prev.x0  # the untwisted transition's mean
            shift = (w.noise ** 2) * prev.grad         # the proposal's mean is mean + shift
            var = w.noise ** 2
            log_transition = -0.5 * _sq(x - mean) / var
            log_proposal = -0.5 * _sq(x - mean - shift) / var  # same normaliser as the transition
            new = model.evaluate(x, g.point(i + 1))
            log_w = log_w + (log_transition - log_proposal) + new.log_twist - prev.log_twist
        else:  # x = x0_hat(x_1): the true likelihood replaces the last twist
            log_w = log_w + twist.exact(x) - prev.log_twist
        ess.append(effective_sample_size(log_w))
        if i < n_steps - 1 and (qmc == "sqmc" or ess[-1] < ess_threshold * n):  # SQMC: every step
            if qmc == "sqmc":  # ancestors and the next step's noise from one fresh point set
                u, z = sqmc_points(n, dim, gen)
                idx = resampler(log_w, n, gen, x=x, u=u)
                noise = z.unsqueeze(1)
            else:
                idx = resampler(log_w, n, gen, x=x)
                if qmc == "path" and noise.shape[1]:  # the remaining steps' noise: a fresh set, independent of the past
                    noise = _qmc_normal(n, noise.shape[1], dim, gen)
            model = model.select(idx)
            reselect(step, idx, model, x=model.cached.x)
            log_w = torch.zeros(n, dtype=_F64, device=log_w.device)
            resampled.append(i)
    log_w = log_w.cpu()
    r = twist.exact(x).cpu()
    info = {"ess": ess, "resampled": resampled, "log_weights": log_w.clone(),
            "final_ess": effective_sample_size(log_w), "steps": n_steps}
    if not return_weighted:
        idx = resampler(log_w, n, gen, x=x)
        x, r = x[idx.to(x.device)], r[idx]
    return ScalingResult(x=x, reward=r.to(x.dtype), nfe=model.rows, verifier_calls=n_steps * n + n,
                         method="tds", info=info)
