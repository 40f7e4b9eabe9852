"""Every scaling method by name, sized to a common budget (per-sample NFE + verifier calls).

``run(method, den, reward, budget, shape, steps=..., seed=...)`` picks each method's
size so that its cost stays within ``budget`` (``ScalingResult.cost`` reports what it
actually spent). This is what the ``scale`` command and ``bench/scaling.py`` call.

==============  ==========================================================
method          size from the budget ``C`` with ``S`` sampler steps
==============  ==========================================================
best-of-n       ``N = C // (S + 1)`` samples (stochastic ``ddpm`` steps)
random-search   ``N = C // (S + 1)`` noises (deterministic ``euler``)
zero-order      ``1 + k M`` runs with ``M = 4`` neighbours per round
paths           the largest ``N`` paths (``M = 4`` branches) that fit (``search.paths_cost``;
                options ``start``, ``forward``, ``backward``, ``keep``, ``refine``)
smc             ``N = C // (2 S)`` particles (an NFE and a verifier call per step)
dts / dts*      rollouts (batches of 8) until the cost would pass ``C``
rbf             ``C // 2`` candidates for one sample (Rollover Budget Forcing)
guided-search   ``N = (C // 2) // P`` guided proposals, ``P = 6 G + (S - G) + 1`` each
                (``G`` steps with ``t >= t_min`` guided: forward 1 + backward 2 NFE and
                3 verifier calls each), then ``(C - N P) // (K M (F + 1))`` refine rounds
                on the best ``K = 2`` with ``M = 2`` branches each, re-noised ``F = S // 2``
                steps (``search.guided_cost``; options ``scale``, ``t_min``, ``keep``,
                ``branch``, ``refine_forward``, ``solver``)
noise-opt       ``(C - (S + 1)) // (3 (S + 1))`` Adam steps on one starting noise (deterministic
                ``euler``, no checkpointing: a step costs ``S`` forward + ``2 S`` backward NFE
                and 3 verifier calls), then one plain sample (``noise_opt.optimize_noise``)
==============  ==========================================================

Gradient-based methods count a backward pass through the model as 2 NFE and a
differentiable verifier call with its backward pass as 3 verifier calls.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import Registry
from . import search
from .search import guided_cost, guided_steps, paths_cost
from .flows import rollover_budget_forcing
from .smc import smc
from .tree import DiffusionTree, tree_result

@dataclass(frozen=True)
class Job:
    """What every budgeted method is sized from: the model, the reward, the budget ``C``
    (per-sample NFE + verifier calls), the sample shape, ``S`` sampler steps, the seed, the
    reward's temperature ``lam`` and how many samples to return."""

    den: object
    reward: object
    budget: int
    shape: tuple
    steps: int
    seed: int
    lam: float
    n_samples: int

    @property
    def per_run(self) -> int:
        """One sampler run and one verifier call: ``S + 1``."""
        return self.steps + 1


#: method name -> ``size_and_run(job, options)``; the table in the module docstring
SIZED = Registry("scaling method")


def run(method: str, den, reward, budget: int, shape, steps: int = 20, seed: int = 0, lam: float = 1.0,
        n_samples: int = 1, **options):
    """Run ``method`` within ``budget``; returns a ``ScalingResult``."""
    size_and_run = SIZED.factory(method)
    job = Job(den, reward, int(budget), shape, int(steps), seed, lam, n_samples)
    if job.budget < job.per_run:
        raise ValueError(f"budget {job.budget} is below one sampler run ({job.per_run} = {job.steps} steps + 1 "
                         "verifier call)")
    return size_and_run(job, options)


@SIZED.register("best-of-n")
def _best_of_n(job: Job, options: dict):
    n = job.budget // job.per_run
    return search.best_of_n(job.den, job.reward, n, job.shape, solver=options.pop("solver", "ddpm"),
                            steps=job.steps, seed=job.seed, keep=min(job.n_samples, n), **options)


@SIZED.register("random-search")
def _random_search(job: Job, options: dict):
    return search.random_search(job.den, job.reward, job.budget // job.per_run, job.shape, steps=job.steps,
                                seed=job.seed, **options)


