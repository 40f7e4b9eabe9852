"""Time grids optimised per model, solver and NFE against a high-NFE teacher.

Align Your Steps (Sabour, Fidler & Kreis, "Align Your Steps: Optimizing Sampling Schedules
in Diffusion Models", ICML 2024) and LD3 (Tong et al., "Learning to Discretize Denoising
Diffusion ODEs", ICLR 2025) show that at a fixed small number of model calls the *grid*
matters as much as the solver, and that a grid fitted to one model once, in minutes,
transfers to any starting noise. Here, as in LD3, the objective is the distance of the
solver's endpoint to a teacher's endpoint from the same noise:

    L(ts) = mean_b || solve(den, x_T[b], solver, ts) - teacher(x_T[b]) ||^2 ,

over a training batch of starting noises (a different seed than any evaluation). The grid
``t_max = ts[0] > ts[1] > ... > ts[n-1] > ts[n] = 0`` keeps both ends fixed (the last step
returns the denoised estimate, so the choice of ``ts[n-1]``, the last noise level, is one
of the free parameters). The ``n - 1`` free points are parameterised without constraints:
in ``z = log t`` between ``log t_max`` and ``log t_lo``, the ``n`` gaps are
``softmax([theta, 0])`` of the span, so every ``theta`` gives a valid descending grid.
The solvers' coefficients are not differentiable in ``t`` (they are Python floats), so the
search is derivative-free: Nelder-Mead (scipy) from the process's default grid (and from a
second start, the Karras grid where it is finite), keeping the best. With ``n - 1 <= 9``
parameters it converges in a few hundred solves.

Decoupled model times (LD3's decoupled variant; Li et al., "Alleviating Exposure Bias in
Diffusion Models through Sampling with Shifted Time Steps", ICLR 2024): with
``model_times=True`` the fit also chooses, per grid point ``k < n``, the time
``s_k = t_k exp(delta_k)`` at which the model is evaluated there, as though the sample
were at noise level ``s_k`` (``ModelTimes``), while the solver's coefficients stay those of
``t_k``. A few-step solver's sample drifts off the noise level its grid time names; a
shifted evaluation absorbs part of that drift. The ``n`` offsets ``delta`` join the grid's
``n - 1`` parameters, fitted by block coordinate descent (the grid, then the offsets, then
both; ``_blocks``); at ``delta = 0`` the solve is bitwise the plain solve on the grid, so
a fit started there (from a fitted grid) never ends worse on its training batch.

Which solver suits a model at a given NFE is itself an empirical question (on the digits
UNet a fitted UniPC wins at 4 steps, where DDIM wins on fixed grids): ``fit_candidates``
fits one grid per candidate solver on the *same* training noise and teacher, so their
losses compare, and ``best`` picks the lowest, a choice made on training noise only.

Results are ``OptimizedGrid`` records; ``save`` / ``load`` keep them in one JSON file per
model (``grids_path`` puts it beside a bundled checkpoint), keyed by solver and steps.
"""
from __future__ import annotations

import json
import math
import pathlib
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from . import timesteps
from .denoiser import DenoiserBase, Prediction
from .grids.grid import Grid, GridPoint
from .process import DiscreteVP, Process, as_time

Tensor = torch.Tensor
_F64 = torch.float64


@dataclass
class OptimizedGrid:
    """An optimised grid and how it was found.

    ``ts``: the grid (descending, ``steps + 1`` points, last ``0``); ``solver`` and
    ``solver_options``: what it was fitted for; ``model_ts``: the decoupled model times
    (``steps`` points, ``ModelTimes``) or ``None`` (the model at the grid's times);
    ``loss`` / ``initial_loss``: the training objective (mean squared error per entry)
    after / before; ``holdout_loss`` / ``initial_holdout_loss``: the same on held-out
    noise when the fit had some (``optimize``'s ``holdout``); ``evals``: solves used."""

    ts: list[float]
    solver: str
    steps: int
    solver_options: dict = field(default_factory=dict)
    loss: float = float("nan")
    initial_loss: float = float("nan")
    evals: int = 0
    seconds: float = 0.0
    n_train: int = 0
    model_ts: list[float] | None = None
    holdout_loss: float = float("nan")
    initial_holdout_loss: float = float("nan")

    @property
    def grid(self) -> Tensor:
        """The grid as a float64 tensor (``[steps + 1]``)."""
        return timesteps.validate(torch.tensor(self.ts, dtype=_F64))

    @property
    def key(self) -> str:
        return grid_key(self.solver, self.steps, self.solver_options, self.model_ts is not None)

    def denoiser(self, den: DenoiserBase) -> DenoiserBase:
        """The model to solve with on ``grid``: ``den`` itself, or ``ModelTimes`` when the
        record has decoupled model times."""
        return den if self.model_ts is None else ModelTimes(den, self.grid, self.model_ts)


