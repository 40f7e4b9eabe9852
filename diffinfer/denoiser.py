"""One model view: every network, whatever it predicts, answers ``x0_hat``.

This module holds the only prediction-type conversion code (docs/architecture.md).
With ``x_t = a x0 + s eps`` and ``a' = d alpha/dt``, ``s' = d sigma/dt``:

==========  ===============================  =====================================
prediction  what the network outputs         ``x0`` from output ``y``
==========  ===============================  =====================================
eps         ``eps``                          ``(x - s y) / a``
x0          ``x0``                           ``y``
v           ``a eps - s x0`` (Salimans & Ho  ``(a x - s y) / (a^2 + s^2)``
            2022, "Progressive Distillation")
score       ``grad log p_t = -eps / s``      ``(x + s^2 y) / a``
velocity    ``dx_t/dt = a' x0 + s' eps``     ``(s' x - s y) / (s' a - s a')``
==========  ===============================  =====================================

``eps`` is then ``(x - a x0) / s`` (or read directly for eps / score / velocity outputs,
which is exact where ``a = 0``, e.g. rectified flow at ``t = 1``).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from .grids.grid import GridPoint
from .process import Coefficients, Process, as_time

PREDICTIONS = ("eps", "x0", "v", "score", "velocity")


class GuidanceDivergenceError(FloatingPointError, ValueError):
    """A guided run left the data's scale (or produced NaN / Inf): lower the guidance scale."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def at_step(self, i: int, n_steps: int) -> "GuidanceDivergenceError":
        """The same error with the solver step ``i`` (of ``n_steps``) named."""
        return GuidanceDivergenceError(f"{self.message} [solver step {i} of {n_steps}]")


class ModelOutputError(RuntimeError):
    """A network returned the wrong shape or non-finite values."""


class Prediction:
    """A model's answer at ``(x, t)``: the data prediction ``x0`` and the noise ``eps``.

    ``eps`` is given, or derived on first use as ``(x - alpha x0) / sigma`` (so a solver that
    reads only ``x0`` pays nothing for it). Unpacks as ``x0, eps = prediction``."""

    __slots__ = ("x0", "_eps", "_derive")

    def __init__(self, x0: Tensor, eps: Tensor | None = None, derive=None):
        self.x0, self._eps, self._derive = x0, eps, derive

    @property
    def eps(self) -> Tensor:
        if self._eps is None:
            x, a, s = self._derive
            self._eps = (x - a * self.x0) / s
            self._derive = None
        return self._eps

    def __iter__(self):
        yield self.x0
        yield self.eps

    def __repr__(self) -> str:
        return f"Prediction(x0={tuple(self.x0.shape)})"


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; valid: {', '.join(PREDICTIONS)}")
    return prediction


def to_prediction(y: Tensor, prediction: str, x: Tensor, c: Coefficients) -> Prediction:
    """Convert a network output ``y`` of the given type at ``x`` into ``(x0, eps)`` (the table
    above). ``c`` holds ``alpha``, ``sigma`` and their derivatives as tensors broadcastable to
    ``x`` (``Coefficients.broadcast``) or as Python floats (a grid point's host values).
    ``eps`` is read from the output where it holds it (exact where ``alpha = 0``), else
    derived on first use."""
    a, s, da, ds = c.alpha, c.sigma, c.d_alpha, c.d_sigma
    if prediction == "eps":
        return Prediction((x - s * y) / a, y)
    if prediction == "score":
        return Prediction((x + (s * s) * y) / a, -s * y)
    if prediction == "velocity":
        det = a * ds - s * da
        return Prediction((ds * x - s * y) / det, (a * y - da * x) / det)
    if prediction == "x0":
        return Prediction(y, derive=(x, a, s))
    if prediction == "v":
        return Prediction((a * x - s * y) / (a * a + s * s), derive=(x, a, s))
    raise ValueError(f"unknown prediction type {prediction!r}; valid: {', '.join(PREDICTIONS)}")


def from_x0_eps(x0: Tensor, eps: Tensor, prediction: str, c: Coefficients) -> Tensor:
    """The network target of the given type for ``(x0, eps)`` (training and round trips);
    ``c`` as in ``to_prediction``."""
    a, s, da, ds = c.alpha, c.sigma, c.d_alpha, c.d_sigma
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return a * eps - s * x0
    if prediction == "score":
        return -eps / s
    if prediction == "velocity":
        return da * x0 + ds * eps
    raise ValueError(f"unknown prediction type {prediction!r}; valid: {', '.join(PREDICTIONS)}")


class _Counter:
    __slots__ = ("n",)

    def __init__(self):
        self.n = 0


