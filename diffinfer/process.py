"""Noise processes: ``x_t = alpha(t) * x0 + sigma(t) * eps`` with ``t`` in ``[0, 1]``.

``t = 0`` is data and ``t = 1`` is noise, for every process (DESIGN.md section 1).
Coefficients are computed in float64 and cast by the caller (``Process.coeffs``).

Processes:

- ``VP("linear")``: the variance-preserving SDE of Song et al., "Score-Based Generative
  Modeling through Stochastic Differential Equations" (ICLR 2021), with
  ``beta(t) = beta_min + t (beta_max - beta_min)``.
- ``VP("cosine")``: the cosine schedule of Nichol & Dhariwal, "Improved Denoising
  Diffusion Probabilistic Models" (ICML 2021), in continuous time.
- ``VE``: variance exploding, ``sigma(t) = sigma_min (sigma_max / sigma_min) ** t``.
- ``EDM``: Karras et al., "Elucidating the Design Space of Diffusion-Based Generative
  Models" (NeurIPS 2022): ``alpha = 1``, ``sigma = sigma_max * t``.
- ``RectifiedFlow``: Liu et al. 2022 / Lipman et al. 2022, ``alpha = 1 - t``, ``sigma = t``.
- ``DiscreteVP``: a DDPM table ``alphas_cumprod`` (Ho et al. 2020) made continuous by
  interpolating ``log alpha`` linearly between ``t_k = (k + 1) / N`` (as DPM-Solver's
  ``NoiseScheduleVP('discrete')``), with ``alpha(0) = 1``.
- ``Interpolant``: any ``alpha(t)``, ``sigma(t)`` (Albergo, Boffi & Vanden-Eijnden,
  "Stochastic Interpolants", 2023), derivatives by autograd unless given.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import torch

Tensor = torch.Tensor
_F64 = torch.float64


def as_time(t) -> Tensor:
    """``t`` as a float64 tensor (scalar or any shape), on the CPU unless it is a tensor."""
    if isinstance(t, Tensor):
        return t if t.dtype == _F64 else t.to(_F64)
    return torch.as_tensor(t, dtype=_F64)


def expand_to(c: Tensor, x: Tensor) -> Tensor:
    """Cast a coefficient (scalar or ``[B]``) to ``x``'s dtype/device, broadcastable to ``x``."""
    c = c.to(device=x.device, dtype=x.dtype)
    if c.dim() == 0:
        return c
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim()))


