"""The low-dimensional parameterisation a grid fit searches (``diffinfer.grids.optimize``).

A grid ``t_max = ts[0] > ts[1] > ... > ts[n-1] > ts[n] = 0`` keeps both ends fixed (the
last step returns the denoised estimate, so the choice of ``ts[n-1]``, the last noise
level, is one of the free parameters). The ``n - 1`` free points are parameterised without
constraints: in ``z = log t`` between ``log t_max`` and ``log t_lo``, the ``n`` gaps are
``softmax([theta, 0])`` of the span, so every ``theta`` gives a valid descending grid.

With a fixed last noise level ``t_min`` (``optimize(..., t_min=...)``) the grid is
``t_max > ts[1] > ... > ts[n-2] > t_min > 0``: the ``n - 2`` free points are the
``n - 1`` gaps ``softmax([theta, 0])`` of the span from ``log t_max`` to ``log t_min``.

With decoupled model times (``ModelTimes``) the vector also holds, per grid point
``k < n``, the log-offset ``delta_k`` of the model time ``s_k = t_k exp(delta_k)``
(``model_times_from_params``). ``GridParams`` ties one fit's bounds to the vector:
``unpack`` (vector -> grid and model times), ``pack`` (a starting grid -> vector),
``blocks`` (the coordinate blocks Nelder-Mead fits in turn) and ``simplex``.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..process import DiscreteVP, Process
from .builders import default_builder, karras, validate

_F64 = torch.float64


def default_t_lo(process: Process) -> float:
    """The smallest last noise level the search may pick: a tenth of the process's
    ``t_min`` for continuous-time processes (``1e-4`` where ``t_min = 0``), and ``t_min``
    itself for a ``DiscreteVP`` table, whose network must not be queried below its first
    training timestep."""
    if isinstance(process, DiscreteVP):
        return process.t_min
    return 0.1 * process.t_min if process.t_min > 0 else 1e-4


def grid_from_params(theta: Tensor, t_max: float, t_lo: float, t_min: float | None = None) -> Tensor:
    """``[n + 1]`` descending grid from ``n - 1`` unconstrained parameters (see module doc);
    with ``t_min``, ``[n + 1]`` from ``n - 2`` parameters, ``ts[n - 1] = t_min``."""
    logits = torch.cat([torch.as_tensor(theta, dtype=_F64).reshape(-1), torch.zeros(1, dtype=_F64)])
    gaps = torch.softmax(logits, 0)  # [n] (or [n - 1] with t_min), sums to 1
    z = torch.cumsum(gaps, 0)[:-1]  # the free points' positions in (0, 1)
    lo, hi = math.log(t_lo if t_min is None else t_min), math.log(t_max)
    inner = torch.exp(hi + z * (lo - hi))
    end = torch.zeros(1, dtype=_F64) if t_min is None else torch.tensor([t_min, 0.0], dtype=_F64)
    return torch.cat([torch.tensor([t_max], dtype=_F64), inner, end])


def params_from_grid(ts: Tensor, t_lo: float, t_min: float | None = None) -> Tensor:
    """Inverse of ``grid_from_params`` for a grid ending at ``0`` with ``ts[-2] > t_lo``
    (with ``t_min``: ``ts[-2] == t_min``)."""
    ts = validate(ts)
    if float(ts[-1]) != 0.0:
        raise ValueError("an optimisable grid ends at t = 0")
    n_free = ts.numel() - (2 if t_min is None else 3)
    if n_free < 1:
        return torch.zeros(0, dtype=_F64)
    t_max = float(ts[0])
    if t_min is None:
        if not float(ts[-2]) > t_lo:
            raise ValueError(f"the grid's last positive point {float(ts[-2])} must exceed t_lo={t_lo}")
        end, inner = t_lo, ts[1:-1]
    else:
        if not math.isclose(float(ts[-2]), t_min, rel_tol=1e-9):
            raise ValueError(f"the grid's last positive point {float(ts[-2])} must be t_min={t_min}")
        end, inner = t_min, ts[1:-2]
    lo, hi = math.log(end), math.log(t_max)
    z = torch.cat([torch.zeros(1, dtype=_F64), (torch.log(inner) - hi) / (lo - hi), torch.ones(1, dtype=_F64)])
    gaps = z[1:] - z[:-1]
    return torch.log(gaps[:-1]) - torch.log(gaps[-1])


def model_times_from_params(ts: Tensor, delta: Tensor, t_lo: float, t_max: float) -> Tensor:
    """``[n]`` model times ``ts[k] exp(delta[k])`` of a grid ``ts`` ``[n + 1]``, clipped to
    ``[t_lo, t_max]`` (the network is never queried below ``t_lo``)."""
    return (ts[:-1] * torch.exp(torch.as_tensor(delta, dtype=_F64).reshape(-1))).clamp(min=t_lo, max=t_max)


def grow(ts: Tensor, steps: int) -> Tensor:
    """A fitted grid extended to ``steps`` steps by splitting, one at a time, its widest
    interval between positive points in ``log t`` at the geometric mean (that one of
    ``insertions``; a warm start for fitting the next NFE; the last interval, to ``0``, is never
    split)."""
    ts = validate(ts)
    if float(ts[-1]) != 0.0 or ts.numel() < 3:
        raise ValueError("grow needs a grid ending at 0 with at least one positive interior point")
    while ts.numel() - 1 < steps:
        pos = ts[:-1]  # [n] positive points
        widths = (pos[:-1] / pos[1:]).log()  # [n - 1] interval widths in log t
        ts = insertions(ts)[int(widths.argmax())]  # the first widest, split at its geometric mean
    return validate(ts)


def shrink(ts: Tensor) -> list[Tensor]:
    """The grids of one step fewer made from ``ts`` (``[n + 1]``, ending at ``0``) by removing
    one positive point other than ``t_max`` (``n - 1`` grids ``[n]``; removing ``ts[n-1]`` makes
    ``ts[n-2]`` the last noise level): warm starts for fitting the next smaller NFE from a
    fitted grid, the counterpart of ``grow``; a caller picks among them by its own loss."""
    ts = validate(ts)
    if float(ts[-1]) != 0.0 or ts.numel() < 3:
        raise ValueError(f"shrink needs a grid ending at 0 with a positive point after t_max, got {ts.tolist()}")
    return [torch.cat([ts[:k], ts[k + 1:]]) for k in range(1, ts.numel() - 1)]


def insertions(ts: Tensor) -> list[Tensor]:
    """The grids of one step more made from ``ts`` (``[n + 1]``, ending at ``0``) by inserting
    one point: at the geometric mean of each interval between positive points, or below the
    last noise level at ``ts[n-1]^2 / ts[n-2]`` (the last ratio continued; ``n`` grids
    ``[n + 2]``): warm starts for fitting the next larger NFE from a fitted grid, the
    counterpart of ``shrink``; a caller picks among them by its own loss."""
    ts = validate(ts)
    if float(ts[-1]) != 0.0 or ts.numel() < 3:
        raise ValueError(f"insertions needs a grid ending at 0 with a positive point after t_max, got {ts.tolist()}")
    pos = ts[:-1]  # [n] positive points
    inner = (pos[:-1] * pos[1:]).sqrt()  # [n - 1] geometric midpoints
    below = pos[-1:] ** 2 / pos[-2:-1]  # [1]
    out = [torch.cat([ts[:k + 1], inner[k:k + 1], ts[k + 1:]]) for k in range(inner.numel())]
    return out + [torch.cat([pos, below, ts[-1:]])]


def initial_grids(process: Process, steps: int, t_max: float | None = None, t_min: float | None = None) -> list[Tensor]:
    """Starting points: the default grid of the process, and the Karras grid where finite
    (from ``t_max`` to ``t_min``, then ``0``; default the process's bounds)."""
    bounds = {k: float(v) for k, v in (("t_max", t_max), ("t_min", t_min)) if v is not None}
    grids = [default_builder(process)(process, steps, **bounds)]  # builders end at 0 (final_zero)
    try:
        k = karras(process, steps, **bounds)
        if not any(torch.allclose(k, g) for g in grids):
            grids.append(k)
    except ValueError:  # infinite log-SNR at an end (rectified flow at t = 1)
        pass
    return grids


def _blocks(steps: int, model_times: bool, n_grid: int | None = None) -> list:
    """The parameter blocks Nelder-Mead fits in turn (index arrays into the vector of the
    ``n_grid`` grid parameters (default ``steps - 1``), then the ``steps`` model-time
    offsets): all at once for a plain grid; with model times, the grid alone (offsets 0),
    then the offsets alone (grid fixed), then all (block coordinate descent: each block's
    simplex is small enough to converge within its budget, where one simplex over every
    parameter stalls)."""
    n_grid = steps - 1 if n_grid is None else n_grid
    everything = np.arange(n_grid + (steps if model_times else 0))
    if everything.size == 0:
        return []
    if not model_times or n_grid == 0:
        return [everything]
    return [np.arange(n_grid), np.arange(n_grid, n_grid + steps), everything]


def initial_simplex(theta, n_grid: int, offset_step: float):
    """Nelder-Mead's starting simplex ``[d + 1, d]`` around ``theta``: scipy's default for the
    first ``n_grid`` (grid) entries (5% of a nonzero entry, else 0.00025), ``offset_step``
    for the rest (model-time offsets, which start at 0)."""
    d = len(theta)
    step = np.array([(0.05 * v if v != 0 else 0.00025) if j < n_grid else offset_step for j, v in enumerate(theta)])
    return np.vstack([theta, theta + np.diag(step)]).reshape(d + 1, d)


@dataclass(frozen=True)
class GridParams:
    """One fit's parameterisation: ``steps`` steps from ``t_max``; the last noise level free
    in ``(t_lo, t_max)``, or fixed at ``t_min``; model-time offsets if ``model_times``."""

    steps: int
    t_max: float
    t_lo: float
    t_min: float | None = None
    model_times: bool = False

    @classmethod
    def of(cls, process: Process, steps: int, t_max: float | None = None, t_min: float | None = None,
           t_lo: float | None = None, model_times: bool = False) -> "GridParams":
        """The bounds checked, defaults from ``process`` (``t_max``, ``default_t_lo``)."""
        steps = int(steps)
        if steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}")
        t_max = float(process.t_max if t_max is None else t_max)
        t_lo = default_t_lo(process) if t_lo is None else float(t_lo)
        if not 0.0 < t_lo < t_max <= 1.0:
            raise ValueError(f"need 0 < t_lo < t_max <= 1, got t_lo={t_lo}, t_max={t_max}")
        if t_min is not None:
            t_min = float(t_min)
            if not t_lo <= t_min < t_max:
                raise ValueError(f"need t_lo <= t_min < t_max, got t_lo={t_lo}, t_min={t_min}, t_max={t_max}")
        return cls(steps, t_max, t_lo, t_min, bool(model_times))

    @property
    def pinned(self) -> float | None:
        """The fixed last noise level (``t_min``), or ``None``; a single step has none."""
        return self.t_min if self.steps >= 2 else None

    @property
    def n_grid(self) -> int:
        """Number of free grid parameters (the vector's first entries)."""
        return self.steps - 1 if self.pinned is None else self.steps - 2

    def unpack(self, th) -> tuple[Tensor, Tensor | None]:
        """Nelder-Mead's vector -> (grid ``[steps + 1]``, model times ``[steps]`` or ``None``)."""
        th = torch.from_numpy(th)
        ts = grid_from_params(th[:self.n_grid], self.t_max, self.t_lo, self.pinned)
        return ts, (model_times_from_params(ts, th[self.n_grid:], self.t_lo, self.t_max) if self.model_times else None)

    def pack(self, g: Tensor):
        """A starting grid's vector (model-time offsets 0), its free points nudged inside the
        bounds; ``None`` if the nudged grid no longer descends."""
        g = g.clone()
        end = -1 if self.pinned is None else -2
        g[1:end] = g[1:end].clamp(max=self.t_max * (1 - 1e-9))
        if self.pinned is None:
            g[-2] = max(float(g[-2]), self.t_lo * 1.5)
        if not bool((g[1:] < g[:-1]).all()):
            return None
        theta = params_from_grid(g, self.t_lo, self.pinned).numpy()
        if self.model_times:
            theta = np.concatenate([theta, np.zeros(self.steps)])
        return theta

    def blocks(self) -> list:
        return _blocks(self.steps, self.model_times, self.n_grid)

    def simplex(self, x0, free):
        """The starting simplex of a block (``None``: scipy's default): with model times,
        scipy's default for the grid entries and 0.05 in log t for the offsets."""
        if not self.model_times:
            return None
        return initial_simplex(x0, int((free < self.n_grid).sum()), 0.05)

    def starts(self, process: Process, init=None, t_end_max: float | None = None) -> list[Tensor]:
        """The starting grids checked: ``init`` or ``initial_grids`` within the bounds, those
        whose last noise level is above ``t_end_max`` dropped."""
        starts = [validate(g) for g in (init or initial_grids(process, self.steps, self.t_max, self.t_min))]
        if t_end_max is not None:
            starts = [g for g in starts if float(g[-2]) <= t_end_max]
            if not starts:
                raise ValueError(f"no starting grid has its last noise level below t_end_max={t_end_max}")
        for g in starts:
            if g.numel() != self.steps + 1 or float(g[-1]) != 0.0:
                raise ValueError(f"a starting grid must have {self.steps + 1} points ending at 0, got {g.tolist()}")
            if not math.isclose(float(g[0]), self.t_max, rel_tol=1e-9) or (
                    self.pinned is not None and not math.isclose(float(g[-2]), self.pinned, rel_tol=1e-9)):
                raise ValueError(f"a starting grid must start at t_max={self.t_max}"
                                 + ("" if self.pinned is None else f" and end at t_min={self.pinned}, then 0")
                                 + f"; got {g.tolist()}")
        return starts