class SumCounter:
    """The NFE of several models together: ``n`` reads the sum over their distinct counters;
    setting ``n`` puts the value on the first and zeroes the others (``reset_nfe``)."""

    def __init__(self, *counters):
        self.counters = counters

    @property
    def n(self) -> int:
        return sum(c.n for c in self.counters)

    @n.setter
    def n(self, value: int) -> None:
        for k, c in enumerate(self.counters):
            c.n = int(value) if k == 0 else 0


def summed_counter(dens: Sequence["DenoiserBase"]):
    """One NFE counter for the models ``dens``: their shared counter when they all share
    one (wrappers, ``bind`` copies), else a ``SumCounter`` of the distinct ones."""
    counters = []
    for den in dens:
        if not any(den._counter is c for c in counters):
            counters.append(den._counter)
    return counters[0] if len(counters) == 1 else SumCounter(*counters)


#: the attributes a model view keeps its inner model or network under (wrappers: ``den``;
#: ``Denoiser``: ``net``; adapters of other libraries: ``model``, ``base``, ``unet``, ``transformer``)
INNER_ATTRIBUTES = ("net", "den", "model", "base", "unet", "transformer")


def networks_under(obj, depth: int = 0, seen=None) -> list[torch.nn.Module]:
    """The ``nn.Module``s under a model view, depth first through ``INNER_ATTRIBUTES`` (at
    most 16 levels; each object once)."""
    seen = set() if seen is None else seen
    if obj is None or id(obj) in seen or depth > 16:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.nn.Module):
        return [obj]
    out = []
    for name in INNER_ATTRIBUTES:
        out += networks_under(getattr(obj, name, None), depth + 1, seen)
    return out


class DenoiserBase:
    """The protocol solvers, guidance and search see: ``predict(x, t) -> Prediction``.

    ``t`` is a Python float, a 0-d tensor, a ``[B]`` tensor or a solver's grid point
    (``GridPoint``; ``as_time(t)`` reads its time). Every other view is derived here once.
    Wrappers (guidance, caching, composition) subclass this and implement ``predict``,
    passing ``t`` on unchanged to the model they wrap, so a grid point reaches the
    ``Denoiser``'s host-coefficient path; they share the wrapped model's NFE counter.
    """

    process: Process
    _counter: _Counter
    _needs_grad: bool | None = None
    #: ``default_ts(steps) -> ts``: the grid ``sample`` runs on when given none (e.g. a
    #: diffusers scheduler's own timesteps, ``integrations.diffusers``); ``None``: ``grids.default``
    default_ts = None
    _data_scale: float | None = None

    #: ``check_divergence(x, t)``: raise ``GuidanceDivergenceError`` if a step's result has
    #: left the prior's scale (guided wrappers define it); ``None``: nothing to check
    check_divergence = None

    def predict(self, x: Tensor, t) -> Prediction:
        raise NotImplementedError

    def _wrap(self, den: "DenoiserBase") -> None:
        """Make this model a wrapper of ``den``: keep it as ``self.den`` and share its
        process, NFE counter and default grid (what every ``Denoiser -> Denoiser`` wrapper
        starts with)."""
        if not isinstance(den, DenoiserBase):
            raise TypeError(f"den must be a Denoiser (or wrapper), got {type(den).__name__}")
        self.den, self.process, self._counter, self.default_ts = den, den.process, den._counter, den.default_ts

    @property
    def divergence_check(self):
        """The check the driver loop runs after each step, ``check(x, t)``, or ``None``: this
        model's ``check_divergence`` or, for a wrapper without one, that of the model it
        wraps (so a guided model's check survives further wrapping)."""
        den = self
        for _ in range(32):
            if den.check_divergence is not None:
                return den.check_divergence
            den = den.__dict__.get("den")
            if not isinstance(den, DenoiserBase):
                return None
        return None

    @property
    def needs_grad(self) -> bool:
        """Whether sampling must keep autograd on: the model view differentiates through the
        network (gradient guidance, DPS, noise optimisation). ``sample`` otherwise runs under
        ``torch.no_grad()``. A wrapper with a ``den`` inherits it from the model it wraps
        unless it sets its own (class attribute ``_needs_grad`` or ``wrapper.needs_grad = ...``)."""
        if self._needs_grad is not None:
            return self._needs_grad
        inner = self.__dict__.get("den")
        return isinstance(inner, DenoiserBase) and inner.needs_grad

    @needs_grad.setter
    def needs_grad(self, value: bool) -> None:
        self._needs_grad = bool(value)

    @property
    def data_scale(self) -> float:
        """The per-entry RMS scale of the model's data (what guidance's divergence check
        measures a sample against): set on the ``Denoiser`` (exact for the toy mixtures),
        passed on by wrappers (``self.den``), else 1: data normalised to ``[-1, 1]`` or to
        unit variance, as diffusion models are trained."""
        if self._data_scale is not None:
            return float(self._data_scale)
        inner = getattr(self, "den", None)
        return inner.data_scale if isinstance(inner, DenoiserBase) else 1.0

    @property
    def nfe(self) -> int:
        """Network evaluations so far (one per batched call)."""
        return self._counter.n

    def reset_nfe(self) -> None:
        self._counter.n = 0

    def __call__(self, x: Tensor, t) -> Tensor:
        return self.predict(x, t).x0

    def x0(self, x: Tensor, t) -> Tensor:
        return self.predict(x, t).x0

    def eps(self, x: Tensor, t) -> Tensor:
        return self.predict(x, t).eps

    def as_prediction(self, x: Tensor, t, prediction: str) -> Tensor:
        """Any of the five views (``eps``, ``x0``, ``v``, ``score``, ``velocity``)."""
        check_prediction(prediction)
        p = self.predict(x, t)
        return from_x0_eps(p.x0, p.eps, prediction, self.process.at(t).broadcast(x))

    def v(self, x: Tensor, t) -> Tensor:
        return self.as_prediction(x, t, "v")

    def score(self, x: Tensor, t) -> Tensor:
        return self.as_prediction(x, t, "score")

    def velocity(self, x: Tensor, t) -> Tensor:
        """Probability-flow ODE drift ``dx/dt = a' x0_hat + s' eps_hat``."""
        return self.as_prediction(x, t, "velocity")

    def select(self, idx: Tensor) -> "DenoiserBase":
        """The same model for the rows ``idx`` of a batch (conditioning indexed alike)."""
        return self