class Process:
    """A Gaussian noising path ``x_t = alpha(t) x0 + sigma(t) eps``.

    Subclasses implement ``alpha``, ``sigma`` and may override the derivatives and
    ``t_from_logsnr`` with closed forms. ``t_min`` / ``t_max`` bound the default time grids.
    """

    t_min: float = 0.0
    t_max: float = 1.0
    name: str = "process"

    # --- to implement -------------------------------------------------------------
    def alpha(self, t) -> Tensor:
        raise NotImplementedError

    def sigma(self, t) -> Tensor:
        raise NotImplementedError

    # --- derived (override with closed forms where available) ----------------------
    def d_alpha(self, t) -> Tensor:
        return _autograd_derivative(self.alpha, t)

    def d_sigma(self, t) -> Tensor:
        return _autograd_derivative(self.sigma, t)

    def logsnr(self, t) -> Tensor:
        """``log(alpha^2 / sigma^2)``; ``+inf`` where ``sigma = 0``, ``-inf`` where ``alpha = 0``."""
        t = as_time(t)
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def t_from_logsnr(self, lam) -> Tensor:
        """Inverse of ``logsnr`` (by bisection here; closed forms in subclasses)."""
        lam = as_time(lam)
        lo = torch.full_like(lam, 0.0)
        hi = torch.full_like(lam, 1.0)
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            above = self.logsnr(mid) > lam  # logsnr decreases in t
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    #: how many grids ``on_grid`` keeps per process
    GRID_MEMO_SIZE = 8

    def on_grid(self, ts) -> "GridCoefficients":
        """Every coefficient a solver needs on the time grid ``ts`` ``[N+1]``, computed once
        with one vectorised call each (see ``GridCoefficients``).

        The newest ``GRID_MEMO_SIZE`` grids are kept per process, keyed by the grid's values
        and device, so sampling again on the same grid reuses its evaluation and casts (a
        process is treated as immutable, as ``Denoiser``'s coefficient memo does; the grid's
        values are read once here)."""
        ts = as_time(ts)
        if ts.dim() != 1 or ts.requires_grad:
            return GridCoefficients(self, ts)  # raises with the shape / not kept
        memo = self.__dict__.setdefault("_grid_memo", {})
        key = (ts.device, tuple(ts.tolist()))
        grid = memo.get(key)
        if grid is None:
            if len(memo) >= self.GRID_MEMO_SIZE:
                del memo[next(iter(memo))]  # the oldest
            grid = memo[key] = GridCoefficients(self, ts.clone())
        return grid

    def at(self, t) -> "TimeCoefficients":
        """The coefficients at one time ``t``, each evaluated on first use (the same fields
        as a grid's ``PointCoefficients``), for code that holds a time rather than a grid."""
        return TimeCoefficients(self, as_time(t))

    def coeffs(self, t, x: Tensor) -> tuple[Tensor, Tensor]:
        """``alpha(t), sigma(t)`` cast to ``x``'s dtype and broadcastable against ``x``."""
        t = as_time(t)
        return expand_to(self.alpha(t), x), expand_to(self.sigma(t), x)

    def sde(self, t) -> tuple[Tensor, Tensor]:
        """Drift factor ``f(t) = alpha'/alpha`` and squared diffusion
        ``g^2(t) = d(sigma^2)/dt - 2 f sigma^2`` of the forward SDE ``dx = f x dt + g dW``
        whose marginals this process has (float64)."""
        t = as_time(t)
        return sde_terms(self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t))

    def add_noise(self, x0: Tensor, eps: Tensor, t) -> Tensor:
        """``x_t = alpha(t) x0 + sigma(t) eps`` (``t`` scalar or ``[B]``)."""
        a, s = self.coeffs(t, x0)
        return a * x0 + s * eps

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def sde_terms(a: Tensor, s: Tensor, da: Tensor, ds: Tensor) -> tuple[Tensor, Tensor]:
    """``f = a'/a`` and ``g^2 = 2 s s' - 2 f s^2`` from the coefficients (see ``Process.sde``)."""
    f = da / a
    g2 = 2.0 * s * ds - 2.0 * f * s * s
    return f, g2


#: the coefficient names of ``GridCoefficients`` / ``PointCoefficients`` / ``TimeCoefficients``
COEFFICIENTS = ("t", "alpha", "sigma", "d_alpha", "d_sigma", "lam", "sigma_over_alpha", "f", "g2")


class TimeCoefficients:
    """A process's coefficients at a time ``t`` (float64), each evaluated on first use:
    ``alpha``, ``sigma``, ``d_alpha``, ``d_sigma``, ``lam`` (half log-SNR ``log(alpha/sigma)``:
    ``-inf`` where ``alpha = 0``, ``+inf`` where ``sigma = 0``), ``sigma_over_alpha`` and the
    forward SDE's ``f``, ``g2`` (``Process.sde``)."""

    def __init__(self, process: Process, t: Tensor):
        self.process, self.t = process, t

    alpha = functools.cached_property(lambda self: self.process.alpha(self.t))
    sigma = functools.cached_property(lambda self: self.process.sigma(self.t))
    d_alpha = functools.cached_property(lambda self: self.process.d_alpha(self.t))
    d_sigma = functools.cached_property(lambda self: self.process.d_sigma(self.t))
    lam = functools.cached_property(lambda self: 0.5 * self.process.logsnr(self.t))
    sigma_over_alpha = functools.cached_property(lambda self: self.sigma / self.alpha)
    _sde = functools.cached_property(lambda self: sde_terms(self.alpha, self.sigma, self.d_alpha, self.d_sigma))
    f = property(lambda self: self._sde[0])
    g2 = property(lambda self: self._sde[1])

    def cast(self, name: str, x: Tensor) -> Tensor:
        """Coefficient ``name`` cast for ``x`` (``expand_to``)."""
        return expand_to(getattr(self, name), x)


