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
==============  ==========================================================
"""
from __future__ import annotations

from . import search
from .search import paths_cost
from .flows import rollover_budget_forcing
from .smc import smc
from .tree import DiffusionTree, tree_result

METHODS = ("best-of-n", "random-search", "zero-order", "paths", "smc", "dts", "dts*", "rbf")


def run(method: str, den, reward, budget: int, shape, steps: int = 20, seed: int = 0, lam: float = 1.0,
        n_samples: int = 1, **options):
    """Run ``method`` within ``budget``; returns a ``ScalingResult``."""
    if method not in METHODS:
        raise ValueError(f"unknown scaling method {method!r}; valid: {', '.join(METHODS)}")
    budget, steps = int(budget), int(steps)
    per_run = steps + 1
    if budget < per_run:
        raise ValueError(f"budget {budget} is below one sampler run ({per_run} = {steps} steps + 1 verifier call)")
    if method == "best-of-n":
        return search.best_of_n(den, reward, budget // per_run, shape, solver=options.pop("solver", "ddpm"),
                                steps=steps, seed=seed, keep=min(n_samples, budget // per_run), **options)
    if method == "random-search":
        return search.random_search(den, reward, budget // per_run, shape, steps=steps, seed=seed, **options)
    if method == "zero-order":
        m = options.pop("n_neighbors", 4)
        return search.zero_order_search(den, reward, m, (budget // per_run - 1) // m, shape, steps=steps,
                                        seed=seed, **options)
    if method == "paths":
        size = {"forward": options.pop("forward", 1), "backward": options.pop("backward", 3),
                "keep": options.pop("keep", None), "refine": options.pop("refine", 0),
                "refine_forward": options.pop("refine_forward", 3)}
        branch, start = options.pop("branch", 4), options.pop("start", max(1, steps // 4))
        n_int = steps  # default grids have `steps` intervals

        def cost(n, m):
            return paths_cost(n, m, n_int, start, **size)
        while branch > 1 and cost(1, branch) > budget:
            branch -= 1
        if cost(1, branch) > budget:
            raise ValueError(f"budget {budget} is below one path search with {steps} steps")
        n = 1
        while cost(n + 1, branch) <= budget:
            n += 1
        return search.path_search(den, reward, n, branch, shape, steps=steps, start=start, seed=seed,
                                  **size, **options)
    if method == "smc":
        n = max(budget // (2 * steps), 1)
        return smc(den, reward, n, shape, lam=lam, solver=options.pop("solver", "ddpm"), steps=steps,
                   seed=seed, **options)
    if method in ("dts", "dts*"):
        stride = options.pop("stride", max(1, steps // 5))
        batch = options.pop("batch", 8)
        tree = DiffusionTree(den, reward, shape, lam=lam, steps=steps, stride=stride, greedy=method == "dts*",
                             seed=seed, **options)
        # rollouts from deep nodes are cheaper than a full run: grow until the budget is spent
        while True:
            room = (budget - tree.nfe - tree.verifier_calls) // per_run  # full rollouts that surely fit
            if room < 1:
                break
            tree.grow(min(batch, room), batch=batch)
        return tree_result(tree, method, n_samples)
    # each candidate costs one NFE and one verifier call
    return rollover_budget_forcing(den, reward, budget // 2, shape, steps=steps, seed=seed, **options)
