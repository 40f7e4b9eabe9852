"""Two-sided stochastic interpolants with a non-Gaussian base (issue 19, item 9c).

Albergo, Boffi & Vanden-Eijnden 2023, "Stochastic Interpolants". On seeded random problems
(``rho0``, ``rho1``: the priors of ``toys.random_problem(seed)`` and ``(seed + 100)`` in 3
dimensions, 2-6 anisotropic components each; the base is never Gaussian), ``n`` samples of
``rho0`` are carried to ``t = 1`` with the exact drift of ``MixtureInterpolant`` (linear path,
``gamma^2 = a t (1 - t)``): the probability-flow ODE by Heun at several step counts and by
SciPy's DOP853 (rtol 1e-8), and the SDE ``dX = [b + eps s] dt + sqrt(2 eps) dW`` by
Euler-Maruyama. Each endpoint is scored against ``rho1`` (``toys.random_problem.score``:
sliced Wasserstein, component masses, mean, covariance) and divided by the floor (the
largest of 8 pairs of two exact sample sets of size ``n``, ``floors``).

    python bench/structured_interpolant2.py           # 8 seeds, n = 1000
    python bench/structured_interpolant2.py --quick   # 3 seeds

Writes ``bench/results/structured_interpolant2.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from diffinfer.atomic import write_text  # noqa: E402
from diffinfer.stochastic_interpolant import MixtureInterpolant, TwoSidedInterpolant, transport  # noqa: E402
from diffinfer.toys.random_problem import floors, random_problem, score  # noqa: E402
from diffinfer.toys.reference import pf_ode_solution  # noqa: E402

METRICS = ("sw", "mass", "mean", "cov")
#: (label, a, how): ODE by Heun with k steps, DOP853, or SDE (eps, steps)
METHODS = (
    ("ODE Heun 25 steps, a=1", 1.0, ("heun", 25)),
    ("ODE Heun 100 steps, a=1", 1.0, ("heun", 100)),
    ("ODE Heun 400 steps, a=1", 1.0, ("heun", 400)),
    ("ODE DOP853, a=1", 1.0, ("dop853",)),
    ("ODE Heun 100 steps, a=0 (no latent)", 0.0, ("heun", 100)),
    ("SDE EM eps=0.5, 100 steps, a=1", 1.0, ("sde", 0.5, 100)),
    ("SDE EM eps=0.5, 400 steps, a=1", 1.0, ("sde", 0.5, 400)),
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
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    res = run(list(range(3 if args.quick else 8)), 1000)
    res["seconds"] = round(time.time() - t0, 1)
    out = ROOT / "bench" / "results"
    write_text(out / "structured_interpolant2.json", json.dumps(res, indent=1))
    text = markdown(res)
    write_text(out / "structured_interpolant2.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