def grid_key(solver: str, steps: int, solver_options: dict | None = None, model_times: bool = False) -> str:
    """``"unipc/6"``, ``"unipc[order=3]/6"`` or ``"unipc+model-times/6"`` (decoupled model
    times): the record's name in a grids file."""
    opts = ",".join(f"{k}={solver_options[k]}" for k in sorted(solver_options or {}))
    name = f"{solver}[{opts}]" if opts else str(solver)
    return f"{name}{'+model-times' if model_times else ''}/{int(steps)}"


# --- decoupled model times -------------------------------------------------------------
class ModelTimes(DenoiserBase):
    """The model evaluated at decoupled times (see the module doc): at the point ``k`` of
    the grid ``ts`` (``[n + 1]``, last ``0``) the data prediction is ``den``'s at
    ``model_ts[k]`` (``[n]``), i.e. the sample read as one at noise level ``model_ts[k]``;
    the solver's step coefficients stay those of ``ts``. At any other time ``t`` the
    log-offset ``log(s / t)`` is interpolated linearly in ``log t`` between the grid's
    positive points (held constant beyond them), and ``t = 0`` stays ``0``.

    On a grid equal to ``ts`` a solver step reaches ``den``'s host-coefficient path on
    the grid of model times, so with ``model_ts == ts[:-1]`` the solve is bitwise the
    plain one. Shares ``den``'s NFE counter."""

    def __init__(self, den: DenoiserBase, ts, model_ts):
        if not isinstance(den, DenoiserBase):
            raise TypeError(f"expected a Denoiser (or wrapper), got {type(den).__name__}")
        ts = timesteps.validate(ts)
        model_ts = torch.as_tensor(model_ts, dtype=_F64).detach().cpu().reshape(-1)  # [n]
        if float(ts[-1]) != 0.0 or model_ts.numel() != ts.numel() - 1:
            raise ValueError(f"model_ts needs one time per positive grid point ({ts.numel() - 1}) of a grid "
                             f"ending at 0; got {model_ts.numel()} for {ts.numel()} grid points")
        if not bool(torch.isfinite(model_ts).all()) or not bool((model_ts > 0).all()) \
                or float(model_ts.max()) > float(den.process.t_max):
            raise ValueError(f"model times must lie in (0, t_max={den.process.t_max}]; got {model_ts.tolist()}")
        self.den, self.process, self._counter = den, den.process, den._counter
        self.ts, self.model_ts = ts, model_ts
        self._ts_host = tuple(ts.tolist())  # compared with a solver grid's ``t`` (no tensor read per step)
        self._model_grid = Grid.of(den.process, torch.cat([model_ts, ts[-1:]]))  # [n + 1], aligned with ts
        knots = torch.log(ts[:-1]).flip(0)  # [n] ascending log t
        self._knots = knots.tolist()
        self._offsets = (torch.log(model_ts) - torch.log(ts[:-1])).flip(0).tolist()  # [n] log(s / t)

    def model_time(self, t) -> Tensor:
        """The model time of ``t`` (float64, ``t``'s shape)."""
        t = as_time(t)
        flat = t.detach().cpu().reshape(-1).numpy()
        with np.errstate(divide="ignore"):
            delta = np.interp(np.log(flat), self._knots, self._offsets)
        s = torch.from_numpy(flat * np.exp(delta)).reshape(t.shape)
        return torch.where(t.cpu() > 0, s, torch.zeros_like(s)).to(t.device)

    def predict(self, x: Tensor, t) -> Prediction:
        if isinstance(t, GridPoint) and t.k < len(self.model_ts) and t.grid.t == self._ts_host:
            return self.den.predict(x, self._model_grid.point(t.k))
        return self.den.predict(x, self.model_time(t))

    def select(self, idx: Tensor) -> "ModelTimes":
        return ModelTimes(self.den.select(idx), self.ts, self.model_ts)


