"""Time grids optimised per model, solver and NFE against a high-NFE teacher.

Align Your Steps (Sabour, Fidler & Kreis, "Align Your Steps: Optimizing Sampling Schedules
in Diffusion Models", ICML 2024) and LD3 (Tong et al., "Learning to Discretize Denoising
Diffusion ODEs", ICLR 2025) show that at a fixed small number of model calls the *grid*
matters as much as the solver, and that a grid fitted to one model once, in minutes,
transfers to any starting noise. ``optimize`` composes the parts:

- ``fit_params``: the parameterisation (``GridParams``: every unconstrained vector is a
  valid descending grid from ``t_max`` to ``0``, plus decoupled model-time offsets);
- ``fit_objective``: the training noises, the teacher and the loss (``Objective``);
- ``fit_search``: Nelder-Mead from the starting grids, and the held-out early stop;
- ``storage``: the ``OptimizedGrid`` record, saved and loaded as JSON.

Decoupled model times (``model_times=True``, ``ModelTimes``): the fit also chooses, per
grid point ``k < n``, the time ``s_k = t_k exp(delta_k)`` at which the model is evaluated
there, while the solver's coefficients stay those of ``t_k``; at ``delta = 0`` the solve is
bitwise the plain solve on the grid, so a fit started there (from a fitted grid) never
ends worse on its training batch.

``fit_candidates`` fits one grid per candidate solver on the *same* training noise and
teacher, so their losses compare (on the digits UNet a fitted UniPC wins at 4 steps, where
DDIM wins on fixed grids); ``best`` picks the lowest.
"""
from __future__ import annotations

import time

import torch
from torch import Tensor

from .fit_objective import Objective, check_solver_options, training_set
from .fit_params import GridParams, SplineParams, default_t_lo
from .fit_search import _candidates, check_holdout, early_stop, nelder_mead
from .storage import OptimizedGrid


def optimize(den, solver="unipc", steps: int = 6, x_T: Tensor | None = None, teacher: Tensor | None = None,
             n_train: int = 128, shape=None, seed: int = 20240, teacher_steps: int = 200,
             teacher_solver: str = "dpmpp-3m", t_lo: float | None = None, t_end_max: float | None = None,
             max_evals: int | None = None, init: list | None = None, dtype=torch.float64,
             distance=None, model_times: bool = False, restarts: int = 0, holdout: tuple | None = None,
             t_max: float | None = None, t_min: float | None = None, parameterization: str = "points",
             knots: int = 3, spline_variable: str = "auto", robust: str | None = None, trim: float = 0.1,
             n_holdout: int = 0, weights: Tensor | None = None, holdout_den=None,
             **solver_options) -> OptimizedGrid:
    """Fit the grid of ``steps`` steps of ``solver`` to a teacher (Align Your Steps / LD3).

    Args:
        den: the model (``Denoiser`` or wrapper).
        solver: a registered solver name; the remaining keyword arguments (``solver_options``)
            go to it, and one it does not take raises ``ValueError`` naming it.
        steps: number of steps (``steps + 1`` grid points, the last ``0``).
        x_T: training noises ``[B, ...]`` at ``t_max``; else ``n_train`` rows of ``shape``
            (``[...]`` without the batch) drawn with ``seed`` and scaled by ``sigma(t_max)``.
        teacher: the target endpoints ``[B, ...]`` for ``x_T``; else ``teacher_endpoint``
            from ``t_max`` with ``teacher_steps`` of ``teacher_solver``, ending at ``t_lo``
            (``training_set``).
        t_max: the grid's first point (default the process's ``t_max``).
        t_min: a fixed last noise level: the grid is ``t_max > ... > t_min > 0`` (default:
            the last noise level is fitted too, in ``(t_lo, t_max)``).
        t_lo: the smallest allowed last noise level (``default_t_lo``; for a trained
            network, its smallest training time, so it is never queried below it).
        t_end_max: the largest allowed last noise level (default: any). A squared-error
            objective rewards stopping early at a blurry posterior mean; for perceptual
            quality (FD) cap the last noise level.
        max_evals: Nelder-Mead budget per start (default ``150 * steps``).
        init: starting grids (default ``initial_grids`` from ``t_max`` to ``t_min``).
        distance: ``distance(endpoints, teacher) -> float`` to minimise (default the mean
            squared error per entry); e.g. a squared error in a feature space, as LD3
            uses LPIPS, when sample quality is judged there.
        spline_variable: with ``parameterization='spline'``, what the spline is monotone in
            (``SplineParams``): ``'logsnr'``, ``'noise-fraction'`` (``log t`` on a flow), or
            ``'auto'`` (log-SNR where it is finite at ``t_max``, else the noise fraction).
        model_times: also fit the decoupled model times (``ModelTimes``; ``n`` more
            parameters, starting at the grid's own times, ``delta = 0``).
        restarts: Nelder-Mead runs restarted from the best point with a fresh simplex
            after each run that improved (each with the same budget): a simplex in many
            dimensions collapses before it converges. With ``model_times`` the grid, the
            offsets and then both are fitted in turn, each with this budget.
        holdout: ``(x_T, teacher)`` of other training noise (``training_set`` with another
            seed). Then the result is, among the starting point and the end of every
            Nelder-Mead run that improved the training loss, the one with the lowest
            held-out loss (early stopping: a fit of few noises can overfit them), and the
            record keeps both held-out losses. ``(x_T, teacher, weights)`` weights its rows.
        holdout_den: the model for the held-out rows where it is conditioned row by row
            (``den`` bound to the held-out rows' class labels; default ``den``).
        weights: ``[B]`` weights of the training rows in the mean-squared loss (a stratified
            training set's, ``stratified_training_set``; default equal): the loss and the
            recorded MSEs are the weighted means of the rows' errors.
    Returns:
        ``OptimizedGrid`` with the best grid found (never worse on the training batch than
        the best starting grid).
    """
    check_solver_options(solver, solver_options)  # fail early on a bad name, option or keyword
    if holdout_den is not None and holdout is None:
        raise ValueError("holdout_den is the model for the rows of holdout; give holdout (x_T, teacher[, weights]) "
                         "computed with it")
    if parameterization == "points":
        if spline_variable != "auto":
            raise ValueError(f"spline_variable={spline_variable!r} applies to parameterization='spline'; "
                             "free points have no spline")
        params = GridParams.of(den.process, steps, t_max, t_min, t_lo, model_times)
    elif parameterization == "spline":
        if model_times:
            raise ValueError("model_times is fitted with parameterization='points' only")
        params = SplineParams.of(den.process, steps, t_max, t_min, t_lo, knots, spline_variable)
    else:
        raise ValueError(f"unknown parameterization {parameterization!r}; valid: 'points', 'spline'")
    x_T, teacher = training_set(den, x_T, teacher, n_train, shape, seed, teacher_steps, teacher_solver, params.t_lo,
                                dtype, t_max=t_max)
    if holdout is None and int(n_holdout) > 0:
        holdout = training_set(den, None, None, int(n_holdout), tuple(x_T.shape[1:]), int(seed) + 1, teacher_steps,
                               teacher_solver, params.t_lo, x_T.dtype, t_max=t_max)
    holdout = check_holdout(holdout, x_T)
    start = time.perf_counter()
    loss = Objective(den, solver, solver_options, x_T, teacher, distance, t_end_max, robust, trim, weights)
    initial_loss, visited = nelder_mead(loss, params, params.starts(den.process, init, t_end_max), max_evals, restarts)
    held = None if holdout is None else (lambda ts, model_ts: loss.error(ts, model_ts, *holdout, den=holdout_den))
    (best_loss, (ts, model_ts)), holdout_loss, initial_holdout_loss = early_stop(visited, held)
    seconds = time.perf_counter() - start
    if distance is None and robust in (None, "mse"):  # the objective is the MSE: its values already are
        train_mse, holdout_mse = float(best_loss), float("nan") if holdout is None else float(holdout_loss)
    else:
        train_mse = loss.mse(ts, model_ts, x_T, teacher, loss.weights)
        holdout_mse = float("nan") if holdout is None else loss.mse(ts, model_ts, *holdout, den=holdout_den)
    return OptimizedGrid(ts=[float(t) for t in ts], solver=str(solver), steps=params.steps,
                         solver_options=dict(solver_options), loss=float(best_loss), initial_loss=float(initial_loss),
                         evals=loss.evals, seconds=seconds, n_train=int(x_T.shape[0]),
                         model_ts=None if model_ts is None else [float(t) for t in model_ts],
                         holdout_loss=holdout_loss, initial_holdout_loss=initial_holdout_loss,
                         parameterization=parameterization, knots=int(knots) if parameterization == "spline" else 0,
                         spline_variable=params.variable if parameterization == "spline" else None,
                         robust=robust, train_mse=train_mse, holdout_mse=holdout_mse,
                         n_holdout=0 if holdout is None else int(holdout[0].shape[0]))