class GridCoefficients(TimeCoefficients):
    """The coefficients of ``process`` on a time grid ``ts`` ``[N+1]`` (float64, ``ts``'s device).

    Each coefficient (``TimeCoefficients``' names; ``ts`` is the grid) is one vectorised call
    of the process's elementwise method, made once, on first use, so entry ``k`` equals the
    process evaluated at the 0-d ``ts[k]``. ``grid[k]`` is the ``PointCoefficients`` of
    ``ts[k]``: a solver step indexes 0-d views (split once per coefficient) instead of
    re-evaluating the process. Immutable (attributes cannot be set).
    """

    def __init__(self, process: Process, ts):
        ts = as_time(ts)
        if ts.dim() != 1 or ts.numel() < 2:
            raise ValueError(f"a time grid must be 1-d with at least 2 points, got shape {tuple(ts.shape)}")
        d = self.__dict__
        d["process"], d["t"], d["_views"] = process, ts, {}
        d["_points"] = tuple(PointCoefficients(self, k) for k in range(ts.numel()))

    @property
    def ts(self) -> Tensor:
        return self.t

    def __setattr__(self, name, value):
        raise AttributeError("GridCoefficients is immutable")

    def views(self, name: str) -> tuple[Tensor, ...]:
        """Coefficient ``name`` as ``N+1`` 0-d float64 views (split on first use)."""
        found = self._views.get(name)
        if found is None:
            if name not in COEFFICIENTS:
                raise ValueError(f"unknown coefficient {name!r}; valid: {', '.join(COEFFICIENTS)}")
            found = self._views[name] = getattr(self, name).unbind()
        return found

    def cast_views(self, name: str, x: Tensor) -> tuple[Tensor, ...]:
        """Coefficient ``name`` as ``N+1`` 0-d tensors of ``x``'s dtype and device: entry ``k``
        equals ``expand_to(grid[k].<name>, x)``, from one cast per grid, dtype and device
        (on an accelerator: one copy per grid instead of one per step)."""
        key = (name, x.dtype, x.device)
        found = self._views.get(key)
        if found is None:
            found = self._views[key] = getattr(self, name).to(device=x.device, dtype=x.dtype).unbind()
        return found

    def host(self) -> "HostCoefficients":
        """``t``, ``alpha``, ``sigma``, their derivatives and ``lam`` as Python floats (float64
        values read from the grid once, on first use): what solver steps and the denoiser's
        prediction-type conversion combine with the sample, so a step reads no tensor."""
        found = self._views.get("host")
        if found is None:
            columns = torch.stack([getattr(self, name) for name in HostCoefficients._fields])  # [6, N+1]
            found = self._views["host"] = HostCoefficients(*(tuple(c) for c in columns.tolist()))
        return found

    def sigma_ratios(self, x: Tensor) -> tuple[Tensor, ...]:
        """``sigma(ts[k+1]) / sigma(ts[k])`` for the ``N`` steps, as 0-d tensors of ``x``'s dtype
        and device (computed in float64, cast once per grid, dtype and device): the weight of
        the current sample in every data-prediction update (``x' = (s'/s) x + ...``)."""
        key = ("sigma_ratio", x.dtype, x.device)
        found = self._views.get(key)
        if found is None:
            s = self.sigma  # [N+1]
            found = self._views[key] = (s[1:] / s[:-1]).to(device=x.device, dtype=x.dtype).unbind()
        return found

    def prepare(self, x: Tensor) -> "GridCoefficients":
        """Read and cast, once, what steps on ``x``'s dtype and device use (``host``,
        ``sigma_ratios``, the times as ``cast_views('t', x)``), so that a step converts no tensor
        to Python and copies nothing to the device. Returns the grid."""
        self.host()
        self.sigma_ratios(x)
        self.cast_views("t", x)
        return self

    def __getitem__(self, k: int) -> "PointCoefficients":
        return self._points[k]

    def __len__(self) -> int:
        return len(self._points)

    def __repr__(self) -> str:
        return f"GridCoefficients({self.process!r}, N+1={len(self)})"


class HostCoefficients(NamedTuple):
    """A grid's coefficients as Python floats, entry ``k`` at ``ts[k]`` (``GridCoefficients.host``)."""

    t: tuple[float, ...]
    alpha: tuple[float, ...]
    sigma: tuple[float, ...]
    d_alpha: tuple[float, ...]
    d_sigma: tuple[float, ...]
    lam: tuple[float, ...]


