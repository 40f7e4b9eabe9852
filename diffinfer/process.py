"""Noise processes: ``x_t = alpha(t) * x0 + sigma(t) * eps`` with ``t`` in ``[0, 1]``.

``t = 0`` is data and ``t = 1`` is noise, for every process (docs/architecture.md).
Coefficients are computed in float64 (``Process.at(t)``, one record) and cast by the caller.

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

import math
from typing import Callable

import torch
from torch import Tensor

from .registry import Registry

_F64 = torch.float64


def as_time(t) -> Tensor:
    """``t`` as a float64 tensor (scalar or any shape), on the CPU unless it is a tensor;
    a grid point (``diffinfer.grids.GridPoint``) gives its time."""
    t = getattr(t, "time", t)
    if isinstance(t, Tensor):
        return t if t.dtype == _F64 else t.to(_F64)
    return torch.as_tensor(t, dtype=_F64)


def expand_to(c: Tensor, x: Tensor) -> Tensor:
    """Cast a coefficient (scalar or ``[B]``) to ``x``'s dtype/device, broadcastable to ``x``."""
    c = c.to(device=x.device, dtype=x.dtype)
    if c.dim() == 0:
        return c
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim()))


class Coefficients:
    """A process's coefficients at times ``t`` (float64 tensors of ``t``'s shape): ``alpha``,
    ``sigma``, their time derivatives ``d_alpha``, ``d_sigma``; and, computed on first use,
    ``lam`` (half the log-SNR, ``log(alpha/sigma)``: ``-inf`` where ``alpha = 0``, ``+inf``
    where ``sigma = 0``), ``sigma_over_alpha`` and the forward SDE's drift factor
    ``f = alpha'/alpha`` and squared diffusion ``g2 = d(sigma^2)/dt - 2 f sigma^2``
    (``dx = f x dt + g dW`` has this process's marginals).

    The one coefficient record: ``Process.at(t)`` returns it, a ``Grid`` (``diffinfer.grids``)
    holds one over its points, and the denoiser's prediction-type conversion takes one cast
    for a sample (``broadcast``). See docs/architecture.md.
    """

    __slots__ = ("process", "t", "alpha", "sigma", "d_alpha", "d_sigma", "_lam")

    def __init__(self, process: "Process", t: Tensor, alpha, sigma, d_alpha, d_sigma, lam=None):
        self.process, self.t = process, t
        self.alpha, self.sigma, self.d_alpha, self.d_sigma = alpha, sigma, d_alpha, d_sigma
        self._lam = lam

    @property
    def lam(self) -> Tensor:
        if self._lam is None:
            self._lam = 0.5 * self.process.logsnr(self.t)
        return self._lam

    @property
    def sigma_over_alpha(self) -> Tensor:
        return self.sigma / self.alpha

    @property
    def f(self) -> Tensor:
        return self.d_alpha / self.alpha

    @property
    def g2(self) -> Tensor:
        s = self.sigma
        return 2.0 * s * self.d_sigma - 2.0 * self.f * s * s

    def broadcast(self, x: Tensor) -> "Coefficients":
        """``alpha``, ``sigma`` and their derivatives cast to ``x``'s dtype and device and
        shaped to broadcast against ``x`` (a scalar ``t`` or one time per row)."""
        return Coefficients(self.process, self.t, *(expand_to(c, x) for c in
                                                     (self.alpha, self.sigma, self.d_alpha, self.d_sigma)))

    def __repr__(self) -> str:
        return f"Coefficients({self.process!r}, t={self.t})"


