"""One model view: every network, whatever it predicts, answers ``x0_hat``.

This module holds the only prediction-type conversion code (DESIGN.md section 1).
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

from typing import Callable, NamedTuple, Sequence

import torch

from .process import PointCoefficients, Process, as_time, expand_to

Tensor = torch.Tensor
PREDICTIONS = ("eps", "x0", "v", "score", "velocity")


class ModelOutputError(RuntimeError):
    """A network returned the wrong shape or non-finite values."""


class Prediction(NamedTuple):
    x0: Tensor
    eps: Tensor


class _Coeffs(NamedTuple):
    a: Tensor
    s: Tensor
    da: Tensor
    ds: Tensor


def _coeffs(process: Process, t: Tensor, x: Tensor) -> _Coeffs:
    return _Coeffs(expand_to(process.alpha(t), x), expand_to(process.sigma(t), x),
                   expand_to(process.d_alpha(t), x), expand_to(process.d_sigma(t), x))


class CoefficientMemo:
    """A bounded memo of ``_coeffs(process, t, x)`` for a scalar CPU ``t``, keyed by the float
    value of ``t`` and ``x``'s dtype and device: a time is computed by ``_coeffs`` on first
    use and kept, so repeated passes over a grid do not evaluate the process four times per
    call. Entries are pure functions of ``t`` (the process is treated as immutable), so a
    hit gives the numbers a miss would. ``t = 0``
    (``-0.0`` would share its key), NaN, ``[B]`` times and times on an accelerator (reading
    them would synchronise) are not memoised. At ``capacity`` entries the memo starts over.
    """

    __slots__ = ("process", "capacity", "_entries")

    def __init__(self, process: Process, capacity: int = 1024):
        self.process, self.capacity = process, int(capacity)
        self._entries: dict = {}

    def __call__(self, t: Tensor, x: Tensor) -> _Coeffs:
        if t.dim() != 0 or t.device.type != "cpu":
            return _coeffs(self.process, t, x)
        value = t.item()
        if value == 0.0 or value != value:
            return _coeffs(self.process, t, x)
        key = (value, x.dtype, x.device)
        found = self._entries.get(key)
        if found is None:
            if len(self._entries) >= self.capacity:
                self._entries.clear()
            found = self._entries[key] = _coeffs(self.process, t, x)
        return found


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; valid: {', '.join(PREDICTIONS)}")
    return prediction


def to_x0(y: Tensor, prediction: str, x: Tensor, c: _Coeffs) -> Tensor:
    """The data prediction ``x0`` from a network output ``y`` of the given type at ``x``
    (the table above). ``c`` holds tensors broadcastable to ``x`` or Python floats (a
    solver's grid, ``Denoiser.x0_on_grid``); an ``x0`` output is returned as it is."""
    a, s, da, ds = c
    if prediction == "x0":
        return y
    if prediction == "eps":
        return (x - s * y) / a
    if prediction == "score":
        return (x + (s * s) * y) / a
    if prediction == "velocity":
        return (ds * x - s * y) / (a * ds - s * da)
    if prediction == "v":
        return (a * x - s * y) / (a * a + s * s)
    raise ValueError(f"unknown prediction type {prediction!r}; valid: {', '.join(PREDICTIONS)}")


def to_x0_eps(y: Tensor, prediction: str, x: Tensor, c: _Coeffs) -> Prediction:
    """Convert a network output ``y`` of the given type at ``x`` into ``(x0, eps)``; ``eps``
    is read from the output where it holds it (exact where ``alpha = 0``)."""
    a, s, da, ds = c
    x0 = to_x0(y, prediction, x, c)
    if prediction == "eps":
        return Prediction(x0, y)
    if prediction == "score":
        return Prediction(x0, -s * y)
    if prediction == "velocity":
        return Prediction(x0, (a * y - da * x) / (a * ds - s * da))
    return Prediction(x0, (x - a * x0) / s)


def from_x0_eps(x0: Tensor, eps: Tensor, prediction: str, c: _Coeffs) -> Tensor:
    """The network target of the given type for ``(x0, eps)`` (training and round trips)."""
    a, s, da, ds = c
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


class DenoiserBase:
    """The protocol solvers, guidance and search see: ``predict(x, t) -> (x0, eps)``.

    ``t`` is a Python float, a 0-d tensor or a ``[B]`` tensor. Every other view is
    derived here once. Wrappers (guidance, caching, composition) subclass this and
    implement ``predict``; they share the wrapped model's NFE counter.
    """

    process: Process
    _counter: _Counter

    def predict(self, x: Tensor, t) -> Prediction:
        raise NotImplementedError

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

    def x0_on_grid(self, x: Tensor, point: PointCoefficients) -> Tensor:
        """The data prediction at a point of a solver's grid (``GridCoefficients[k]``); what
        solver steps call. Here ``predict(x, point.t).x0``; ``Denoiser`` answers from the
        grid's precomputed coefficients without reading a tensor (see ``Denoiser.x0_on_grid``)."""
        return self.predict(x, point.t).x0

    def eps(self, x: Tensor, t) -> Tensor:
        return self.predict(x, t).eps

    def as_prediction(self, x: Tensor, t, prediction: str) -> Tensor:
        """Any of the five views (``eps``, ``x0``, ``v``, ``score``, ``velocity``)."""
        check_prediction(prediction)
        p = self.predict(x, t)
        return from_x0_eps(p.x0, p.eps, prediction, self.coefficients(as_time(t), x))

    def coefficients(self, t: Tensor, x: Tensor) -> _Coeffs:
        """``alpha, sigma`` and their derivatives at ``t`` (float64 ``t``), cast for ``x``."""
        return _coeffs(self.process, t, x)

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
        net: any callable; it gets ``x`` ``[B, ...]`` and a ``[B]`` time tensor.
        process: the ``Process`` the network was trained with.
        prediction: one of ``eps``, ``x0``, ``v``, ``score``, ``velocity``.
        time_input: maps our ``t`` (float64 ``[B]``) to what the network expects
            (``DiscreteVP.index`` for integer-timestep networks, sigma for EDM nets,
            ``1 - t`` for flows trained in the opposite direction); default ``t``.
        cond: keyword tensors passed to the network (batch first), e.g. class labels.
        check: raise ``ModelOutputError`` on a wrong output shape or NaN/Inf
            (this synchronises with the device once per call; turn off for speed).
    """

    def __init__(self, net: Callable, process: Process, prediction: str = "eps",
                 time_input: Callable[[Tensor], Tensor] | None = None, cond: dict | None = None,
                 check: bool = True):
        if not isinstance(process, Process):
            raise TypeError(f"process must be a diffinfer Process, got {type(process).__name__}")
        self.net = net
        self.process = process
        self.prediction = check_prediction(prediction)
        self.time_input = time_input
        self.cond = dict(cond or {})
        self.check = check
        self._counter = _Counter()
        self._memo = CoefficientMemo(process)

    def bind(self, **cond) -> "Denoiser":
        """A copy with extra conditioning (``None`` removes a key); shares the NFE counter."""
        new = Denoiser(self.net, self.process, self.prediction, self.time_input, self.cond, self.check)
        new._counter, new._memo = self._counter, self._memo
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
        """The network's own output at ``(x, t)`` (counts one NFE)."""
        t = as_time(t)
        tb = t.expand(x.shape[0]) if t.dim() == 0 else t
        if tb.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or shaped [B]={x.shape[0]}, got {tuple(t.shape)}")
        return self._call_net(x, self._time_input(tb, x), t)

    def _time_input(self, tb: Tensor, x: Tensor):
        """What the network takes as time for float64 times ``tb`` ``[B]``, cast for ``x``."""
        t_in = self.time_input(tb) if self.time_input is not None else tb
        return t_in.to(device=x.device, dtype=x.dtype) if isinstance(t_in, Tensor) else t_in

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
        t = as_time(t)
        y = self.raw(x, t)
        return to_x0_eps(y, self.prediction, x, self.coefficients(t, x))

    def x0_on_grid(self, x: Tensor, point: PointCoefficients) -> Tensor:
        """The data prediction at grid point ``point`` with nothing read from a tensor: the
        network's time is the grid's time cast once per grid (``cast_views('t', x)``; with a
        ``time_input`` that map runs per call, as in ``raw``) and the conversion's
        coefficients are the grid's Python floats (``GridCoefficients.host``). Equals
        ``predict(x, point.t).x0`` up to float round-off. A grid of another process takes
        that path."""
        grid, k = point.grid, point.k
        if grid.process is not self.process:
            return super().x0_on_grid(x, point)
        if self.time_input is None:
            t_in = grid.cast_views("t", x)[k].expand(x.shape[0])  # [B]
        else:
            t_in = self._time_input(point.t.expand(x.shape[0]), x)
        y = self._call_net(x, t_in, point.t)
        h = grid.host()
        return to_x0(y, self.prediction, x, _Coeffs(h.alpha[k], h.sigma[k], h.d_alpha[k], h.d_sigma[k]))

    def coefficients(self, t: Tensor, x: Tensor) -> _Coeffs:
        """``alpha, sigma`` and their derivatives at ``t``, cast for ``x`` (memoised for scalar
        CPU ``t``; see ``CoefficientMemo``)."""
        return self._current_memo()(t, x)

    def _current_memo(self) -> CoefficientMemo:
        if self._memo.process is not self.process:  # the process was replaced after construction
            self._memo = CoefficientMemo(self.process)
        return self._memo

    def __repr__(self) -> str:
        return f"Denoiser({type(self.net).__name__}, {self.process!r}, prediction={self.prediction!r})"


def _fmt_t(t: Tensor) -> str:
    if t.dim() == 0:
        return f"{float(t):.6g}"
    return f"[{float(t.min()):.6g}..{float(t.max()):.6g}]"
