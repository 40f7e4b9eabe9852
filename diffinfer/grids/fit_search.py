"""The derivative-free search of a grid fit, and the choice among fitted candidates.

The solvers' coefficients are not differentiable in ``t`` (they are Python floats), so the
search is derivative-free: Nelder-Mead (scipy) from each starting grid, best first, over
the blocks of ``GridParams`` (all parameters at once for a plain grid; with model times
the grid, then the offsets, then both), restarted from the best point with a fresh
simplex after each run that improved. With ``n - 1 <= 9`` parameters it converges in a
few hundred solves. ``visited`` keeps the start and every improvement, so a held-out
batch can pick among them (``early_stop``).

Which solver suits a model at a given NFE is itself an empirical question: ``best`` picks
the lowest-loss record among fitted candidates (``fit_candidates``), a choice made on
training noise only.
"""
from __future__ import annotations

from torch import Tensor

from .fit_objective import check_weights
from .fit_params import GridParams
from .storage import OptimizedGrid, grid_key


def nelder_mead(loss, params: GridParams, starts: list[Tensor], max_evals: int | None = None,
                restarts: int = 0) -> tuple[float, list]:
    """Minimise ``loss(ts, model_ts)`` over ``params`` from ``starts``.

    Returns ``(initial_loss, visited)``: the loss of the first start, and ``[(training
    loss, (grid, model times or None)), ...]``, the best start then each improvement (the
    last is the best found, never worse than the best start). ``max_evals``: the budget
    per Nelder-Mead run (default ``150 * steps``)."""
    from scipy.optimize import minimize

    steps, model_times = params.steps, params.model_times
    scored = [(loss(g, g[:-1] if model_times else None), g) for g in starts]
    initial_loss = scored[0][0]
    best_loss, best_g = min(scored, key=lambda r: r[0])
    best = (best_g, best_g[:-1].clone() if model_times else None)
    visited = [(best_loss, best)]  # (training loss, (grid, model times)): the start, then each improvement
    blocks = params.blocks()
    if not blocks:
        return initial_loss, visited
    budget = int(max_evals or 150 * steps)
    for _, g in sorted(scored, key=lambda r: r[0]):
        theta = params.pack(g)
        if theta is None:
            continue
        for free in blocks:
            for run in range(1 + int(restarts)):
                x0 = theta[free]
                opts = {"maxfev": budget, "xatol": 1e-4, "fatol": 1e-12 * max(initial_loss, 1e-30),
                        "adaptive": x0.size > 4}
                simplex = params.simplex(x0, free)
                if simplex is not None:
                    opts["initial_simplex"] = simplex

                def full(sub, free=free, base=theta):
                    th = base.copy()
                    th[free] = sub
                    return th
                res = minimize(lambda sub: loss(*params.unpack(full(sub))), x0, method="Nelder-Mead", options=opts)
                if not res.fun < best_loss:
                    break
                theta = full(res.x)
                best_loss, best = float(res.fun), params.unpack(theta)
                visited.append((best_loss, best))
    return initial_loss, visited


def check_holdout(holdout, x_T: Tensor) -> tuple | None:
    """``holdout`` must be ``(x_T, teacher)`` of ``x_T``'s sample shape, or ``(x_T, teacher,
    weights)`` with one weight per row; returns ``(x_T, teacher, weights or None)``."""
    if holdout is None:
        return None
    if len(holdout) not in (2, 3):
        raise ValueError(f"holdout is (x_T, teacher) or (x_T, teacher, weights), got {len(holdout)} items")
    x_h, teacher_h = holdout[:2]
    if x_h.shape[1:] != x_T.shape[1:] or teacher_h.shape != x_h.shape:
        raise ValueError(f"holdout (x_T, teacher) must be two [B, {tuple(x_T.shape[1:])}] tensors")
    return x_h, teacher_h, check_weights(holdout[2] if len(holdout) == 3 else None, x_h, "holdout weights")


def early_stop(visited: list, holdout_error=None) -> tuple[tuple, float, float]:
    """The search's result: ``((training loss, (grid, model times)), holdout loss, initial
    holdout loss)``. Without ``holdout_error`` the last visited point (NaN losses); with it
    (``holdout_error(ts, model_ts) -> float``), the visited point of lowest held-out loss
    (a fit of few noises can overfit them)."""
    if holdout_error is None:
        return visited[-1], float("nan"), float("nan")
    scores = [holdout_error(*v) for _, v in visited]
    k = min(range(len(visited)), key=lambda j: scores[j])
    return visited[k], scores[k], scores[0]


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


__all__ = ["nelder_mead", "early_stop", "check_holdout", "best"]
