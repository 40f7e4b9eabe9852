"""What a grid fit minimises: the distance of a solver's endpoint to a teacher's.

As in LD3 (Tong et al., "Learning to Discretize Denoising Diffusion ODEs", ICLR 2025) the
objective is, over a training batch of starting noises (a different seed than any
evaluation),

    L(ts) = mean_b || solve(den, x_T[b], solver, ts) - teacher(x_T[b]) ||^2 .

``training_set`` draws the noises and runs the teacher (``teacher_endpoint``, a high-NFE
solve); ``Objective`` is ``L`` (or a user ``distance``) on that batch, counting its solves.
The solves run on the sampling loop (``diffinfer.loop.sample``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..loop import sample
from ..process import as_time
from .builders import default_builder, validate
from .fit_params import default_t_lo
from .model_times import ModelTimes


def solve(den, x_T: Tensor, solver, ts: Tensor, **solver_options) -> Tensor:
    """The solver's endpoint from ``x_T`` on ``ts`` (no gradient)."""
    with torch.no_grad():
        return sample(den, x_T, solver=solver, ts=ts, **solver_options).x


def teacher_endpoint(den, x_T: Tensor, steps: int = 200, solver: str = "dpmpp-3m", t_end: float | None = None,
                     t_max: float | None = None, **solver_options) -> Tensor:
    """A high-NFE endpoint from ``x_T`` at ``t_max`` (default the process's): ``solver`` on
    the process's default grid of ``steps`` steps, ending at ``t_end`` and then ``0``. The
    default ``t_end`` is ``default_t_lo`` where the process stops short of ``0`` (so the
    student's last noise level may go below the process's ``t_min``), else the grid
    reaches ``0`` itself.

    Where the process's grid reaches ``0`` itself (a flow's uniform grid), a ``t_end``
    below its last positive level is reached by a geometric tail (``geometric_tail``), not
    by one jump: a multistep teacher stepping from ``0.005`` to ``1e-4`` extrapolates
    across a log-SNR gap many times its previous one and misses directions in which the
    data varies little by their whole scale. A ``t_end`` above that level ends the grid
    there, as on other processes (the model is never queried below ``t_end``)."""
    process = den.process
    builder = default_builder(process)
    if t_end is None and process.t_min > 0:
        t_end = default_t_lo(process)
    kw = {} if t_max is None else {"t_max": float(t_max)}
    if t_end is not None and process.t_min == 0:
        ts = builder(process, steps, **kw)  # reaches 0 itself
        if float(t_end) < float(ts[-2]):
            return solve(den, x_T, solver, geometric_tail(ts, float(t_end)), **solver_options)
    # elsewhere (and a flow's t_end above its last level) the grid ends at t_end, then 0
    ts = builder(process, steps, **kw, **({} if t_end is None else {"t_min": float(t_end)}))
    return solve(den, x_T, solver, ts, **solver_options)


def geometric_tail(ts: Tensor, t_end: float) -> Tensor:
    """``ts`` (descending, ending ``..., a_prev, a, 0``) continued below ``a`` down to
    ``t_end`` by the ratio ``a / a_prev`` of its last two positive points, then ``0``;
    unchanged where ``t_end >= a`` (the grid already passes below it)."""
    if ts.dim() != 1 or ts.numel() < 3 or float(ts[-1]) != 0.0 or not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"geometric_tail needs a descending grid of at least 3 points ending at 0, got {ts.tolist()}")
    if not float(t_end) > 0.0:
        raise ValueError(f"t_end must be positive, got {t_end}")
    ts = validate(ts)  # finite, within [0, 1]
    a_prev, a = float(ts[-3]), float(ts[-2])
    if t_end >= a:
        return ts
    ratio = a / a_prev
    stop = t_end / math.sqrt(ratio)  # the next point would land within half a step of t_end
    tail, t = [], a * ratio
    while t > stop:
        tail.append(t)
        t *= ratio
    tail.append(t_end)
    return torch.cat([ts[:-1], torch.tensor(tail + [0.0], dtype=ts.dtype)])


def start_noise(process, n: int, shape, generator: torch.Generator, dtype=torch.float64,
                t_max: float | None = None) -> Tensor:
    """``[n, *shape]`` standard normal rows drawn with ``generator``, scaled by ``sigma(t_max)``
    (default the process's ``t_max``): a fit's starting noises."""
    sigma = float(process.sigma(as_time(float(process.t_max if t_max is None else t_max))))
    return torch.randn((int(n), *shape), generator=generator, dtype=dtype) * sigma