def model_times_from_params(ts: Tensor, delta: Tensor, t_lo: float, t_max: float) -> Tensor:
    """``[n]`` model times ``ts[k] exp(delta[k])`` of a grid ``ts`` ``[n + 1]``, clipped to
    ``[t_lo, t_max]`` (the network is never queried below ``t_lo``)."""
    return (ts[:-1] * torch.exp(torch.as_tensor(delta, dtype=_F64).reshape(-1))).clamp(min=t_lo, max=t_max)


# --- parameterisation ------------------------------------------------------------------
def grid_from_params(theta: Tensor, t_max: float, t_lo: float) -> Tensor:
    """``[n + 1]`` descending grid from ``n - 1`` unconstrained parameters (see module doc)."""
    logits = torch.cat([torch.as_tensor(theta, dtype=_F64).reshape(-1), torch.zeros(1, dtype=_F64)])
    gaps = torch.softmax(logits, 0)  # [n], sums to 1
    z = torch.cumsum(gaps, 0)[:-1]  # [n - 1] in (0, 1)
    lo, hi = math.log(t_lo), math.log(t_max)
    inner = torch.exp(hi + z * (lo - hi))
    return torch.cat([torch.tensor([t_max], dtype=_F64), inner, torch.zeros(1, dtype=_F64)])


def params_from_grid(ts: Tensor, t_lo: float) -> Tensor:
    """Inverse of ``grid_from_params`` for a grid ending at ``0`` with ``ts[-2] > t_lo``."""
    ts = timesteps.validate(ts)
    if float(ts[-1]) != 0.0:
        raise ValueError("an optimisable grid ends at t = 0")
    n = ts.numel() - 1
    if n < 2:
        return torch.zeros(0, dtype=_F64)
    t_max = float(ts[0])
    if not float(ts[-2]) > t_lo:
        raise ValueError(f"the grid's last positive point {float(ts[-2])} must exceed t_lo={t_lo}")
    lo, hi = math.log(t_lo), math.log(t_max)
    z = torch.cat([torch.zeros(1, dtype=_F64), (torch.log(ts[1:-1]) - hi) / (lo - hi), torch.ones(1, dtype=_F64)])
    gaps = z[1:] - z[:-1]  # [n]
    return torch.log(gaps[:-1]) - torch.log(gaps[-1])


def grow(ts: Tensor, steps: int) -> Tensor:
    """A fitted grid extended to ``steps`` steps by splitting, one at a time, its widest
    interval between positive points in ``log t`` at the geometric mean (a warm start
    for fitting the next NFE; the last interval, to ``0``, is never split)."""
    ts = timesteps.validate(ts)
    if float(ts[-1]) != 0.0 or ts.numel() < 3:
        raise ValueError("grow needs a grid ending at 0 with at least one positive interior point")
    pos = ts[:-1].tolist()
    while len(pos) < steps:
        logs = [math.log(t) for t in pos]
        k = max(range(len(pos) - 1), key=lambda j: logs[j] - logs[j + 1]) if len(pos) > 1 else None
        if k is None:
            raise ValueError("cannot grow a grid with a single positive point")
        pos.insert(k + 1, math.exp(0.5 * (logs[k] + logs[k + 1])))
    return timesteps.validate(torch.tensor(pos + [0.0], dtype=_F64))


def initial_grids(process: Process, steps: int) -> list[Tensor]:
    """Starting points: the default grid of the process, and the Karras grid where finite."""
    grids = [timesteps.default_builder(process)(process, steps)]  # builders end at 0 (final_zero)
    try:
        karras = timesteps.karras(process, steps)
        if not any(torch.allclose(karras, g) for g in grids):
            grids.append(karras)
    except ValueError:  # infinite log-SNR at an end (rectified flow at t = 1)
        pass
    return grids