__all__ = ["GridParams", "SplineParams", "SPLINE_VARIABLES", "spline_positions", "noise_fraction", "logsnr_of_noise_fraction", "default_t_lo", "grid_from_params", "params_from_grid", "model_times_from_params", "grow", "shrink", "insertions",
           "initial_grids", "initial_simplex"]


# --- a low-dimensional parameterisation: a monotone spline in log-SNR (or the noise fraction) --
#: the spline's variables (``SplineParams.variable``); "auto" picks one per process
SPLINE_VARIABLES = ("auto", "logsnr", "noise-fraction")


def _logsnr_span(process: Process, t_max: float) -> float:
    """The log-SNR a spline grid starts from: ``logsnr(t_max)``, or where that is infinite
    (rectified flow at ``t = 1``) the log-SNR a thousandth below ``t_max``."""
    lam = float(process.logsnr(torch.tensor(t_max, dtype=_F64)))
    if not math.isfinite(lam):
        lam = float(process.logsnr(torch.tensor(t_max * (1 - 1e-3), dtype=_F64)))
    return lam


def noise_fraction(lam):
    """``log(sigma / (alpha + sigma)) = -softplus(lam / 2)`` of log-SNR ``lam`` (array): ``log t``
    on a rectified flow, finite (``0``) at ``lam = -inf``, ``-lam / 2`` for large ``lam``."""
    lam = np.asarray(lam, dtype=np.float64)
    return -np.logaddexp(0.0, lam / 2.0)


