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

import torch

from . import timesteps
from .process import DiscreteVP, Process, as_time

Tensor = torch.Tensor
_F64 = torch.float64


@dataclass
class OptimizedGrid:
    """An optimised grid and how it was found.

    ``ts``: the grid (descending, ``steps + 1`` points, last ``0``); ``solver`` and
    ``solver_options``: what it was fitted for; ``loss`` / ``initial_loss``: the training
    objective (mean squared error per entry) after / before; ``evals``: solves used."""

    ts: list[float]
    solver: str
    steps: int
    solver_options: dict = field(default_factory=dict)
    loss: float = float("nan")
    initial_loss: float = float("nan")
    evals: int = 0
    seconds: float = 0.0
    n_train: int = 0

    @property
    def grid(self) -> Tensor:
        """The grid as a float64 tensor (``[steps + 1]``)."""
        return timesteps.validate(torch.tensor(self.ts, dtype=_F64))

    @property
    def key(self) -> str:
        return grid_key(self.solver, self.steps, self.solver_options)


def grid_key(solver: str, steps: int, solver_options: dict | None = None) -> str:
    """``"unipc/6"`` or ``"unipc[order=3]/6"``: the record's name in a grids file."""
    opts = ",".join(f"{k}={solver_options[k]}" for k in sorted(solver_options or {}))
    return f"{solver}[{opts}]/{int(steps)}" if opts else f"{solver}/{int(steps)}"


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
    from .sample import sample
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
             distance=None, **solver_options) -> OptimizedGrid:
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

    def loss_of(ts: Tensor) -> float:
        nonlocal evals
        if t_end_max is not None and float(ts[-2]) > t_end_max:
            return float("inf")
        if not bool((ts[1:] < ts[:-1]).all()):  # gaps underflowed to zero: not a grid
            return float("inf")
        evals += 1
        out = solve(den, x_T, solver, ts, **solver_options)
        err = float(((out - teacher) ** 2).mean()) if distance is None else float(distance(out, teacher))
        return err if math.isfinite(err) else float("inf")

    starts = [timesteps.validate(g) for g in (init or initial_grids(process, steps))]
    if t_end_max is not None:
        starts = [g for g in starts if float(g[-2]) <= t_end_max]
        if not starts:
            raise ValueError(f"no starting grid has its last noise level below t_end_max={t_end_max}")
    for g in starts:
        if g.numel() != steps + 1 or float(g[-1]) != 0.0:
            raise ValueError(f"a starting grid must have {steps + 1} points ending at 0, got {g.tolist()}")
    scored = [(loss_of(g), g) for g in starts]
    initial_loss = scored[0][0]
    best_loss, best = min(scored, key=lambda r: r[0])
    if steps >= 2:
        budget = int(max_evals or 150 * steps)
        for _, g in sorted(scored, key=lambda r: r[0]):
            g = g.clone()
            g[1:-1] = g[1:-1].clamp(max=t_max * (1 - 1e-9))
            g[-2] = max(float(g[-2]), t_lo * 1.5)
            if not bool((g[1:] < g[:-1]).all()):
                continue
            theta0 = params_from_grid(g, t_lo).numpy()
            res = minimize(lambda th: loss_of(grid_from_params(torch.from_numpy(th), t_max, t_lo)),
                           theta0, method="Nelder-Mead",
                           options={"maxfev": budget, "xatol": 1e-4, "fatol": 1e-12 * max(initial_loss, 1e-30),
                                    "adaptive": steps > 4})
            if res.fun < best_loss:
                best_loss, best = float(res.fun), grid_from_params(torch.from_numpy(res.x), t_max, t_lo)
    return OptimizedGrid(ts=[float(t) for t in best], solver=str(solver), steps=steps,
                         solver_options=dict(solver_options), loss=float(best_loss), initial_loss=float(initial_loss),
                         evals=evals, seconds=time.perf_counter() - start, n_train=int(x_T.shape[0]))


def fit_candidates(den, candidates, steps: int, x_T: Tensor | None = None, teacher: Tensor | None = None,
                   n_train: int = 128, shape=None, seed: int = 20240, teacher_steps: int = 200,
                   teacher_solver: str = "dpmpp-3m", t_lo: float | None = None, init: list | None = None,
                   dtype=torch.float64, **optimize_options) -> list[OptimizedGrid]:
    """One fitted grid of ``steps`` steps per candidate solver, best (lowest loss) first.

    ``candidates``: ``[(solver_name, options), ...]``. All are fitted on the same training
    noise and teacher (``training_set``), so their losses compare. The first candidate
    starts from ``init`` (default ``initial_grids``), each later one from the best grid
    fitted so far (a good grid for one multistep solver is a good start for another, and
    one start keeps the cost of a candidate to one Nelder-Mead run).
    ``optimize_options`` (``max_evals``, ``t_end_max``, ``distance``) go to ``optimize``."""
    candidates = [(str(name), dict(opts or {})) for name, opts in candidates]
    if not candidates:
        raise ValueError("give at least one (solver, options) candidate")
    t_lo = default_t_lo(den.process) if t_lo is None else float(t_lo)
    x_T, teacher = training_set(den, x_T, teacher, n_train, shape, seed, teacher_steps, teacher_solver, t_lo, dtype)
    starts = [timesteps.validate(g) for g in (init or initial_grids(den.process, steps))]
    fitted = []
    for name, opts in candidates:
        init_k = starts if not fitted else [min(fitted, key=lambda f: f.loss).grid]
        fitted.append(optimize(den, name, steps, x_T=x_T, teacher=teacher, t_lo=t_lo, init=init_k,
                               **optimize_options, **opts))
    return sorted(fitted, key=lambda f: f.loss)


def best(records, steps: int, candidates=None) -> OptimizedGrid:
    """The lowest-loss record of ``steps`` steps among ``records`` (a list, or ``load``'s
    dict), optionally only those whose ``(solver, options)`` is in ``candidates``. Losses
    compare only between records fitted on one training set (``fit_candidates``)."""
    records = list(records.values()) if isinstance(records, dict) else list(records)
    allowed = None if candidates is None else {grid_key(n, 1, o) for n, o in candidates}
    pool = [r for r in records if r.steps == int(steps)
            and (allowed is None or grid_key(r.solver, 1, r.solver_options) in allowed)]
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


def load(path, solver: str | None = None, steps: int | None = None, **solver_options):
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
    key = grid_key(solver, steps, solver_options)
    if key not in records:
        raise KeyError(f"no grid {key!r} in {path}; stored: {', '.join(sorted(records)) or 'none'}")
    return records[key]


__all__ = ["OptimizedGrid", "optimize", "fit_candidates", "best", "training_set", "save", "load", "grids_path", "grid_key", "teacher_endpoint",
           "grid_from_params", "params_from_grid", "initial_grids", "grow", "default_t_lo"]