class PointCoefficients:
    """The coefficients of a grid's point ``k`` (``TimeCoefficients``' names, 0-d float64
    views of the grid's precomputed columns, each looked up once and then kept here)."""

    __slots__ = ("grid", "k") + COEFFICIENTS

    def __init__(self, grid: GridCoefficients, k: int):
        self.grid, self.k = grid, k

    def __getattr__(self, name: str) -> Tensor:  # only called for a field not yet looked up
        if name not in COEFFICIENTS:
            raise AttributeError(name)
        value = self.grid.views(name)[self.k]
        object.__setattr__(self, name, value)
        return value

    def __setattr__(self, name, value):
        if name in COEFFICIENTS:
            raise AttributeError("PointCoefficients is immutable")
        object.__setattr__(self, name, value)

    def cast(self, name: str, x: Tensor) -> Tensor:
        """``expand_to(self.<name>, x)`` (the grid's one cast for ``x``'s dtype and device)."""
        return self.grid.cast_views(name, x)[self.k]

    def __repr__(self) -> str:
        return f"PointCoefficients(k={self.k}, t={self.t.item():.6g})"


def _autograd_derivative(fn: Callable[[Tensor], Tensor], t) -> Tensor:
    t = as_time(t).detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = fn(t)
        if not y.requires_grad:  # a constant
            return torch.zeros_like(t).detach()
        (g,) = torch.autograd.grad(y.sum(), t)
    return g.detach()


class VP(Process):
    """Variance preserving: ``alpha^2 + sigma^2 = 1``; ``schedule`` is 'linear' or 'cosine'."""

    def __init__(self, schedule: str = "linear", beta_min: float = 0.1, beta_max: float = 20.0,
                 cosine_s: float = 0.008, t_min: float = 1e-3, t_max: float | None = None):
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"unknown VP schedule {schedule!r}; valid: 'linear', 'cosine'")
        self.schedule = schedule
        self.beta_min, self.beta_max, self.cosine_s = float(beta_min), float(beta_max), float(cosine_s)
        self.name = f"vp-{schedule}"
        self.t_min = float(t_min)
        # cosine: alpha(1) = 0 exactly, so the default grid stops short of it (as DPM-Solver's T = 0.9946)
        self.t_max = float(t_max) if t_max is not None else (1.0 if schedule == "linear" else 0.9946)

    def log_alpha(self, t) -> Tensor:
        t = as_time(t)
        if self.schedule == "linear":
            return -0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        s = self.cosine_s
        return torch.log(torch.cos(0.5 * math.pi * (t + s) / (1 + s))) - math.log(math.cos(0.5 * math.pi * s / (1 + s)))

    def d_log_alpha(self, t) -> Tensor:
        t = as_time(t)
        if self.schedule == "linear":
            return -0.5 * t * (self.beta_max - self.beta_min) - 0.5 * self.beta_min
        s = self.cosine_s
        u = 0.5 * math.pi * (t + s) / (1 + s)
        return -torch.tan(u) * 0.5 * math.pi / (1 + s)

    def alpha(self, t) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t) -> Tensor:
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def d_alpha(self, t) -> Tensor:
        return self.alpha(t) * self.d_log_alpha(t)

    def d_sigma(self, t) -> Tensor:
        a = self.alpha(t)
        return -a * a * self.d_log_alpha(t) / self.sigma(t)

    def logsnr(self, t) -> Tensor:
        la = self.log_alpha(t)
        return 2.0 * la - torch.log(-torch.expm1(2.0 * la))

    def t_from_logsnr(self, lam) -> Tensor:
        lam = as_time(lam)
        log_alpha = 0.5 * torch.nn.functional.logsigmoid(lam)  # alpha^2 = sigmoid(logsnr)
        if self.schedule == "linear":
            d, b = self.beta_max - self.beta_min, self.beta_min
            # 0.25 d t^2 + 0.5 b t + log_alpha = 0
            return (-0.5 * b + torch.sqrt(0.25 * b * b - d * log_alpha)) / (0.5 * d)
        s = self.cosine_s
        c0 = math.log(math.cos(0.5 * math.pi * s / (1 + s)))
        return 2 * (1 + s) / math.pi * torch.arccos(torch.exp(log_alpha + c0)) - s

    def __repr__(self) -> str:
        return f"VP({self.schedule!r})"


