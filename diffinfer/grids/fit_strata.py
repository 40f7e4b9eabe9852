"""Stratified training noise for a grid fit: every noise near a mode boundary in the set.

Where a model's modes are separated, the mean-squared error of a few-step solve on fresh
noise is decided by rare noises (0.1-1%) near the boundary between modes, which the solve
sends to the wrong mode. A plain training set of a thousand noises holds a handful of them
or none, so its loss (and the grid that minimises it) misses the term that decides the
result. Stratified sampling (Cochran, *Sampling Techniques*, ch. 5: an estimate of a mean
from strata sampled at different rates, each row weighted by its stratum's share of the
population over the rows drawn from it) keeps the loss an unbiased estimate of the MSE on
fresh noise and removes most of that term's variance:

1. a *pool* of ``n_pool`` noises is solved by a cheap ``reference`` (``teacher_endpoint``
   with ``reference_steps``) and by the ``probes`` (few-step solves on a few grids);
2. each noise's *score* is its largest error over the probes, each probe's error divided
   by its mean (``boundary_score``): near a boundary a probe's error is the distance
   between modes, elsewhere its error is the bulk's;
3. the ``n_hard`` noises of highest score form the hard stratum, all taken (weight ``1 /
   n_pool`` each); ``n_bulk`` of the rest are drawn uniformly (weight ``(n_pool - n_hard) /
   (n_pool n_bulk)`` each); the weights are scaled to mean 1;
4. the teacher runs on the chosen rows only (``training_set``).

The weighted mean of the rows' squared errors (``Objective(..., weights=...)``,
``optimize(..., weights=...)``) is then an unbiased estimate of the MSE over the pool for
*any* grid, whatever the probes; the probes only decide how much variance is removed.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .fit_objective import per_sample_error, solve, start_noise, teacher_endpoint, training_set
from .fit_params import default_t_lo, initial_grids

#: the default probes' step counts (``initial_grids`` of each): a grid of few steps flips a band
#: of noises along each boundary, a grid of more steps a thinner band; several counts cover the
#: bands of the grids a fit of 4-10 steps visits
PROBE_STEPS = (4, 6, 8, 10)


def boundary_score(den, x_T: Tensor, probes: list[Tensor], reference: Tensor, solver: str = "unipc",
                   **solver_options) -> Tensor:
    """``[B]``: each row's largest error over the ``probes`` (grids solved by ``solver``
    from ``x_T``), each probe's per-row squared error to ``reference`` divided by its mean
    over the rows, so no probe dominates by its bulk error alone."""
    if not probes:
        raise ValueError("give at least one probe grid")
    scores = []
    for ts in probes:
        err = per_sample_error(solve(den, x_T, solver, ts, **solver_options), reference)  # [B]
        if not bool(torch.isfinite(err).all()):
            raise ValueError(f"the probe solve on grid {[round(float(t), 6) for t in ts]} is not finite")
        scores.append(err / err.mean().clamp_min(1e-300))
    return torch.stack(scores).max(0).values


def stratified_rows(den, pool: Tensor, n_hard: int, n_bulk: int, generator: torch.Generator,
                    probes: list[Tensor] | None = None, probe_solver: str = "unipc", reference_steps: int = 40,
                    teacher_solver: str = "dpmpp-3m", t_lo: float | None = None, t_max: float | None = None
                    ) -> tuple[Tensor, Tensor]:
    """Steps 1-3 of the module doc on a given ``pool`` ``[P, *shape]`` of noises (``den``
    conditioned row by row alike, e.g. class labels ``[P]``): the chosen rows ``[n_hard +
    n_bulk]`` (the hard stratum first, then the bulk drawn with ``generator``) and their
    weights (mean 1). A conditional model's fit then runs on ``den.select(rows)``."""
    n_pool, n_hard, n_bulk = int(pool.shape[0]), int(n_hard), int(n_bulk)
    if n_hard < 0 or n_bulk < 1 or n_hard + n_bulk > n_pool:
        raise ValueError(f"need 0 <= n_hard, 1 <= n_bulk and n_hard + n_bulk <= n_pool; got n_hard={n_hard}, "
                         f"n_bulk={n_bulk}, n_pool={n_pool}")
    process = den.process
    t_lo = default_t_lo(process) if t_lo is None else float(t_lo)
    if probes is None:
        probes = [ts for steps in PROBE_STEPS for ts in initial_grids(process, steps, t_max=t_max)]
    reference = teacher_endpoint(den, pool, reference_steps, teacher_solver, t_end=t_lo, t_max=t_max)
    score = boundary_score(den, pool, probes, reference, probe_solver)  # [P]
    order = torch.argsort(score, descending=True)
    hard, rest = order[:n_hard], order[n_hard:]
    bulk = rest[torch.randperm(rest.numel(), generator=generator)[:n_bulk]]
    weights = torch.cat([torch.full((n_hard,), 1.0 / n_pool, dtype=torch.float64),
                         torch.full((n_bulk,), (n_pool - n_hard) / (n_pool * n_bulk), dtype=torch.float64)])
    return torch.cat([hard, bulk]), weights / weights.mean()


def stratified_training_set(den, shape, n_hard: int = 512, n_bulk: int = 1024, n_pool: int = 16384,
                            seed: int = 20240, probes: list[Tensor] | None = None, probe_solver: str = "unipc",
                            reference_steps: int = 40, teacher_steps: int = 200, teacher_solver: str = "dpmpp-3m",
                            t_lo: float | None = None, dtype=torch.float64, t_max: float | None = None,
                            with_denoiser: bool = False) -> tuple:
    """Training noises ``x_T`` ``[n_hard + n_bulk, *shape]``, their teacher endpoints and row
    weights ``[n_hard + n_bulk]`` (mean 1), stratified by ``boundary_score`` (module doc;
    ``stratified_rows``).

    ``probes`` default to the process's starting grids (``initial_grids``) of ``PROBE_STEPS``
    steps; ``probe_solver`` solves them. The pool is drawn with ``seed`` and scaled by
    ``sigma(t_max)``; the bulk rows are chosen with the same seed. Pass the result as
    ``optimize(..., x_T=x_T, teacher=teacher, weights=weights)`` (or as a ``holdout``
    triple).

    A model conditioned row by row over the pool (e.g. ``den.bind(label=...)`` with ``[n_pool]``
    labels) is conditioned on the chosen rows for the teacher; ``with_denoiser=True`` returns that
    model first, ``(den.select(rows), x_T, teacher, weights)``, for the fit to run on. To draw the
    pool yourself, use ``stratified_rows``."""
    g = torch.Generator().manual_seed(int(seed))  # draws the pool, then the bulk rows
    pool = start_noise(den.process, int(n_pool), shape, g, dtype, t_max)  # [P, *shape]
    rows, weights = stratified_rows(den, pool, n_hard, n_bulk, g, probes, probe_solver, reference_steps,
                                    teacher_solver, t_lo, t_max)
    chosen = den.select(rows)
    x_T, teacher = training_set(chosen, pool[rows], None, teacher_steps=teacher_steps, teacher_solver=teacher_solver,
                                t_lo=t_lo, t_max=t_max)
    return (chosen, x_T, teacher, weights) if with_denoiser else (x_T, teacher, weights)


__all__ = ["boundary_score", "stratified_rows", "stratified_training_set"]
