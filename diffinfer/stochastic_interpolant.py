"""Two-sided stochastic interpolants: transport between two arbitrary densities.

Albergo, Boffi & Vanden-Eijnden, "Stochastic Interpolants: A Unifying Framework for Flows
and Diffusions" (2023). With ``x0 ~ rho0``, ``x1 ~ rho1`` (here independent) and
``z ~ N(0, I)`` independent of both,

    x_t = I(t, x0, x1) + gamma(t) z,        I = alpha(t) x0 + beta(t) x1,

with ``alpha(0) = beta(1) = 1``, ``alpha(1) = beta(0) = 0`` and ``gamma(0) = gamma(1) = 0``,
has law ``rho0`` at ``t = 0`` and ``rho1`` at ``t = 1`` for ANY base ``rho0`` (not only a
Gaussian). Its density ``rho_t`` obeys the transport equation with the velocity

    b(t, x) = E[ dI/dt + gamma'(t) z | x_t = x ]                      (eq. 2.10)

and, for every ``eps >= 0``, the forward Fokker-Planck equation of

    dX = [b + eps s](t, X) dt + sqrt(2 eps) dW,   s = grad log rho_t = -E[z | x_t] / gamma

(Theorem 2.8 / eq. 2.33): the probability-flow ODE (``eps = 0``) and the SDEs carry samples
of ``rho0`` to samples of ``rho1``.

Time convention. Unlike ``diffinfer.process`` (``t = 0`` data, ``t = 1`` noise), this module
keeps the paper's ``t = 0`` at ``rho0`` (the base) and ``t = 1`` at ``rho1`` (the target): both
ends are arbitrary densities, so neither is "noise". ``transport`` runs either way.

Exact oracle (``MixtureInterpolant``): for Gaussian-mixture ``rho0 = sum_i u_i N(m_i, A_i)``
and ``rho1 = sum_j w_j N(n_j, B_j)`` with the independent coupling, ``x_t`` is a mixture over
the pairs ``(i, j)`` of ``N(mu_ij(t), S_ij(t))``, ``mu = alpha m_i + beta n_j``,
``S = alpha^2 A_i + beta^2 B_j + gamma^2 I``. Given the pair, ``(x0, x1, z, x_t)`` is jointly
Gaussian, so ``E[dI/dt + gamma' z | x_t, ij] = mu' + Cov(alpha' x0 + beta' x1 + gamma' z, x_t)
S^{-1}(x - mu)`` with that covariance ``alpha' alpha A + beta' beta B + gamma' gamma I = S'/2``:

    b(t, x) = sum_ij r_ij(x) [ mu_ij' + (1/2) S_ij' S_ij^{-1} (x - mu_ij) ],
    s(t, x) = -sum_ij r_ij(x) S_ij^{-1} (x - mu_ij),

``r_ij`` the pair responsibilities under ``rho_t``. ``gamma' gamma = (gamma^2)'/2`` is finite
at the ends even where ``gamma'`` is not (``gamma = sqrt(a t (1 - t))``).

``transport`` integrates a drift with fixed steps (Heun for the ODE, Euler-Maruyama for the
SDE, per-sample noise streams); ``diffinfer.toys.reference.pf_ode_solution`` (SciPy DOP853)
takes the same drift object (``velocity(x, t)``) as an independent reference.
``interpolant_loss`` is the quadratic objective whose minimiser is ``b`` (eq. 2.13);
``fit_drift`` trains a network on it with ``diffinfer.train``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .process import as_time
from .registry import Registry
from .rng import SampleRNG

_F64 = torch.float64


# --- the interpolant ------------------------------------------------------------------
def _linear(t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``alpha = 1 - t``, ``beta = t`` and their derivatives (the paper's linear interpolant)."""
    return 1.0 - t, t.clone(), torch.full_like(t, -1.0), torch.ones_like(t)