class Denoiser(DenoiserBase):
    """Wrap ``net(x, time_input(t), **cond)`` with its process and prediction type.

    Args:
        net: any callable; it gets ``x`` ``[B, ...]`` and a ``[B]`` time tensor (a network
            with the attribute ``takes_time_field = True`` also takes per-element times
            shaped like ``x``: ``predict(x, t)`` with ``t`` of ``x``'s number of dimensions,
            broadcastable to it; ``diffinfer.element_times``).
        process: the ``Process`` the network was trained with.
        prediction: one of ``eps``, ``x0``, ``v``, ``score``, ``velocity``.
        time_input: maps our ``t`` (float64 ``[B]``) to what the network expects
            (``DiscreteVP.index`` for integer-timestep networks, sigma for EDM nets,
            ``1 - t`` for flows trained in the opposite direction); default ``t``.
        cond: keyword tensors passed to the network (batch first), e.g. class labels.
        check: raise ``ModelOutputError`` on a wrong output shape or NaN/Inf
            (this synchronises with the device once per call; turn off for speed).
        default_ts: ``default_ts(steps) -> ts``, the grid ``sample`` uses when given none.
        data_scale: the per-entry RMS of the data (``DenoiserBase.data_scale``; default 1).

    The time reaches the network in ``x``'s dtype when that is float32 or float64, and in
    float32 for half-precision samples (a bf16 time input would round ``t * 1000`` to
    steps of 4).
    """

    def __init__(self, net: Callable, process: Process, prediction: str = "eps",
                 time_input: Callable[[Tensor], Tensor] | None = None, cond: dict | None = None,
                 check: bool = True, default_ts: Callable[[int], Tensor] | None = None,
                 data_scale: float | None = None):
        if not isinstance(process, Process):
            raise TypeError(f"process must be a diffinfer Process, got {type(process).__name__}")
        self.net = net
        self.process = process
        self.prediction = check_prediction(prediction)
        self.time_input = time_input
        self.cond = dict(cond or {})
        self.check = check
        self.default_ts = default_ts
        self._data_scale = None if data_scale is None else float(data_scale)
        self._counter = _Counter()

    def bind(self, **cond) -> "Denoiser":
        """A copy with extra conditioning (``None`` removes a key); shares the NFE counter."""
        new = Denoiser(self.net, self.process, self.prediction, self.time_input, self.cond, self.check,
                       self.default_ts, self._data_scale)
        new._counter = self._counter
        for k, v in cond.items():
            if v is None:
                new.cond.pop(k, None)
            else:
                new.cond[k] = v
        return new

    def select(self, idx: Tensor) -> "Denoiser":
        new = self.bind()
        new.cond = {k: (v[idx] if isinstance(v, Tensor) and v.dim() > 0 else v) for k, v in self.cond.items()}
        return new

    def raw(self, x: Tensor, t) -> Tensor:
        """The network's own output at ``(x, t)`` (counts one NFE); ``t`` in ``[0, 1]``."""
        return self._raw(x, as_time(t) if isinstance(t, GridPoint) else _checked_time(t))

    def _raw(self, x: Tensor, t: Tensor) -> Tensor:
        if t.dim() >= 2 and t.dim() == x.dim():  # a time field: one time per entry (diffinfer.element_times)
            return self._call_net(x, self._time_input(self._field(x, t), x), t)
        tb = t.expand(x.shape[0]) if t.dim() == 0 else t
        if tb.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or shaped [B]={x.shape[0]}, got {tuple(t.shape)}")
        return self._call_net(x, self._time_input(tb, x), t)

    def _field(self, x: Tensor, t: Tensor) -> Tensor:
        """A time field ``t`` (as many dimensions as ``x``, broadcastable to it) expanded to
        ``x``'s shape, for a network that declares ``takes_time_field = True``."""
        if not getattr(self.net, "takes_time_field", False):
            raise ValueError(f"per-element times (t shaped {tuple(t.shape)}) need a network that declares "
                             f"takes_time_field = True; {type(self.net).__name__} takes one time per row ([B])")
        try:
            return t.expand(x.shape)
        except RuntimeError:
            raise ValueError(f"a time field must broadcast to the sample's shape {tuple(x.shape)}, "
                             f"got {tuple(t.shape)}") from None

    def _time_input(self, tb: Tensor, x: Tensor):
        """What the network takes as time for float64 times ``tb`` ``[B]``, cast for ``x``."""
        t_in = self.time_input(tb) if self.time_input is not None else tb
        return t_in.to(device=x.device, dtype=time_dtype(x)) if isinstance(t_in, Tensor) else t_in

    def _call_net(self, x: Tensor, t_in, t: Tensor) -> Tensor:
        """``net(x, t_in, **cond)``, counted and (with ``check``) checked; ``t`` names the time in errors."""
        y = self.net(x, t_in, **self.cond)
        self._counter.n += 1
        if self.check:
            if not isinstance(y, Tensor) or y.shape != x.shape:
                got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
                raise ModelOutputError(
                    f"network output at t={_fmt_t(t)} has shape {got}, expected {tuple(x.shape)} "
                    f"(prediction={self.prediction!r})")
            if not bool(torch.isfinite(y).all()):
                raise ModelOutputError(f"network output at t={_fmt_t(t)} contains NaN or Inf")
        return y

    def predict(self, x: Tensor, t) -> Prediction:
        """``(x0, eps)`` at ``(x, t)``. At a grid point of this denoiser's process nothing is
        read from a tensor: the network's time is the grid's time cast once per grid (with a
        ``time_input`` that map runs per call, as in ``raw``) and the conversion uses the
        grid's host coefficients; elsewhere the process is evaluated at ``t``. Both paths
        agree up to float round-off."""
        if isinstance(t, GridPoint) and t.grid.process is self.process:
            grid, k = t.grid, t.k
            if self.time_input is None:
                t_in = grid.on(x).batch_times(x.shape[0])[k]  # [B]
            else:
                t_in = self._time_input(t.time.expand(x.shape[0]), x)
            y = self._call_net(x, t_in, t)  # t: the point (its time is read only for an error)
            return to_prediction(y, self.prediction, x, grid.host(k))
        t = as_time(t) if isinstance(t, GridPoint) else _checked_time(t)
        y = self._raw(x, t)
        return to_prediction(y, self.prediction, x, self.process.at(t).broadcast(x))

    def __repr__(self) -> str:
        return f"Denoiser({type(self.net).__name__}, {self.process!r}, prediction={self.prediction!r})"


def time_dtype(x: Tensor) -> torch.dtype:
    """The dtype a network's time input takes for samples ``x``: ``x``'s if float32/float64,
    else float32 (never half precision)."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _checked_time(t) -> Tensor:
    """``as_time(t)`` for a time that is not a grid point, refusing NaN and times outside
    ``[0, 1]`` (one host read; grid points skip it)."""
    t = as_time(t)
    if t.numel() and not bool(((t >= 0) & (t <= 1)).all()):
        bad = t[~((t >= 0) & (t <= 1))].reshape(-1)[0]
        raise ValueError(f"t must be in [0, 1] (and not NaN), got {float(bad)}")
    return t


def _fmt_t(t) -> str:
    t = as_time(t)
    if t.dim() == 0:
        return f"{float(t):.6g}"
    return f"[{float(t.min()):.6g}..{float(t.max()):.6g}]"