def logsnr_of_noise_fraction(v):
    """The inverse of ``noise_fraction`` (``v < 0``; ``v = 0`` is ``lam = -inf``)."""
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return 2.0 * np.log(np.expm1(-v))


def spline_positions(theta, knots: int, u) -> np.ndarray:
    """The monotone map ``z(u)`` on ``[0, 1]`` (``z(0) = 0``, ``z(1) = 1``) through ``knots + 1``
    equally spaced knots whose values are ``cumsum(softmax([theta, 0]))`` (``knots - 1``
    parameters), interpolated by a monotone cubic (PCHIP, Fritsch & Carlson 1980), at ``u``."""
    from scipy.interpolate import PchipInterpolator
    theta = np.asarray(theta, dtype=np.float64).reshape(-1)
    if theta.size != knots - 1:
        raise ValueError(f"a spline of {knots} intervals has {knots - 1} parameters, got {theta.size}")
    if knots == 1:
        return np.asarray(u, dtype=np.float64)
    logits = np.concatenate([theta, [0.0]])
    gaps = np.exp(logits - logits.max())
    values = np.concatenate([[0.0], np.cumsum(gaps / gaps.sum())])
    values[-1] = 1.0
    return PchipInterpolator(np.linspace(0.0, 1.0, knots + 1), values)(np.asarray(u, dtype=np.float64))