def training_set(den, x_T: Tensor | None = None, teacher: Tensor | None = None, n_train: int = 128, shape=None,
                 seed: int = 20240, teacher_steps: int = 200, teacher_solver: str = "dpmpp-3m",
                 t_lo: float | None = None, dtype=torch.float64, t_max: float | None = None) -> tuple[Tensor, Tensor]:
    """The fit's training noises ``x_T`` ``[B, ...]`` and teacher endpoints ``[B, ...]``.

    ``x_T`` defaults to ``n_train`` rows of ``shape`` drawn with ``seed`` and scaled by
    ``sigma(t_max)`` (``t_max`` default the process's); ``teacher`` to ``teacher_endpoint``
    from ``t_max`` with ``teacher_steps`` of ``teacher_solver`` ending at ``t_lo``
    (``default_t_lo``), the smallest last noise level the student may choose, so the
    teacher never stops later than the student can."""
    process = den.process
    if x_T is None:
        if shape is None:
            raise ValueError("give x_T or shape (the sample shape without the batch)")
        x_T = start_noise(process, n_train, shape, torch.Generator().manual_seed(int(seed)), dtype, t_max)
    if not bool(torch.isfinite(x_T).all()):
        raise ValueError("x_T contains NaN or Inf")
    if teacher is None:
        t_end = default_t_lo(process) if t_lo is None else float(t_lo)
        teacher = teacher_endpoint(den, x_T, teacher_steps, teacher_solver, t_end=t_end, t_max=t_max)
    if teacher.shape != x_T.shape:
        raise ValueError(f"teacher has shape {tuple(teacher.shape)}, x_T {tuple(x_T.shape)}")
    return x_T, teacher


def check_solver_options(solver, options: dict, caller: str = "optimize") -> None:
    """Fail early on a bad solver name or option; a keyword the solver does not take is
    named as an unknown keyword argument of ``caller`` (whose extra keywords go to the
    solver)."""
    from .. import solvers
    try:
        solvers.get(solver, **options)
    except ValueError:
        unknown = [k for k in options if _rejects(solvers, solver, k, options[k])]
        if unknown:
            raise ValueError(f"{caller}() got unknown keyword argument(s) {', '.join(map(repr, unknown))}: "
                             f"neither a parameter of {caller}() nor an option of solver {solver!r}") from None
        raise


def _rejects(solvers, solver, key: str, value) -> bool:
    """Whether ``solver`` rejects the keyword ``key`` itself (rather than its value)."""
    try:
        solvers.get(solver, **{key: value})
    except ValueError as e:
        return "unexpected keyword argument" in str(e)
    return False


ROBUST = (None, "mse", "trimmed", "log")


def per_sample_error(out: Tensor, target: Tensor) -> Tensor:
    """The mean squared error per entry of each row (``[B]``, float64)."""
    return ((out.to(torch.float64) - target.to(torch.float64)) ** 2).reshape(out.shape[0], -1).mean(1)


def robust_loss(errors: Tensor, robust: str | None = None, trim: float = 0.1) -> float:
    """A batch loss from per-row squared errors ``[B]``: ``None`` / ``"mse"`` their mean;
    ``"trimmed"`` the mean of all but the largest ``trim`` fraction (a few samples near a
    mode boundary, where the flow splits, cannot steer the fit); ``"log"`` the mean of
    ``log(e_b + floor)`` (each row's *relative* change counts the same, a per-sample
    normalisation; ``floor`` is 1e-6 of the median error, so exact rows stay finite)."""
    if robust in (None, "mse"):
        return float(errors.mean())
    if robust == "trimmed":
        keep = max(1, int(math.ceil((1.0 - float(trim)) * errors.numel())))
        return float(torch.sort(errors).values[:keep].mean())
    if robust == "log":
        floor = 1e-6 * float(errors.median()) + 1e-300
        return float(torch.log(errors + floor).mean())
    raise ValueError(f"unknown robust loss {robust!r}; valid: 'mse', 'trimmed', 'log'")