def fit_candidates(den, candidates, steps: int, x_T: Tensor | None = None, teacher: Tensor | None = None,
                   n_train: int = 128, shape=None, seed: int = 20240, teacher_steps: int = 200,
                   teacher_solver: str = "dpmpp-3m", t_lo: float | None = None, init: list | None = None,
                   dtype=torch.float64, t_max: float | None = None, **optimize_options) -> list[OptimizedGrid]:
    """One fitted grid of ``steps`` steps per candidate solver, best (lowest loss) first.

    ``candidates``: ``[(solver_name, options), ...]``, or ``(solver_name, options, True)``
    to fit the decoupled model times too (``optimize``'s ``model_times``). All are fitted
    on the same training noise and teacher (``training_set``, from ``t_max``), so their
    losses compare. The first candidate starts from ``init`` (default ``initial_grids``),
    each later one from the best grid fitted so far (a good grid for one multistep solver
    is a good start for another, and one start keeps the cost of a candidate to one
    Nelder-Mead run). ``optimize_options`` (``max_evals``, ``t_end_max``, ``t_min``,
    ``distance``) go to ``optimize``."""
    candidates = _candidates(candidates)
    if not candidates:
        raise ValueError("give at least one (solver, options) candidate")
    t_lo = default_t_lo(den.process) if t_lo is None else float(t_lo)
    x_T, teacher = training_set(den, x_T, teacher, n_train, shape, seed, teacher_steps, teacher_solver, t_lo, dtype,
                                t_max=t_max)
    fitted = []
    for name, opts, model_times in candidates:
        init_k = init if not fitted else [min(fitted, key=lambda f: f.loss).grid]  # None: optimize's default starts
        fitted.append(optimize(den, name, steps, x_T=x_T, teacher=teacher, t_lo=t_lo, init=init_k,
                               model_times=model_times, t_max=t_max, **optimize_options, **opts))
    return sorted(fitted, key=lambda f: f.loss)


__all__ = ["optimize", "fit_candidates"]
