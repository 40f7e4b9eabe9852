"""Two-sided stochastic interpolants with a non-Gaussian base (issue 19, item 9c).

Albergo, Boffi & Vanden-Eijnden 2023, "Stochastic Interpolants". On seeded random problems
(``rho0``, ``rho1``: the priors of ``toys.random_problem(seed)`` and ``(seed + 100)`` in 3
dimensions, 2-6 anisotropic components each; the base is never Gaussian), ``n`` samples of
``rho0`` are carried to ``t = 1`` with the exact drift of ``MixtureInterpolant`` (linear path,
``gamma^2 = a t (1 - t)``): the probability-flow ODE by Heun at several step counts and by
SciPy's DOP853 (rtol 1e-8), and the SDE ``dX = [b + eps s] dt + sqrt(2 eps) dW`` by
Euler-Maruyama. Each endpoint is scored against ``rho1`` (``toys.random_problem.score``:
sliced Wasserstein, component masses, mean, covariance) and divided by the floor (the
largest of 8 pairs of two exact sample sets of size ``n``, ``floors``). Then a learned
drift: an MLP trained on the drift objective (``fit_drift``) on the demo's 2-D problem.

    python bench/structured_interpolant2.py           # 8 seeds, n = 1000
    python bench/structured_interpolant2.py --quick   # 3 seeds

Writes ``bench/results/structured_interpolant2.{json,md}``.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diffinfer.stochastic_interpolant import MixtureInterpolant, TwoSidedInterpolant, fit_drift, transport  # noqa: E402
from diffinfer.toys.random_problem import floors, random_problem, score  # noqa: E402
from diffinfer.toys.reference import pf_ode_solution  # noqa: E402
from bench.results_io import write_results  # noqa: E402

METRICS = ("sw", "mass", "mean", "cov")
#: (label, a, how): ODE by Heun with k steps, DOP853, or SDE (eps, steps)
METHODS = (
    ("ODE Heun 25 steps, a=1", 1.0, ("heun", 25)),
    ("ODE Heun 100 steps, a=1", 1.0, ("heun", 100)),
    ("ODE DOP853, a=1", 1.0, ("dop853",)),
    ("ODE Heun 100 steps, a=0 (no latent)", 0.0, ("heun", 100)),
    ("SDE EM eps=0.5, 100 steps, a=1", 1.0, ("sde", 0.5, 100)),
    ("SDE EM eps=2, 400 steps, a=1", 1.0, ("sde", 2.0, 400)),
)


def _run_one(oracle, x, how, seed):
    if how[0] == "heun":
        return transport(oracle, x, steps=how[1])
    if how[0] == "dop853":
        return pf_ode_solution(oracle, x, 0.0, 1.0, rtol=1e-8, atol=1e-8)
    return transport(oracle, x, steps=how[2], eps=how[1], seed=seed)


def run(seeds: list[int], n: int) -> dict:
    rows = {label: [] for label, _, _ in METHODS}
    for seed in seeds:
        rho0, rho1 = random_problem(seed, dim=3).prior, random_problem(seed + 100, dim=3).prior
        floor = floors(rho1, n)
        x = rho0.sample(n, seed=seed + 11)
        for label, a, how in METHODS:
            oracle = MixtureInterpolant(rho0, rho1, TwoSidedInterpolant("linear", a=a))
            got = score(_run_one(oracle, x, how, seed), rho1, seed=7)
            rows[label].append({"seed": seed, **{m: got[m] / floor[m] for m in METRICS}})
    summary = []
    for label, per_seed in rows.items():
        entry = {"method": label}
        for m in METRICS:
            v = [r[m] for r in per_seed]
            worst = max(per_seed, key=lambda r: r[m])
            entry[m] = {"mean": round(sum(v) / len(v), 2), "worst": round(worst[m], 2), "worst_seed": worst["seed"]}
        entry["within_2x"] = sum(all(r[m] <= 2.0 for m in METRICS) for r in per_seed)
        summary.append(entry)
    return {"seeds": seeds, "n": n, "dim": 3, "summary": summary, "per_seed": rows}


def learned(n: int = 2000, steps: int = 3000) -> dict:
    """The demo's problem (8-mode ring -> the 2-D prior of ``random_problem(0)``), a = 1: an MLP
    drift (hidden 64, depth 2) trained with ``fit_drift`` on 50000-sample pools, against the exact
    drift; endpoints (Heun 100 steps; SDE eps = 0.5, 200 steps) over the floor."""
    from diffinfer.nets.mlp import MLPDenoiser
    from diffinfer.toys import ring2d
    rho0, rho1 = ring2d(8, radius=2.0, std=0.15), random_problem(0, dim=2).prior
    it = TwoSidedInterpolant("linear", a=1.0)
    oracle = MixtureInterpolant(rho0, rho1, it)
    torch.manual_seed(0)
    drift, result = fit_drift(MLPDenoiser(2, hidden=64, depth=2), it, rho0.sample(50_000, seed=1),
                              rho1.sample(50_000, seed=2), steps=steps)
    floor = floors(rho1, n)
    x = rho0.sample(n, seed=5)
    rows = []
    for label, field in (("exact drift", oracle), ("learned drift (MLP)", drift)):
        for how, kw in (("ODE Heun 100", {"steps": 100}), ("SDE EM eps=0.5, 200", {"steps": 200, "eps": 0.5})):
            if "eps" in kw and field is drift:  # the learned model has no score: SDE only with the exact one
                continue
            out = transport(field, x, score=oracle if "eps" in kw else None, seed=0, **kw)
            got = score(out, rho1, seed=7)
            rows.append({"method": f"{label}, {how}", **{m: round(got[m] / floor[m], 2) for m in METRICS}})
    return {"n": n, "steps": steps, "final_loss": round(sum(result.losses[-100:]) / 100, 3), "rows": rows}


def markdown(res: dict) -> str:
    lines = ["# Two-sided stochastic interpolants: rho0 -> rho1 with the exact drift",
             "",
             f"{len(res['seeds'])} seeded random pairs of 3-D Gaussian mixtures (seeds {res['seeds']}), "
             f"n = {res['n']} samples; each distance divided by its two-exact-sets floor "
             f"(largest of 8 pairs of exact sets of size n). `python bench/structured_interpolant2.py`",
             "",
             "| method | SW / floor mean / worst | mass / floor mean / worst | mean / floor mean / worst "
             "| cov / floor mean / worst | seeds within 2x floor (all four) |",
             "|---|---|---|---|---|---|"]
    for e in res["summary"]:
        cells = [f"{e[m]['mean']:.2f} / {e[m]['worst']:.2f} (seed {e[m]['worst_seed']})" for m in METRICS]
        lines.append(f"| {e['method']} | " + " | ".join(cells) + f" | {e['within_2x']} / {len(res['seeds'])} |")
    if res.get("learned"):
        ln = res["learned"]
        lines += ["", f"Learned drift: the demo's problem (8-mode ring -> 2-D random mixture, a = 1), an MLP "
                  f"(hidden 64, depth 2) trained {ln['steps']} steps with `fit_drift` (final loss {ln['final_loss']}); "
                  f"n = {ln['n']}, distances over the floor:", "",
                  "| drift, integrator | SW / floor | mass / floor | mean / floor | cov / floor |", "|---|---|---|---|---|"]
        for r in ln["rows"]:
            lines.append(f"| {r['method']} | " + " | ".join(f"{r[m]:.2f}" for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    res = run(list(range(3 if args.quick else 8)), 1000)
    res["learned"] = learned(steps=300 if args.quick else 3000)
    res["seconds"] = round(time.time() - t0, 1)
    write_results("structured_interpolant2", res, markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