# --- the objective ---------------------------------------------------------------------
def solve(den, x_T: Tensor, solver, ts: Tensor, **solver_options) -> Tensor:
    """The solver's endpoint from ``x_T`` on ``ts`` (no gradient)."""
    from .loop import sample
    with torch.no_grad():
        return sample(den, x_T, solver=solver, ts=ts, **solver_options).x


def teacher_endpoint(den, x_T: Tensor, steps: int = 200, solver: str = "dpmpp-3m", t_end: float | None = None,
                     **solver_options) -> Tensor:
    """A high-NFE endpoint from ``x_T``: ``solver`` on the process's default grid of
    ``steps`` steps, ending at ``t_end`` and then ``0``. The default ``t_end`` is
    ``default_t_lo`` where the process stops short of ``0`` (so the student's last noise
    level may go below the process's ``t_min``), else the grid reaches ``0`` itself."""
    builder = timesteps.default_builder(den.process)
    if t_end is None and den.process.t_min > 0:
        t_end = default_t_lo(den.process)
    kw = {} if t_end is None else {"t_min": float(t_end)}
    return solve(den, x_T, solver, builder(den.process, steps, **kw), **solver_options)


def default_t_lo(process: Process) -> float:
    """The smallest last noise level the search may pick: a tenth of the process's
    ``t_min`` for continuous-time processes (``1e-4`` where ``t_min = 0``), and ``t_min``
    itself for a ``DiscreteVP`` table, whose network must not be queried below its first
    training timestep."""
    if isinstance(process, DiscreteVP):
        return process.t_min
    return 0.1 * process.t_min if process.t_min > 0 else 1e-4


def training_set(den, x_T: Tensor | None = None, teacher: Tensor | None = None, n_train: int = 128, shape=None,
                 seed: int = 20240, teacher_steps: int = 200, teacher_solver: str = "dpmpp-3m",
                 t_lo: float | None = None, dtype=torch.float64) -> tuple[Tensor, Tensor]:
    """The fit's training noises ``x_T`` ``[B, ...]`` and teacher endpoints ``[B, ...]``.

    ``x_T`` defaults to ``n_train`` rows of ``shape`` drawn with ``seed`` and scaled by
    ``sigma(t_max)``; ``teacher`` to ``teacher_endpoint`` with ``teacher_steps`` of
    ``teacher_solver`` ending at ``t_lo`` (``default_t_lo``), the smallest last noise level
    the student may choose, so the teacher never stops later than the student can."""
    process = den.process
    if x_T is None:
        if shape is None:
            raise ValueError("give x_T or shape (the sample shape without the batch)")
        g = torch.Generator().manual_seed(int(seed))
        x_T = torch.randn((int(n_train), *shape), generator=g, dtype=dtype) * float(
            process.sigma(as_time(float(process.t_max))))
    if not bool(torch.isfinite(x_T).all()):
        raise ValueError("x_T contains NaN or Inf")
    if teacher is None:
        t_end = default_t_lo(process) if t_lo is None else float(t_lo)
        teacher = teacher_endpoint(den, x_T, teacher_steps, teacher_solver, t_end=t_end)
    if teacher.shape != x_T.shape:
        raise ValueError(f"teacher has shape {tuple(teacher.shape)}, x_T {tuple(x_T.shape)}")
    return x_T, teacher


