"""Graph states (issue 19, item 2; GDSS, Jo et al. 2022): the exact oracle and the trained demo.

1. **Exact**: the jointly Gaussian (X [5, 2], A [5, 5]) oracle (``toys.graph_gaussian``, seeds
   0-4), one packed state with symmetric noise on A. For every deterministic solver, the max
   error of the packed solve against the closed-form probability-flow endpoint (``t`` from 1
   to 0.01, log-SNR grid, no final denoise) at 10 / 20 / 40 steps: mean and worst seed.
2. **Trained**: ``diffinfer structured graphs`` on community and grid graphs (12 nodes):
   train the tiny joint denoiser, sample graphs, and the degree / clustering MMD^2 (Gaussian
   TV kernel) against held-out graphs, beside Erdos-Renyi graphs of the training density and
   the floor (fresh graphs of the training distribution).

    python bench/structured_graphs.py            # a few minutes on one core
    python bench/structured_graphs.py --quick    # under a minute (fewer steps, fewer graphs)

Writes ``bench/results/structured_graphs.{json,md}`` (``structured_graphs_quick.*``).
"""
from __future__ import annotations

import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from diffinfer import VP, grids, sample, solvers  # noqa: E402
from diffinfer.atomic import write_text  # noqa: E402
from diffinfer.demos import graphs as demo  # noqa: E402
from diffinfer.rng import make_rng  # noqa: E402
from diffinfer.structured_state import Dense, Layout, Symmetric, joint_denoiser  # noqa: E402
from diffinfer.toys.graph_gaussian import GraphGaussian  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
T_MIN = 1e-2


def exact_errors(seeds, steps) -> list[dict]:
    """Per deterministic solver and step count: mean and worst max-error over ``seeds``."""
    process = VP("linear")
    layout = Layout(nodes=Dense(5, 2), adj=Symmetric(5))
    rows = []
    names = [n for n in solvers.names() if not solvers.get(n).stochastic and n != "adaptive"]
    for name in names:
        for n in steps:
            errs = []
            for seed in seeds:
                gg = GraphGaussian.random(5, 2, seed=seed)
                den = joint_denoiser(gg.net(process, "eps"), layout, process, "eps")
                x = make_rng(seed, 8, "cpu").randn((layout.size,), dtype=torch.float64) * float(process.sigma(1.0))
                X_ref, A_ref = gg.ode_endpoint(*layout.unpack(x), process, 1.0, T_MIN)
                ts = grids.logsnr(process, n, t_max=1.0, t_min=T_MIN, final_zero=False)
                X, A = layout.unpack(sample(den, x, solver=name, ts=ts).x)
                errs.append(max(float((X - X_ref).abs().max()), float((A - A_ref).abs().max())))
            rows.append({"solver": name, "steps": n, "mean": sum(errs) / len(errs), "worst": max(errs),
                         "worst_seed": seeds[errs.index(max(errs))]})
    return rows


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    torch.set_num_threads(1)
    start = time.perf_counter()
    seeds = [0, 1] if quick else [0, 1, 2, 3, 4]
    exact = exact_errors(seeds, [10, 20] if quick else [10, 20, 40])
    cfg = dict(train_steps=150, samples=48) if quick else dict(train_steps=2000, samples=256)
    trained = []
    for data in ("community",) if quick else ("community", "grid"):
        r = demo.evaluate(data, cfg["train_steps"], cfg["samples"], "dpmpp-2m-sde", 40, seed=0)
        r.pop("adjacency")
        trained.append(r)
        print(f"{data}: train {r['train_seconds']:.1f} s\n{demo.table(r)}", flush=True)
    report = {"quick": quick, "seconds": time.perf_counter() - start, "exact_seeds": seeds, "exact": exact,
              "trained": trained}
    name = "structured_graphs_quick" if quick else "structured_graphs"
    RESULTS.mkdir(exist_ok=True)
    write_text(RESULTS / f"{name}.json", json.dumps(report, indent=2) + "\n")
    write_text(RESULTS / f"{name}.md", markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    seeds = report["exact_seeds"]
    lines = ["# Graph states (GDSS-style packed (nodes, symmetric adjacency))", "",
             f"Exact oracle: jointly Gaussian (X [5, 2], A [5, 5]), seeds {seeds[0]}-{seeds[-1]}; max error of the "
             "packed solve against the closed-form probability-flow endpoint (t 1 -> 0.01, log-SNR grid).", "",
             "| solver | steps | mean error | worst error (seed) |", "|---|---|---|---|"]
    for r in report["exact"]:
        lines.append(f"| {r['solver']} | {r['steps']} | {r['mean']:.2e} | {r['worst']:.2e} ({r['worst_seed']}) |")
    for r in report["trained"]:
        lines += ["", f"Trained: {r['data']} graphs ({r['nodes']} nodes), {r['train_steps']} training steps on "
                  f"{r['train_graphs']} graphs ({r['train_seconds']:.0f} s), {r['samples']} samples with "
                  f"{r['solver']} x {r['steps']}; edge density train {r['density']['train']:.3f}, model "
                  f"{r['density']['model']:.3f}. MMD^2 against {r['samples']} held-out graphs (lower is better):", "",
                  "| graphs | degree MMD^2 | clustering MMD^2 |", "|---|---|---|"]
        for name, m in r["mmd"].items():
            lines.append(f"| {name} | {m['degree']:.4f} | {m['clustering']:.4f} |")
    lines += ["", f"Total {report['seconds']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