def check_weights(weights: Tensor | None, x_T: Tensor, what: str = "weights") -> Tensor | None:
    """``weights`` ``[B]`` for the rows of ``x_T``: finite, non-negative, not all zero (float64)."""
    if weights is None:
        return None
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (x_T.shape[0],):
        raise ValueError(f"{what} must be one number per row, shape [{x_T.shape[0]}], got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not float(w.sum()) > 0.0:
        raise ValueError(f"{what} must be finite, non-negative and not all zero")
    return w


def weighted_mse(out: Tensor, target: Tensor, weights: Tensor | None = None) -> float:
    """The mean squared error per entry; with ``weights`` ``[B]``, the rows' mean squared
    errors averaged with those weights (an unbiased estimate of the plain one on the noise a
    stratified set was drawn from, ``stratified_training_set``)."""
    if weights is None:
        return float(((out - target) ** 2).mean())
    errors = per_sample_error(out, target)  # [B] float64
    weights = weights.to(device=errors.device, dtype=errors.dtype)
    return float((errors * weights).sum() / weights.sum())


class Objective:
    """The fit's loss on its training batch: ``loss(ts, model_ts)`` is the mean squared
    error per entry (with ``weights`` ``[B]``, the rows' errors averaged with those weights,
    e.g. a stratified training set's, ``stratified_training_set``; or ``distance(endpoints,
    teacher)``, or a ``robust`` loss of the rows' errors, ``robust_loss``) of ``solver`` on
    the grid ``ts``
    (the model at ``model_ts``, ``ModelTimes``, if given); ``inf`` for a grid that no
    longer descends, whose last noise level exceeds ``t_end_max``, or a non-finite error.
    ``evals`` counts the solves on the training batch."""

    def __init__(self, den, solver, solver_options: dict, x_T: Tensor, teacher: Tensor, distance=None,
                 t_end_max: float | None = None, robust: str | None = None, trim: float = 0.1,
                 weights: Tensor | None = None):
        if robust not in ROBUST:
            raise ValueError(f"unknown robust loss {robust!r}; valid: 'mse', 'trimmed', 'log'")
        if robust not in (None, "mse") and distance is not None:
            raise ValueError("give a distance or a robust loss, not both")
        if not 0.0 <= float(trim) < 1.0:
            raise ValueError(f"trim must lie in [0, 1), got {trim}")
        self.den, self.solver, self.solver_options = den, solver, dict(solver_options)
        self.x_T, self.teacher, self.distance, self.t_end_max = x_T, teacher, distance, t_end_max
        self.robust, self.trim = robust, float(trim)
        self.weights = self._check_weighted(check_weights(weights, x_T))
        self.evals = 0

    def _check_weighted(self, weights: Tensor | None) -> Tensor | None:
        """``weights`` unchanged where the loss is the mean-squared one; else a ``ValueError``."""
        if weights is not None and (self.distance is not None or self.robust not in (None, "mse")):
            raise ValueError("weights apply to the mean-squared loss only, not to a distance or a robust loss")
        return weights

    def _model(self, ts: Tensor, model_ts: Tensor | None, den=None):
        den = self.den if den is None else den
        return den if model_ts is None else ModelTimes(den, ts, model_ts)

    def error(self, ts: Tensor, model_ts: Tensor | None, x: Tensor, target: Tensor,
              weights: Tensor | None = None, den=None) -> float:
        """The distance of the solve from ``x`` to ``target`` (any batch, with its own row
        ``weights`` or none, and its own ``den`` where the model is conditioned row by row,
        e.g. held-out rows' class labels; default the training one; not counted)."""
        self._check_weighted(weights)
        out = solve(self._model(ts, model_ts, den), x, self.solver, ts, **self.solver_options)
        if self.distance is not None:
            err = float(self.distance(out, target))
        elif self.robust in (None, "mse"):
            err = weighted_mse(out, target, weights)
        else:
            err = robust_loss(per_sample_error(out, target), self.robust, self.trim)
        return err if math.isfinite(err) else float("inf")

    def mse(self, ts: Tensor, model_ts: Tensor | None, x: Tensor, target: Tensor,
            weights: Tensor | None = None, den=None) -> float:
        """The mean squared error per entry of the solve from ``x`` (any batch, with its own
        row ``weights`` or none and its own ``den``, as ``error``; not counted): what a robust
        or custom objective is reported in beside its own value."""
        out = solve(self._model(ts, model_ts, den), x, self.solver, ts, **self.solver_options)
        err = weighted_mse(out, target, weights)
        return err if math.isfinite(err) else float("inf")

    def __call__(self, ts: Tensor, model_ts: Tensor | None = None) -> float:
        if self.t_end_max is not None and float(ts[-2]) > self.t_end_max:
            return float("inf")
        if not bool((ts[1:] < ts[:-1]).all()):  # gaps underflowed to zero: not a grid
            return float("inf")
        self.evals += 1
        try:
            return self.error(ts, model_ts, self.x_T, self.teacher, self.weights)
        except ZeroDivisionError:  # two points a rounding error apart (equal log-SNR): not a usable grid
            return float("inf")


__all__ = ["geometric_tail", "Objective", "ROBUST", "robust_loss", "per_sample_error", "weighted_mse", "check_weights", "solve", "start_noise", "teacher_endpoint", "training_set", "check_solver_options"]