def optimize(den, solver="unipc", steps: int = 6, x_T: Tensor | None = None, teacher: Tensor | None = None,
             n_train: int = 128, shape=None, seed: int = 20240, teacher_steps: int = 200,
             teacher_solver: str = "dpmpp-3m", t_lo: float | None = None, t_end_max: float | None = None,
             max_evals: int | None = None, init: list | None = None, dtype=torch.float64,
             distance=None, model_times: bool = False, restarts: int = 0, holdout: tuple | None = None,
             **solver_options) -> OptimizedGrid:
    """Fit the grid of ``steps`` steps of ``solver`` to a teacher (Align Your Steps / LD3).

    Args:
        den: the model (``Denoiser`` or wrapper).
        solver: a registered solver name; ``solver_options`` go to it.
        steps: number of steps (``steps + 1`` grid points, the last ``0``).
        x_T: training noises ``[B, ...]`` at ``t_max``; else ``n_train`` rows of ``shape``
            (``[...]`` without the batch) drawn with ``seed`` and scaled by ``sigma(t_max)``.
        teacher: the target endpoints ``[B, ...]`` for ``x_T``; else ``teacher_endpoint``
            with ``teacher_steps`` of ``teacher_solver``, ending at ``t_lo`` (``training_set``).
        t_lo: the smallest allowed last noise level (``default_t_lo``; for a trained
            network, its smallest training time, so it is never queried below it).
        t_end_max: the largest allowed last noise level (default: any). A squared-error
            objective rewards stopping early at a blurry posterior mean; for perceptual
            quality (FD) cap the last noise level.
        max_evals: Nelder-Mead budget per start (default ``150 * steps``).
        init: starting grids (default ``initial_grids``).
        distance: ``distance(endpoints, teacher) -> float`` to minimise (default the mean
            squared error per entry); e.g. a squared error in a feature space, as LD3
            uses LPIPS, when sample quality is judged there.
        model_times: also fit the decoupled model times (``ModelTimes``; ``n`` more
            parameters, starting at the grid's own times, ``delta = 0``).
        restarts: Nelder-Mead runs restarted from the best point with a fresh simplex
            after each run that improved (each with the same budget): a simplex in many
            dimensions collapses before it converges. With ``model_times`` the grid, the
            offsets and then both are fitted in turn (``_blocks``), each with this budget.
        holdout: ``(x_T, teacher)`` of other training noise (``training_set`` with another
            seed). Then the result is, among the starting point and the end of every
            Nelder-Mead run that improved the training loss, the one with the lowest
            held-out loss (early stopping: a fit of few noises can overfit them), and the
            record keeps both held-out losses.
    Returns:
        ``OptimizedGrid`` with the best grid found (never worse on the training batch than
        the best starting grid).
    """
    from scipy.optimize import minimize

    from . import solvers as registry
    registry.get(solver, **solver_options)  # fail early on a bad name or option
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    process = den.process
    t_max = float(process.t_max)
    t_lo = default_t_lo(process) if t_lo is None else float(t_lo)
    x_T, teacher = training_set(den, x_T, teacher, n_train, shape, seed, teacher_steps, teacher_solver, t_lo, dtype)
    start = time.perf_counter()
    evals = 0

    def error(ts: Tensor, model_ts: Tensor | None, x: Tensor, target: Tensor) -> float:
        model = den if model_ts is None else ModelTimes(den, ts, model_ts)
        out = solve(model, x, solver, ts, **solver_options)
        err = float(((out - target) ** 2).mean()) if distance is None else float(distance(out, target))
        return err if math.isfinite(err) else float("inf")

    def loss_of(ts: Tensor, model_ts: Tensor | None = None) -> float:
        nonlocal evals
        if t_end_max is not None and float(ts[-2]) > t_end_max:
            return float("inf")
        if not bool((ts[1:] < ts[:-1]).all()):  # gaps underflowed to zero: not a grid
            return float("inf")
        evals += 1
        return error(ts, model_ts, x_T, teacher)

    def unpack(th) -> tuple[Tensor, Tensor | None]:
        """Nelder-Mead's vector -> (grid ``[steps + 1]``, model times ``[steps]`` or ``None``)."""
        th = torch.from_numpy(th)
        ts = grid_from_params(th[:steps - 1], t_max, t_lo)
        return ts, (model_times_from_params(ts, th[steps - 1:], t_lo, t_max) if model_times else None)

    starts = [timesteps.validate(g) for g in (init or initial_grids(process, steps))]
    if t_end_max is not None:
        starts = [g for g in starts if float(g[-2]) <= t_end_max]
        if not starts:
            raise ValueError(f"no starting grid has its last noise level below t_end_max={t_end_max}")
    for g in starts:
        if g.numel() != steps + 1 or float(g[-1]) != 0.0:
            raise ValueError(f"a starting grid must have {steps + 1} points ending at 0, got {g.tolist()}")
    scored = [(loss_of(g, g[:-1] if model_times else None), g) for g in starts]
    initial_loss = scored[0][0]
    best_loss, best_g = min(scored, key=lambda r: r[0])
    best = (best_g, best_g[:-1].clone() if model_times else None)
    visited = [(best_loss, best)]  # (training loss, (grid, model times)): the start, then each improvement
    if _blocks(steps, model_times):
        budget = int(max_evals or 150 * steps)
        for _, g in sorted(scored, key=lambda r: r[0]):
            g = g.clone()
            g[1:-1] = g[1:-1].clamp(max=t_max * (1 - 1e-9))
            g[-2] = max(float(g[-2]), t_lo * 1.5)
            if not bool((g[1:] < g[:-1]).all()):
                continue
            theta = params_from_grid(g, t_lo).numpy()
            if model_times:
                theta = np.concatenate([theta, np.zeros(steps)])
            for free in _blocks(steps, model_times):
                for run in range(1 + int(restarts)):
                    x0 = theta[free]
                    opts = {"maxfev": budget, "xatol": 1e-4, "fatol": 1e-12 * max(initial_loss, 1e-30),
                            "adaptive": x0.size > 4}
                    if model_times:  # scipy's default simplex for the grid, 0.05 in log t for the offsets
                        opts["initial_simplex"] = initial_simplex(x0, int((free < steps - 1).sum()), 0.05)

                    def full(sub, free=free, base=theta):
                        th = base.copy()
                        th[free] = sub
                        return th
                    res = minimize(lambda sub: loss_of(*unpack(full(sub))), x0, method="Nelder-Mead", options=opts)
                    if not res.fun < best_loss:
                        break
                    theta = full(res.x)
                    best_loss, best = float(res.fun), unpack(theta)
                    visited.append((best_loss, best))
    holdout_loss = initial_holdout_loss = float("nan")
    if holdout is not None:
        x_h, teacher_h = holdout
        if x_h.shape[1:] != x_T.shape[1:] or teacher_h.shape != x_h.shape:
            raise ValueError(f"holdout (x_T, teacher) must be two [B, {tuple(x_T.shape[1:])}] tensors")
        scores = [error(*v, x_h, teacher_h) for _, v in visited]
        initial_holdout_loss = scores[0]
        k = min(range(len(visited)), key=lambda j: scores[j])
        (best_loss, best), holdout_loss = visited[k], scores[k]
    ts_best, model_best = best
    return OptimizedGrid(ts=[float(t) for t in ts_best], solver=str(solver), steps=steps,
                         solver_options=dict(solver_options), loss=float(best_loss), initial_loss=float(initial_loss),
                         evals=evals, seconds=time.perf_counter() - start, n_train=int(x_T.shape[0]),
                         model_ts=None if model_best is None else [float(t) for t in model_best],
                         holdout_loss=holdout_loss, initial_holdout_loss=initial_holdout_loss)