def _trig(t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``alpha = cos(pi t / 2)``, ``beta = sin(pi t / 2)`` (the paper's trigonometric interpolant)."""
    h = 0.5 * math.pi
    return torch.cos(h * t), torch.sin(h * t), -h * torch.sin(h * t), h * torch.cos(h * t)


PATHS = Registry("interpolant path", {"linear": lambda: _linear, "trig": lambda: _trig})


class TwoSidedInterpolant:
    """``x_t = alpha(t) x0 + beta(t) x1 + gamma(t) z`` with ``gamma^2 = a t (1 - t)``.

    Args:
        path: ``'linear'`` (``alpha = 1 - t``, ``beta = t``) or ``'trig'``
            (``alpha = cos(pi t/2)``, ``beta = sin(pi t/2)``).
        a: latent noise level ``>= 0`` (``a = 0``: a deterministic interpolant, the flow of
            "Building Normalizing Flows with Stochastic Interpolants").
    """

    def __init__(self, path: str = "linear", a: float = 1.0):
        self._path = PATHS.get(path)
        if not (isinstance(a, (int, float)) and math.isfinite(a) and a >= 0):
            raise ValueError(f"a must be a finite number >= 0, got {a!r}")
        self.path, self.a = path, float(a)

    def coefficients(self, t) -> dict[str, Tensor]:
        """float64 ``alpha, beta, d_alpha, d_beta, gamma2 (= gamma^2), d_gamma2`` at ``t``
        (``t`` in ``[0, 1]``, any shape)."""
        t = as_time(t)
        if bool(((t < 0) | (t > 1)).any()):
            raise ValueError(f"t must lie in [0, 1], got {t}")
        al, be, dal, dbe = self._path(t)
        return {"alpha": al, "beta": be, "d_alpha": dal, "d_beta": dbe,
                "gamma2": self.a * t * (1.0 - t), "d_gamma2": self.a * (1.0 - 2.0 * t)}

    def sample_xt(self, x0: Tensor, x1: Tensor, z: Tensor, t) -> Tensor:
        """``x_t`` for pairs ``x0, x1`` and latent ``z`` (``[B, ...]``; ``t`` scalar or ``[B]``)."""
        c = self.coefficients(t)
        e = lambda v: _expand(v, x0)  # noqa: E731
        return e(c["alpha"]) * x0 + e(c["beta"]) * x1 + e(c["gamma2"].sqrt()) * z

    def target_velocity(self, x0: Tensor, x1: Tensor, z: Tensor, t) -> Tensor:
        """``dI/dt + gamma'(t) z``, whose conditional mean given ``x_t`` is ``b`` (needs
        ``0 < t < 1`` where ``a > 0``: ``gamma'`` is infinite at the ends)."""
        c = self.coefficients(t)
        g = c["gamma2"].sqrt()
        if self.a > 0 and bool((g == 0).any()):
            raise ValueError("gamma'(t) is infinite at t = 0 and t = 1 when a > 0; draw t inside (0, 1)")
        d_gamma = torch.where(g > 0, 0.5 * c["d_gamma2"] / torch.where(g > 0, g, torch.ones_like(g)),
                              torch.zeros_like(g))
        e = lambda v: _expand(v, x0)  # noqa: E731
        return e(c["d_alpha"]) * x0 + e(c["d_beta"]) * x1 + e(d_gamma) * z

    def __repr__(self) -> str:
        return f"TwoSidedInterpolant({self.path!r}, a={self.a})"


def _expand(c: Tensor, x: Tensor) -> Tensor:
    c = c.to(device=x.device, dtype=x.dtype)
    return c if c.dim() == 0 else c.reshape(c.shape + (1,) * (x.dim() - c.dim()))


# --- the exact oracle -----------------------------------------------------------------
class MixtureInterpolant:
    """The exact velocity ``b`` and score ``s`` of a two-sided interpolant between two
    Gaussian mixtures (``diffinfer.toys.GaussianMixture``) with the independent coupling
    (module docstring). ``velocity(x, t)`` is ``b`` (the probability-flow drift), so this
    object goes to ``transport`` and to ``toys.reference.pf_ode_solution`` directly."""

    def __init__(self, rho0, rho1, interpolant: TwoSidedInterpolant | None = None):
        if rho0.dim != rho1.dim:
            raise ValueError(f"rho0 has {rho0.dim} dimensions, rho1 has {rho1.dim}")
        self.rho0, self.rho1 = rho0, rho1
        self.interpolant = interpolant if interpolant is not None else TwoSidedInterpolant()
        # pairs (i, j), i over rho0's components (slow index), j over rho1's
        self.weights = (rho0.weights[:, None] * rho1.weights[None, :]).reshape(-1)  # [P]
        K0, K1, D = rho0.n_components, rho1.n_components, rho0.dim
        self._m0 = rho0.means[:, None].expand(K0, K1, D).reshape(-1, D)  # [P, D]
        self._m1 = rho1.means[None, :].expand(K0, K1, D).reshape(-1, D)
        self._c0 = rho0.covs[:, None].expand(K0, K1, D, D).reshape(-1, D, D)  # [P, D, D]
        self._c1 = rho1.covs[None, :].expand(K0, K1, D, D).reshape(-1, D, D)

    @property
    def dim(self) -> int:
        return self.rho0.dim

    def _pairs(self, t) -> tuple[dict, Tensor, Tensor, Tensor, Tensor]:
        """Coefficients, pair means ``[P, D]``, covariances ``[P, D, D]`` and their time
        derivatives at scalar ``t``."""
        c = self.interpolant.coefficients(t)
        eye = torch.eye(self.dim, dtype=_F64)
        al, be, g2 = c["alpha"], c["beta"], c["gamma2"]
        mu = al * self._m0 + be * self._m1
        S = al * al * self._c0 + be * be * self._c1 + g2 * eye
        d_mu = c["d_alpha"] * self._m0 + c["d_beta"] * self._m1
        d_S = 2 * al * c["d_alpha"] * self._c0 + 2 * be * c["d_beta"] * self._c1 + c["d_gamma2"] * eye
        return c, mu, S, d_mu, d_S

    def marginal(self, t):
        """The exact law of ``x_t`` (scalar ``t``) as a ``GaussianMixture`` over the pairs."""
        from .toys.gaussian_mixture import GaussianMixture
        _, mu, S, _, _ = self._pairs(t)
        return GaussianMixture(mu, S, self.weights)

    def _fields(self, x: Tensor, t) -> tuple[Tensor, Tensor]:
        """``b`` and ``s`` at scalar ``t`` for ``x`` ``[B, D]`` float64."""
        _, mu, S, d_mu, d_S = self._pairs(t)
        logpdf, prec_diff = self.rho0._component_logpdf(x, mu, S)  # [B, P], [B, P, D]
        r = torch.softmax(logpdf + torch.log(self.weights), dim=1)  # [B, P]
        per_pair = d_mu.unsqueeze(0) + 0.5 * torch.einsum("pde,bpe->bpd", d_S, prec_diff)  # [B, P, D]
        b = (r.unsqueeze(-1) * per_pair).sum(1)
        s = -(r.unsqueeze(-1) * prec_diff).sum(1)
        return b, s

    def _fields_per_row(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``b`` and ``s`` for ``x`` ``[B, D]`` with one time per row ``t`` ``[B]``: the pair
        means ``[B, P, D]`` and covariances ``[B, P, D, D]`` of every row at once."""
        c = {k: v[:, None, None] for k, v in self.interpolant.coefficients(t).items()}  # [B, 1, 1]
        eye = torch.eye(self.dim, dtype=_F64)
        mu = c["alpha"] * self._m0 + c["beta"] * self._m1  # [B, P, D]
        d_mu = c["d_alpha"] * self._m0 + c["d_beta"] * self._m1
        c = {k: v[..., None] for k, v in c.items()}  # [B, 1, 1, 1]
        S = c["alpha"] ** 2 * self._c0 + c["beta"] ** 2 * self._c1 + c["gamma2"] * eye  # [B, P, D, D]
        d_S = (2 * c["alpha"] * c["d_alpha"] * self._c0 + 2 * c["beta"] * c["d_beta"] * self._c1
               + c["d_gamma2"] * eye)
        chol = torch.linalg.cholesky(S)
        diff = (x.unsqueeze(1) - mu).unsqueeze(-1)  # [B, P, D, 1]
        prec_diff = torch.cholesky_solve(diff, chol).squeeze(-1)  # [B, P, D]
        white = torch.linalg.solve_triangular(chol, diff, upper=False).squeeze(-1)
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # [B, P]
        r = torch.softmax(-0.5 * (white * white).sum(-1) - 0.5 * logdet + torch.log(self.weights), dim=1)
        per_pair = d_mu + 0.5 * (d_S @ prec_diff.unsqueeze(-1)).squeeze(-1)  # [B, P, D]
        return (r.unsqueeze(-1) * per_pair).sum(1), -(r.unsqueeze(-1) * prec_diff).sum(1)

    def _per_time(self, x: Tensor, t, which: int) -> Tensor:
        x = torch.as_tensor(x)
        if x.dim() < 2:
            raise ValueError(f"x must be [B, D], got shape {tuple(x.shape)}")
        xf = x.reshape(x.shape[0], -1).to(_F64)
        if xf.shape[1] != self.dim:
            raise ValueError(f"points have {xf.shape[1]} features, the interpolant has {self.dim}")
        t = as_time(t)
        if t.dim() == 0:
            out = self._fields(xf, t)[which]
        else:
            t = t.reshape(-1).to(device=xf.device)
            if t.numel() != xf.shape[0]:
                raise ValueError(f"t has {t.numel()} entries for a batch of {xf.shape[0]}")
            out = self._fields_per_row(xf, t)[which]
        return out.reshape(x.shape).to(x.dtype)

    def velocity(self, x: Tensor, t) -> Tensor:
        """``b(t, x) = E[dI/dt + gamma' z | x_t = x]`` (same shape and dtype as ``x``)."""
        return self._per_time(x, t, 0)

    def score(self, x: Tensor, t) -> Tensor:
        """``grad log rho_t(x)`` (same shape and dtype as ``x``)."""
        return self._per_time(x, t, 1)

    def __repr__(self) -> str:
        return f"MixtureInterpolant(K0={self.rho0.n_components}, K1={self.rho1.n_components}, D={self.dim}, {self.interpolant!r})"


# --- transport ------------------------------------------------------------------------
def transport(drift, x: Tensor, steps: int = 100, eps: float = 0.0, score=None, t_from: float = 0.0,
              t_to: float = 1.0, seed: int = 0, rng: SampleRNG | None = None) -> Tensor:
    """Carry ``x`` ``[B, ...]`` from ``t_from`` to ``t_to`` on ``steps`` uniform steps.

    ``eps = 0``: the probability-flow ODE ``dx/dt = b`` by Heun's method (order 2).
    ``eps > 0``: the SDE ``dX = [b + eps s] dt + sqrt(2 eps) dW`` by Euler-Maruyama (forward
    in time, ``t_from < t_to``; backward the drift is ``b - eps s``, Theorem 2.8), noise
    from each row's own stream (``seed`` / ``rng``). ``drift``: an object with
    ``velocity(x, t)`` (``MixtureInterpolant``, a learned model) or a callable ``(x, t) -> b``;
    ``score`` likewise (``score(x, t)`` or the drift object's ``score``).
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if not (0.0 <= t_from <= 1.0 and 0.0 <= t_to <= 1.0) or t_from == t_to:
        raise ValueError(f"need distinct t_from, t_to in [0, 1], got {t_from}, {t_to}")
    b = _field(drift, "velocity")
    s = _field(score if score is not None else drift, "score") if eps > 0 else None
    if eps > 0 and rng is None:
        rng = SampleRNG.from_seed(seed, batch=x.shape[0])
    ts = torch.linspace(t_from, t_to, steps + 1, dtype=_F64).tolist()
    sign = 1.0 if t_to > t_from else -1.0
    for k in range(steps):
        t0, t1 = ts[k], ts[k + 1]
        h = t1 - t0
        if eps == 0:
            v0 = _checked(b(x, t0), x, t0)
            x_pred = x + h * v0
            x = x + 0.5 * h * (v0 + _checked(b(x_pred, t1), x, t1))
        else:
            f = _checked(b(x, t0), x, t0) + sign * eps * _checked(s(x, t0), x, t0)
            x = x + h * f + math.sqrt(2.0 * eps * abs(h)) * rng.randn_like(x)
    return x


def _field(obj, name: str) -> Callable[[Tensor, float], Tensor]:
    method = getattr(obj, name, None)
    if callable(method):
        return method
    if callable(obj):
        return obj
    raise TypeError(f"expected an object with .{name}(x, t) or a callable (x, t) -> tensor, got {type(obj).__name__}")


def _checked(v: Tensor, x: Tensor, t: float) -> Tensor:
    if v.shape != x.shape:
        raise ValueError(f"the field returned shape {tuple(v.shape)} for x of shape {tuple(x.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise FloatingPointError(f"the field returned NaN or Inf at t={t:.6g}")
    return v


# --- training objective ---------------------------------------------------------------
def interpolant_loss(model: Callable[[Tensor, Tensor], Tensor], interpolant: TwoSidedInterpolant,
                     x0: Tensor, x1: Tensor, t: Tensor | None = None, z: Tensor | None = None,
                     generator: torch.Generator | None = None, t_margin: float = 1e-3) -> Tensor:
    """``E |model(x_t, t) - (dI/dt + gamma' z)|^2`` (mean over entries), minimised by ``b``
    (eq. 2.13). ``t ~ U(t_margin, 1 - t_margin)`` and ``z ~ N(0, I)`` from ``generator``
    unless given; ``x0`` / ``x1`` are paired rows (independent draws: the independent coupling)."""
    if x0.shape != x1.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} must have the same shape")
    B = x0.shape[0]
    if t is None:
        t = t_margin + (1 - 2 * t_margin) * torch.rand(B, dtype=_F64, generator=generator)
    if z is None:
        z = torch.randn(x0.shape, dtype=x0.dtype, generator=generator)
    xt = interpolant.sample_xt(x0, x1, z, t)
    target = interpolant.target_velocity(x0, x1, z, t)
    return (model(xt, as_time(t).to(x0.dtype)) - target).pow(2).flatten(1).mean(1).mean()


def fit_drift(net: torch.nn.Module, interpolant: TwoSidedInterpolant, x0: Tensor, x1: Tensor, steps: int = 3000,
              batch: int = 512, lr: float = 2e-3, ema_decay: float = 0.999, seed: int = 0, progress: bool = False):
    """Train ``net(x, t [B]) -> b`` on ``interpolant_loss`` with ``diffinfer.train.fit`` (Adam,
    warm-up, cosine decay, EMA ``ema_decay``), pairing random rows of the sample pools ``x0`` ``[N0, D]``
    and ``x1`` ``[N1, D]`` independently (the independent coupling). Returns ``(drift, result)``:
    ``drift(x, t)`` runs the EMA weights (in the net's dtype, answering in ``x``'s) for
    ``transport``; ``result`` is ``train.TrainResult``."""
    from .train import TrainConfig, fit
    dtype = next(net.parameters()).dtype
    p0, p1 = x0.to(dtype), x1.to(dtype)

    def loss_fn(m, g):
        i = torch.randint(0, p0.shape[0], (batch,), generator=g)
        j = torch.randint(0, p1.shape[0], (batch,), generator=g)
        return interpolant_loss(lambda x, t: m(x, t.to(dtype)), interpolant, p0[i], p1[j], generator=g)

    cfg = TrainConfig(steps=steps, lr=lr, warmup=max(1, steps // 30), ema_decay=ema_decay, seed=seed,
                      checkpoint_every=0)
    result = fit(net, loss_fn, cfg, progress=progress, desc="drift")
    ema = result.ema_model()

    @torch.no_grad()
    def drift(x: Tensor, t) -> Tensor:
        tt = as_time(t).to(dtype)
        tt = tt.expand(x.shape[0]) if tt.dim() == 0 else tt
        return ema(x.to(dtype), tt).to(x.dtype)
    return drift, result


__all__ = ["TwoSidedInterpolant", "MixtureInterpolant", "transport", "interpolant_loss", "fit_drift", "PATHS"]