class VE(Process):
    """Variance exploding: ``alpha = 1``, ``sigma(t) = sigma_min (sigma_max/sigma_min)^t``."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def alpha(self, t) -> Tensor:
        return torch.ones_like(as_time(t))

    def sigma(self, t) -> Tensor:
        return self.sigma_min * torch.exp(as_time(t) * self._log_ratio)

    def d_alpha(self, t) -> Tensor:
        return torch.zeros_like(as_time(t))

    def d_sigma(self, t) -> Tensor:
        return self.sigma(t) * self._log_ratio

    def t_from_logsnr(self, lam) -> Tensor:
        return (-0.5 * as_time(lam) - math.log(self.sigma_min)) / self._log_ratio

    def __repr__(self) -> str:
        return f"VE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class EDM(Process):
    """Karras et al. 2022: ``alpha = 1``, ``sigma = sigma_max * t``, sampled on ``[sigma_min, sigma_max]``."""

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        self.sigma_min, self.sigma_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)
        self.t_min = self.sigma_min / self.sigma_max

    def alpha(self, t) -> Tensor:
        return torch.ones_like(as_time(t))

    def sigma(self, t) -> Tensor:
        return self.sigma_max * as_time(t)

    def d_alpha(self, t) -> Tensor:
        return torch.zeros_like(as_time(t))

    def d_sigma(self, t) -> Tensor:
        return torch.full_like(as_time(t), self.sigma_max)

    def t_from_logsnr(self, lam) -> Tensor:
        return torch.exp(-0.5 * as_time(lam)) / self.sigma_max

    def t_from_sigma(self, sigma) -> Tensor:
        return as_time(sigma) / self.sigma_max

    def __repr__(self) -> str:
        return f"EDM(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class RectifiedFlow(Process):
    """Rectified flow / conditional OT path: ``alpha = 1 - t``, ``sigma = t``."""

    name = "rectified-flow"

    def alpha(self, t) -> Tensor:
        return 1.0 - as_time(t)

    def sigma(self, t) -> Tensor:
        return as_time(t).clone()

    def d_alpha(self, t) -> Tensor:
        return torch.full_like(as_time(t), -1.0)

    def d_sigma(self, t) -> Tensor:
        return torch.ones_like(as_time(t))

    def t_from_logsnr(self, lam) -> Tensor:
        return torch.sigmoid(-0.5 * as_time(lam))

    def __repr__(self) -> str:
        return "RectifiedFlow()"


def beta_table(kind: str, n: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02) -> Tensor:
    """A DDPM beta table as diffusers configs name them ('linear', 'scaled_linear'), float64."""
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=_F64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=_F64) ** 2
    raise ValueError(f"unknown beta schedule {kind!r}; valid: 'linear', 'scaled_linear'")


class DiscreteVP(Process):
    """A discrete DDPM table made continuous.

    Index ``k`` of ``alphas_cumprod`` (length ``N``) sits at ``t_k = (k + 1) / N``;
    ``log alpha`` is linear between nodes, with ``alpha(0) = 1``. A network trained on
    integer timesteps takes ``index(t) = t * N - 1`` (see ``Denoiser(time_input=...)``).
    """

    name = "discrete-vp"

    def __init__(self, alphas_cumprod: Tensor | None = None, beta_schedule: str = "linear",
                 num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02):
        if alphas_cumprod is None:
            betas = beta_table(beta_schedule, num_train_timesteps, beta_start, beta_end)
            alphas_cumprod = torch.cumprod(1.0 - betas, 0)
        acp = torch.as_tensor(alphas_cumprod, dtype=_F64).flatten()
        if acp.numel() < 2 or not bool(((acp > 0) & (acp < 1)).all()) or not bool((acp[1:] < acp[:-1]).all()):
            raise ValueError("alphas_cumprod must be a strictly decreasing table of values in (0, 1)")
        self.alphas_cumprod = acp
        self.N = acp.numel()
        self._t_nodes = torch.cat([torch.zeros(1, dtype=_F64), torch.arange(1, self.N + 1, dtype=_F64) / self.N])
        self._la_nodes = torch.cat([torch.zeros(1, dtype=_F64), 0.5 * torch.log(acp)])
        self.t_min = 1.0 / self.N
        self.t_max = 1.0

    def index(self, t) -> Tensor:
        """Continuous training-timestep index ``t * N - 1`` for networks trained on integers."""
        return as_time(t) * self.N - 1.0

    def _segment(self, t: Tensor) -> Tensor:
        return torch.clamp(torch.searchsorted(self._t_nodes, t.contiguous(), right=True) - 1, 0, self.N - 1)

    def log_alpha(self, t) -> Tensor:
        t = as_time(t)
        k = self._segment(t)
        t0, t1 = self._t_nodes[k], self._t_nodes[k + 1]
        l0, l1 = self._la_nodes[k], self._la_nodes[k + 1]
        return l0 + (t - t0) * (l1 - l0) / (t1 - t0)

    def _slope(self, t) -> Tensor:
        t = as_time(t)
        k = self._segment(t)
        return (self._la_nodes[k + 1] - self._la_nodes[k]) / (self._t_nodes[k + 1] - self._t_nodes[k])

    def alpha(self, t) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t) -> Tensor:
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def d_alpha(self, t) -> Tensor:
        return self.alpha(t) * self._slope(t)

    def d_sigma(self, t) -> Tensor:
        a = self.alpha(t)
        return -a * a * self._slope(t) / self.sigma(t)

    def logsnr(self, t) -> Tensor:
        la = self.log_alpha(t)
        return 2.0 * la - torch.log(-torch.expm1(2.0 * la))

    def t_from_logsnr(self, lam) -> Tensor:
        lam = as_time(lam)
        la = 0.5 * torch.nn.functional.logsigmoid(lam)
        # log alpha decreases along the nodes: flip both for interpolation
        xs, ys = -self._la_nodes, self._t_nodes
        k = torch.clamp(torch.searchsorted(xs, (-la).contiguous(), right=True) - 1, 0, self.N - 1)
        return ys[k] + (-la - xs[k]) * (ys[k + 1] - ys[k]) / (xs[k + 1] - xs[k])

    def __repr__(self) -> str:
        return f"DiscreteVP(N={self.N})"


class Interpolant(Process):
    """A general path from two functions of ``t`` (float64 tensors in, out).

    Derivatives use ``d_alpha`` / ``d_sigma`` if given, else autograd.
    """

    name = "interpolant"

    def __init__(self, alpha: Callable[[Tensor], Tensor], sigma: Callable[[Tensor], Tensor],
                 d_alpha: Callable[[Tensor], Tensor] | None = None,
                 d_sigma: Callable[[Tensor], Tensor] | None = None,
                 t_min: float = 0.0, t_max: float = 1.0):
        self._alpha, self._sigma = alpha, sigma
        self._d_alpha, self._d_sigma = d_alpha, d_sigma
        self.t_min, self.t_max = float(t_min), float(t_max)

    def alpha(self, t) -> Tensor:
        return self._alpha(as_time(t))

    def sigma(self, t) -> Tensor:
        return self._sigma(as_time(t))

    def d_alpha(self, t) -> Tensor:
        return self._d_alpha(as_time(t)) if self._d_alpha else super().d_alpha(t)

    def d_sigma(self, t) -> Tensor:
        return self._d_sigma(as_time(t)) if self._d_sigma else super().d_sigma(t)


PROCESSES = {
    "vp": lambda **kw: VP("linear", **kw),
    "vp-linear": lambda **kw: VP("linear", **kw),
    "vp-cosine": lambda **kw: VP("cosine", **kw),
    "ve": VE,
    "edm": EDM,
    "rectified-flow": RectifiedFlow,
    "rf": RectifiedFlow,
    "discrete-vp": DiscreteVP,
}


def get_process(name: str, **options) -> Process:
    """A process by name; unknown names raise with the list of valid ones."""
    if isinstance(name, Process):
        return name
    try:
        factory = PROCESSES[name]
    except KeyError:
        raise ValueError(f"unknown process {name!r}; valid: {', '.join(sorted(PROCESSES))}") from None
    return factory(**options)