def _blocks(steps: int, model_times: bool) -> list:
    """The parameter blocks Nelder-Mead fits in turn (index arrays into the vector of the
    ``steps - 1`` grid parameters, then the ``steps`` model-time offsets): all at once for a
    plain grid; with model times, the grid alone (offsets 0), then the offsets alone (grid
    fixed), then all (block coordinate descent: each block's simplex is small enough to
    converge within its budget, where one simplex over every parameter stalls)."""
    n_grid = steps - 1
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


def fit_candidates(den, candidates, steps: int, x_T: Tensor | None = None, teacher: Tensor | None = None,
                   n_train: int = 128, shape=None, seed: int = 20240, teacher_steps: int = 200,
                   teacher_solver: str = "dpmpp-3m", t_lo: float | None = None, init: list | None = None,
                   dtype=torch.float64, **optimize_options) -> list[OptimizedGrid]:
    """One fitted grid of ``steps`` steps per candidate solver, best (lowest loss) first.

    ``candidates``: ``[(solver_name, options), ...]``, or ``(solver_name, options, True)``
    to fit the decoupled model times too (``optimize``'s ``model_times``). All are fitted
    on the same training noise and teacher (``training_set``), so their losses compare. The first candidate
    starts from ``init`` (default ``initial_grids``), each later one from the best grid
    fitted so far (a good grid for one multistep solver is a good start for another, and
    one start keeps the cost of a candidate to one Nelder-Mead run).
    ``optimize_options`` (``max_evals``, ``t_end_max``, ``distance``) go to ``optimize``."""
    candidates = _candidates(candidates)
    if not candidates:
        raise ValueError("give at least one (solver, options) candidate")
    t_lo = default_t_lo(den.process) if t_lo is None else float(t_lo)
    x_T, teacher = training_set(den, x_T, teacher, n_train, shape, seed, teacher_steps, teacher_solver, t_lo, dtype)
    fitted = []
    for name, opts, model_times in candidates:
        init_k = init if not fitted else [min(fitted, key=lambda f: f.loss).grid]  # None: optimize's default starts
        fitted.append(optimize(den, name, steps, x_T=x_T, teacher=teacher, t_lo=t_lo, init=init_k,
                               model_times=model_times, **optimize_options, **opts))
    return sorted(fitted, key=lambda f: f.loss)