class Process:
    """A Gaussian noising path ``x_t = alpha(t) x0 + sigma(t) eps``.

    Subclasses implement ``alpha``, ``sigma`` and may override the derivatives and
    ``t_from_logsnr`` with closed forms; everything else reads ``at(t)``, the one
    coefficient record. ``t_min`` / ``t_max`` bound the default time grids.
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

    # --- the coefficient record and forward transitions ----------------------------
    def at(self, t) -> Coefficients:
        """The coefficients at ``t`` (a float, a 0-d or any-shape tensor, a grid point), float64."""
        t = as_time(t)
        return Coefficients(self, t, self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t))

    def add_noise(self, x0: Tensor, eps: Tensor, t) -> Tensor:
        """``x_t = alpha(t) x0 + sigma(t) eps`` (``t`` scalar or ``[B]``)."""
        t = as_time(t)
        return expand_to(self.alpha(t), x0) * x0 + expand_to(self.sigma(t), x0) * eps

    def renoise(self, x: Tensor, t, t_up, noise: Tensor) -> Tensor:
        """Forward transition ``q(x_{t_up} | x_t)`` (``t_up >= t``):
        ``x' = (a'/a) x + sqrt(s'^2 - (a' s / a)^2) z``; the marginal at ``t_up`` is exact."""
        t, t_up = as_time(t), as_time(t_up)
        a, s = self.alpha(t), self.sigma(t)
        a1, s1 = self.alpha(t_up), self.sigma(t_up)
        ratio = a1 / a
        std = torch.sqrt(torch.clamp(s1 * s1 - (ratio * s) ** 2, min=0.0))
        return expand_to(ratio, x) * x + expand_to(std, x) * noise

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _autograd_derivative(fn: Callable[[Tensor], Tensor], t) -> Tensor:
    t = as_time(t).detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = fn(t)
        if not y.requires_grad:  # a constant
            return torch.zeros_like(t).detach()
        (g,) = torch.autograd.grad(y.sum(), t)
    return g.detach()


class LogAlphaVP(Process):
    """A variance-preserving process given by ``log alpha(t)`` and its derivative:
    ``alpha^2 + sigma^2 = 1``. Subclasses implement ``log_alpha`` and ``d_log_alpha``."""

    def log_alpha(self, t) -> Tensor:
        raise NotImplementedError

    def d_log_alpha(self, t) -> Tensor:
        raise NotImplementedError

    def alpha(self, t) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t) -> Tensor:
        # clamped: log alpha(0) can round to +1e-20 (cosine), where sigma is 0, not NaN
        return torch.sqrt(torch.clamp(-torch.expm1(2.0 * self.log_alpha(t)), min=0.0))

    def d_alpha(self, t) -> Tensor:
        return self.alpha(t) * self.d_log_alpha(t)

    def d_sigma(self, t) -> Tensor:
        a = self.alpha(t)
        return -a * a * self.d_log_alpha(t) / self.sigma(t)

    def logsnr(self, t) -> Tensor:
        la = self.log_alpha(t)
        return 2.0 * la - torch.log(torch.clamp(-torch.expm1(2.0 * la), min=0.0))


class VP(LogAlphaVP):
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


class DiscreteVP(LogAlphaVP):
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
        inner = acp[:-1] if acp.numel() and float(acp[-1]) == 0.0 else acp
        if acp.numel() < 2 or not bool(((inner > 0) & (inner < 1)).all()) or not bool((acp[1:] < acp[:-1]).all()):
            raise ValueError("alphas_cumprod must be a strictly decreasing table of values in (0, 1) "
                             "(the last may be 0: zero terminal SNR)")
        self.alphas_cumprod = acp
        self.N = acp.numel()
        #: zero terminal SNR (Lin et al. 2024): alpha(1) = 0, as a flow's; the last segment is
        #: then linear in alpha (log alpha would be -inf at its end)
        self.zero_terminal = float(acp[-1]) == 0.0
        self._t_nodes = torch.cat([torch.zeros(1, dtype=_F64), torch.arange(1, self.N + 1, dtype=_F64) / self.N])
        self._la_nodes = torch.cat([torch.zeros(1, dtype=_F64), 0.5 * torch.log(acp)])
        self.t_min = 1.0 / self.N
        self.t_max = 1.0

    def index(self, t) -> Tensor:
        """Continuous training-timestep index ``t * N - 1`` for networks trained on integers."""
        return as_time(t) * self.N - 1.0

    def _segment(self, t: Tensor) -> Tensor:
        return torch.clamp(torch.searchsorted(self._t_nodes, t.contiguous(), right=True) - 1, 0, self.N - 1)

    def _last(self, t: Tensor, k: Tensor) -> Tensor:
        """Rows in the zero-terminal last segment (linear in alpha there)."""
        return (k == self.N - 1) if self.zero_terminal else torch.zeros_like(t, dtype=torch.bool)

    def _last_alpha(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``alpha`` and ``alpha'`` on the zero-terminal last segment (linear to ``alpha(1) = 0``)."""
        a0 = math.exp(float(self._la_nodes[self.N - 1]))
        return torch.clamp(a0 * (1.0 - t) * self.N, min=0.0), torch.full_like(t, -a0 * self.N)

    def log_alpha(self, t) -> Tensor:
        t = as_time(t)
        k = self._segment(t)
        t0, t1 = self._t_nodes[k], self._t_nodes[k + 1]
        l0, l1 = self._la_nodes[k], self._la_nodes[k + 1]
        if not self.zero_terminal:
            return l0 + (t - t0) * (l1 - l0) / (t1 - t0)
        last = self._last(t, k)
        inner = torch.where(last, l0, l0 + (t - t0) * (l1 - l0).nan_to_num(neginf=0.0) / (t1 - t0))
        return torch.where(last, torch.log(self._last_alpha(t)[0]), inner)

    def d_log_alpha(self, t) -> Tensor:
        t = as_time(t)
        k = self._segment(t)
        d = (self._la_nodes[k + 1] - self._la_nodes[k]) / (self._t_nodes[k + 1] - self._t_nodes[k])
        if not self.zero_terminal:
            return d
        a, da = self._last_alpha(t)
        return torch.where(self._last(t, k), da / a, d)

    def d_alpha(self, t) -> Tensor:
        t = as_time(t)
        if not self.zero_terminal:
            return super().d_alpha(t)
        last = self._last(t, self._segment(t))
        safe = torch.where(last, torch.zeros_like(t), t)  # no 0 * inf on the last segment
        return torch.where(last, self._last_alpha(t)[1], super().d_alpha(safe))

    def d_sigma(self, t) -> Tensor:
        if not self.zero_terminal:
            return super().d_sigma(t)
        t = as_time(t)
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def t_from_logsnr(self, lam) -> Tensor:
        """The time of half log-SNR ``lam``, clamped to ``[0, 1]`` (a float32 table's rounding
        never maps past the ends)."""
        lam = as_time(lam)
        la = 0.5 * torch.nn.functional.logsigmoid(lam)
        # log alpha decreases along the nodes: flip both for interpolation
        xs, ys = -self._la_nodes, self._t_nodes
        top = self.N - 1 if self.zero_terminal else self.N  # the last node of finite log alpha
        k = torch.clamp(torch.searchsorted(xs[:top + 1].contiguous(), (-la).contiguous(), right=True) - 1, 0, top - 1)
        t = ys[k] + (-la - xs[k]) * (ys[k + 1] - ys[k]) / (xs[k + 1] - xs[k])
        if self.zero_terminal:  # past the last finite node: invert alpha = a0 (1 - t) N
            a0 = math.exp(float(self._la_nodes[top]))
            t = torch.where(-la > xs[top], 1.0 - torch.exp(la) / (a0 * self.N), t)
        return torch.clamp(t, 0.0, 1.0)

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


PROCESSES = Registry("process", {
    "vp": lambda **kw: VP("linear", **kw),
    "vp-linear": lambda **kw: VP("linear", **kw),
    "vp-cosine": lambda **kw: VP("cosine", **kw),
    "ve": VE,
    "edm": EDM,
    "rectified-flow": RectifiedFlow,
    "rf": RectifiedFlow,
    "discrete-vp": DiscreteVP,
})


def get_process(name, **options) -> Process:
    """A process by name (or a ``Process`` passed through); unknown names raise with the
    valid ones."""
    if isinstance(name, Process):
        return name
    return PROCESSES.get(name, **options)