@SIZED.register("zero-order")
def _zero_order(job: Job, options: dict):
    m = options.pop("n_neighbors", 4)
    return search.zero_order_search(job.den, job.reward, m, (job.budget // job.per_run - 1) // m, job.shape,
                                    steps=job.steps, seed=job.seed, **options)


@SIZED.register("paths")
def _paths(job: Job, options: dict):
    size = {"forward": options.pop("forward", 1), "backward": options.pop("backward", 3),
            "keep": options.pop("keep", None), "refine": options.pop("refine", 0),
            "refine_forward": options.pop("refine_forward", 3)}
    branch, start = options.pop("branch", 4), options.pop("start", max(1, job.steps // 4))
    n_int = job.steps  # default grids have `steps` intervals

    def cost(n, m):
        return paths_cost(n, m, n_int, start, **size)
    while branch > 1 and cost(1, branch) > job.budget:
        branch -= 1
    if cost(1, branch) > job.budget:
        raise ValueError(f"budget {job.budget} is below one path search with {job.steps} steps")
    n = 1
    while cost(n + 1, branch) <= job.budget:
        n += 1
    return search.path_search(job.den, job.reward, n, branch, job.shape, steps=job.steps, start=start,
                              seed=job.seed, **size, **options)


@SIZED.register("smc")
def _smc(job: Job, options: dict):
    n = max(job.budget // (2 * job.steps), 1)
    return smc(job.den, job.reward, n, job.shape, lam=job.lam, solver=options.pop("solver", "ddpm"),
               steps=job.steps, seed=job.seed, **options)


def _tree(job: Job, options: dict, method: str):
    stride = options.pop("stride", max(1, job.steps // 5))
    batch = options.pop("batch", 8)
    tree = DiffusionTree(job.den, job.reward, job.shape, lam=job.lam, steps=job.steps, stride=stride,
                         greedy=method == "dts*", seed=job.seed, **options)
    # rollouts from deep nodes are cheaper than a full run: grow until the budget is spent
    while True:
        room = (job.budget - tree.nfe - tree.verifier_calls) // job.per_run  # full rollouts that surely fit
        if room < 1:
            break
        tree.grow(min(batch, room), batch=batch)
    return tree_result(tree, method, job.n_samples)


SIZED.register("dts", lambda job, options: _tree(job, options, "dts"))
SIZED.register("dts*", lambda job, options: _tree(job, options, "dts*"))


@SIZED.register("rbf")
def _rbf(job: Job, options: dict):
    # each candidate costs one NFE and one verifier call
    return rollover_budget_forcing(job.den, job.reward, job.budget // 2, job.shape, steps=job.steps,
                                   seed=job.seed, **options)


@SIZED.register("guided-search")
def _guided_search(job: Job, options: dict):
    """``guided_search`` sized to the budget: half of it on guided proposals, the rest on
    refine rounds (see the table above)."""
    den, reward, budget, shape, steps, seed = job.den, job.reward, job.budget, job.shape, job.steps, job.seed
    from .. import solvers as solver_registry
    from .common import grid
    solver = solver_registry.get(options.pop("solver", "ddim"))
    if solver.evals_per_step != 1:
        raise ValueError(f"guided-search sizes its budget for one-evaluation solvers; {solver.name!r} "
                         f"makes {solver.evals_per_step} per step")
    t_min, branch, keep = float(options.pop("t_min", 0.4)), int(options.pop("branch", 2)), int(options.pop("keep", 2))
    ts = grid(den.process, steps, options.pop("ts", None))
    n_int = ts.numel() - 1
    fwd = int(options.pop("refine_forward", max(1, n_int // 2)))
    g = guided_steps(ts, t_min)
    per_sample = guided_cost(1, n_int, g)
    if budget < per_sample:
        raise ValueError(f"budget {budget} is below one guided sample ({per_sample} with {g} guided steps)")
    n = max(1, (budget // 2) // per_sample)
    keep = min(keep, n)
    rounds = (budget - guided_cost(n, n_int, g)) // guided_cost(0, n_int, g, 1, branch, fwd, keep)
    return search.guided_search(den, reward, n, shape, refine=rounds, branch=branch, keep=keep, refine_forward=fwd,
                                t_min=t_min, solver=solver, ts=ts, seed=seed, **options)


@SIZED.register("noise-opt")
def _noise_opt(job: Job, options: dict):
    """``optimize_noise`` on one starting noise sized to the budget (see the table above)."""
    den, reward, budget, shape, steps, seed = job.den, job.reward, job.budget, job.shape, job.steps, job.seed
    from .. import solvers as solver_registry
    from ..rng import SampleRNG
    from ..loop import initial_noise
    from .common import grid, sample_shape
    from .noise_opt import optimize_noise
    solver = solver_registry.get(options.pop("solver", "euler"))
    if solver.evals_per_step != 1:
        raise ValueError(f"noise-opt sizes its budget for one-evaluation solvers; {solver.name!r} "
                         f"makes {solver.evals_per_step} per step")
    per_run = steps + 1
    ts = grid(den.process, steps, options.pop("ts", None))
    x_T = initial_noise(den, (1,) + sample_shape(shape), ts, SampleRNG.from_seed(seed, batch=1),
                        dtype=options.pop("dtype", torch.float32))
    return optimize_noise(den, reward, x_T, solver=solver, steps=steps, ts=ts, iterations=(budget - per_run) // (3 * per_run),
                          use_checkpoint=False, **options)


#: the method names in the docstring table's order
METHODS = ("best-of-n", "random-search", "zero-order", "paths", "smc", "dts", "dts*", "rbf", "guided-search",
           "noise-opt")