def _candidates(candidates) -> list[tuple[str, dict, bool]]:
    """``(solver, options)`` or ``(solver, options, model_times)`` -> ``(solver, options, model_times)``."""
    out = []
    for c in candidates:
        if len(c) not in (2, 3):
            raise ValueError(f"a candidate is (solver, options) or (solver, options, model_times), got {c!r}")
        out.append((str(c[0]), dict(c[1] or {}), bool(c[2]) if len(c) == 3 else False))
    return out


def best(records, steps: int, candidates=None) -> OptimizedGrid:
    """The lowest-loss record of ``steps`` steps among ``records`` (a list, or ``load``'s
    dict), optionally only those whose ``(solver, options[, model_times])`` is in
    ``candidates``. Losses compare only between records fitted on one training set
    (``fit_candidates``, or ``optimize`` with the same training noise and teacher)."""
    records = list(records.values()) if isinstance(records, dict) else list(records)
    allowed = None if candidates is None else {grid_key(n, 1, o, m) for n, o, m in _candidates(candidates)}
    pool = [r for r in records if r.steps == int(steps)
            and (allowed is None or grid_key(r.solver, 1, r.solver_options, r.model_ts is not None) in allowed)]
    if not pool:
        raise KeyError(f"no fitted grid of {int(steps)} steps"
                       + ("" if candidates is None else f" for {sorted(allowed)}"))
    return min(pool, key=lambda r: r.loss)


# --- storage ---------------------------------------------------------------------------
def grids_path(model_name: str) -> pathlib.Path:
    """Where a bundled model's grids live: beside its checkpoint, ``NAME.grids.json``."""
    from . import zoo
    return zoo.weights_path(model_name).with_suffix(".grids.json")


def save(path, grids, meta: dict | None = None) -> pathlib.Path:
    """Add ``grids`` (``OptimizedGrid`` or a list) to the JSON file ``path`` (created if
    absent; records with the same solver, options and steps are replaced)."""
    path = pathlib.Path(path)
    grids = [grids] if isinstance(grids, OptimizedGrid) else list(grids)
    data = json.loads(path.read_text()) if path.exists() else {"format": "diffinfer-grids-1", "grids": {}}
    if meta:
        data.setdefault("meta", {}).update(meta)
    for g in grids:
        data["grids"][g.key] = asdict(g)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
    return path


def load(path, solver: str | None = None, steps: int | None = None, model_times: bool = False, **solver_options):
    """All records of a grids file (``{key: OptimizedGrid}``), or, with ``solver`` and
    ``steps``, that one record (``KeyError`` naming the stored keys if absent)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no grids file at {path}")
    data = json.loads(path.read_text())
    if data.get("format") != "diffinfer-grids-1":
        raise ValueError(f"{path} is not a diffinfer grids file")
    records = {k: OptimizedGrid(**v) for k, v in data["grids"].items()}
    if solver is None:
        return records
    key = grid_key(solver, steps, solver_options, model_times)
    if key not in records:
        raise KeyError(f"no grid {key!r} in {path}; stored: {', '.join(sorted(records)) or 'none'}")
    return records[key]


__all__ = ["OptimizedGrid", "ModelTimes", "model_times_from_params", "initial_simplex", "optimize", "fit_candidates",
           "best", "training_set", "save", "load", "grids_path", "grid_key", "teacher_endpoint",
           "grid_from_params", "params_from_grid", "initial_grids", "grow", "default_t_lo"]