@dataclass(frozen=True)
class SplineParams:
    """A grid of ``steps`` steps from a few parameters (``optimize(..., parameterization="spline")``).

    The grid is ``t_max = ts[0] > ts[1] > ... > ts[n-1] = t_end > ts[n] = 0``; point ``i``
    of the first ``n`` sits at ``v_hi + z(i / (n-1)) (v_end - v_hi)`` in the spline's variable
    ``v`` (``variable``: log-SNR, or the noise fraction below), where
    ``z`` is a monotone cubic through ``knots + 1`` knots (``spline_positions``: ``knots - 1``
    parameters, fewer when the grid has fewer interior points) and ``t_end`` is free in
    ``(t_lo, t_max)`` (one more parameter, ``log t_end`` through a sigmoid) unless pinned
    at ``t_min``. ``knots = 1`` is the grid uniform in ``v``. Every parameter vector is a
    valid grid; with 3 knots a fit has at most 3 parameters whatever the NFE, so it cannot
    bend itself to a few training noises the way ``n - 1`` free points can.

    ``variable`` is what the spline is monotone in: ``"logsnr"``, or ``"noise-fraction"``
    (``log(sigma / (alpha + sigma))``, ``noise_fraction``: ``log t`` on a rectified flow).
    ``"auto"`` (the default) takes log-SNR where it is finite at ``t_max``, else the noise
    fraction: a flow's log-SNR is ``-inf`` at ``t = 1``, and measured from a stand-in just
    below it, the uniform grid's first step takes half the log-SNR range within its first
    ``1 / (n - 1)`` of ``u``, a rise no monotone cubic on a few equally spaced knots follows,
    so the fit spent its first points at ``t = 0.99, 0.95``; ``log t`` is finite there,
    close to uniform in ``t`` near ``t = 1`` and geometric near ``t = 0``."""

    steps: int
    t_max: float
    t_lo: float
    process: Process
    knots: int = 3
    t_min: float | None = None
    model_times: bool = False  # not supported with a spline; kept for the search's interface
    variable: str = "logsnr"

    def __post_init__(self):
        if self.variable not in SPLINE_VARIABLES[1:]:  # "auto" is resolved by ``of``
            raise ValueError(f"a spline's variable is one of {', '.join(map(repr, SPLINE_VARIABLES[1:]))} "
                             f"(SplineParams.of resolves 'auto'), got {self.variable!r}")

    @classmethod
    def of(cls, process: Process, steps: int, t_max: float | None = None, t_min: float | None = None,
           t_lo: float | None = None, knots: int = 3, variable: str = "auto") -> "SplineParams":
        base = GridParams.of(process, steps, t_max, t_min, t_lo, False)
        if int(knots) < 1:
            raise ValueError(f"knots must be a positive integer, got {knots}")
        if variable not in SPLINE_VARIABLES:
            raise ValueError(f"unknown spline variable {variable!r}; valid: {', '.join(map(repr, SPLINE_VARIABLES))}")
        if variable == "auto":
            finite = math.isfinite(float(process.logsnr(torch.tensor(base.t_max, dtype=_F64))))
            variable = "logsnr" if finite else "noise-fraction"
        return cls(base.steps, base.t_max, base.t_lo, process, int(knots), base.t_min, False, variable)

    def _coordinate(self, t) -> np.ndarray:
        """The spline's variable at times ``t`` (log-SNR or its noise fraction)."""
        lam = self.process.logsnr(torch.as_tensor(t, dtype=_F64)).numpy()
        return lam if self.variable == "logsnr" else noise_fraction(lam)

    @functools.cached_property
    def _v_hi(self) -> float:
        """The variable at the grid's start (fixed by ``t_max``: computed once, not per grid)."""
        if self.variable == "logsnr":
            return _logsnr_span(self.process, self.t_max)
        return float(self._coordinate(self.t_max))

    def _span(self, t_end: float) -> tuple[float, float]:
        """The variable at the grid's start and at ``t_end``."""
        return self._v_hi, float(self._coordinate(t_end))

    def _times(self, v) -> Tensor:
        lam = v if self.variable == "logsnr" else logsnr_of_noise_fraction(v)
        return self.process.t_from_logsnr(torch.as_tensor(lam, dtype=_F64))

    @property
    def pinned(self) -> float | None:
        return self.t_min if self.steps >= 2 else None

    @property
    def n_inner(self) -> int:
        """Grid points strictly between ``t_max`` and ``t_end``."""
        return max(0, self.steps - 2)

    @property
    def k(self) -> int:
        """The spline's intervals actually used (no more free values than interior points)."""
        return max(1, min(self.knots, self.n_inner))

    @property
    def n_grid(self) -> int:
        return (self.k - 1) + (0 if (self.pinned is not None or self.steps < 2) else 1)

    def _end_bounds(self) -> tuple[float, float]:
        return math.log(self.t_lo), math.log(self.t_max)

    def t_end(self, th) -> float:
        if self.steps < 2:
            return 0.0
        if self.pinned is not None:
            return self.pinned
        lo, hi = self._end_bounds()
        a = float(th[self.k - 1])
        return math.exp(lo + (hi - lo) / (1.0 + math.exp(-a)) if a > -700 else lo)

    def grid(self, th) -> Tensor:
        """The grid ``[steps + 1]`` of the vector ``th``."""
        th = np.asarray(th, dtype=np.float64).reshape(-1)
        if self.steps < 2:
            return torch.tensor([self.t_max, 0.0], dtype=_F64)
        t_end = self.t_end(th)
        n = self.steps
        v_hi, v_end = self._span(t_end)
        z = spline_positions(th[:self.k - 1], self.k, np.arange(1, n - 1) / (n - 1))
        inner = self._times(v_hi + z * (v_end - v_hi))
        return torch.cat([torch.tensor([self.t_max], dtype=_F64), inner.reshape(-1),
                          torch.tensor([t_end, 0.0], dtype=_F64)])

    def unpack(self, th) -> tuple[Tensor, None]:
        return self.grid(th), None

    def pack(self, g: Tensor):
        """The vector whose grid is closest to ``g`` (least squares in the spline's variable;
        exact for a grid of this parameterisation); ``None`` if ``g`` cannot be represented."""
        from scipy.optimize import least_squares
        g = validate(g)
        if g.numel() != self.steps + 1 or float(g[-1]) != 0.0:
            return None
        th = np.zeros(self.n_grid)
        if self.steps < 2:
            return th
        t_end = float(g[-2])
        if self.pinned is None:
            lo, hi = self._end_bounds()
            s = (math.log(max(t_end, self.t_lo)) - lo) / (hi - lo)
            s = min(max(s, 1e-12), 1 - 1e-12)
            th[self.k - 1] = math.log(s / (1 - s))
            t_end = self.t_end(th)
        if self.k == 1:
            return th
        v_hi, v_end = self._span(t_end)
        n = self.steps
        u = np.arange(1, n - 1) / (n - 1)
        z = ((self._coordinate(g[1:-2]) - v_hi) / (v_end - v_hi)).clip(0.0, 1.0)
        zk = np.interp(np.linspace(0, 1, self.k + 1), np.concatenate([[0.0], u, [1.0]]),
                       np.concatenate([[0.0], z, [1.0]]))
        gaps = np.maximum(np.diff(zk), 1e-6)
        x0 = np.log(gaps[:-1]) - np.log(gaps[-1])
        fit = least_squares(lambda p: spline_positions(p, self.k, u) - z, x0, xtol=1e-14, ftol=1e-14, gtol=1e-14)
        th[:self.k - 1] = fit.x
        return th

    def blocks(self) -> list:
        return [np.arange(self.n_grid)] if self.n_grid else []

    def simplex(self, x0, free):
        """A starting simplex of 0.5 in each coordinate (the parameters are logits)."""
        d = len(x0)
        return np.vstack([x0, x0 + 0.5 * np.eye(d)]).reshape(d + 1, d)

    def starts(self, process: Process, init=None, t_end_max: float | None = None) -> list[Tensor]:
        return GridParams(self.steps, self.t_max, self.t_lo, self.t_min, False).starts(process, init, t_end_max)
