"""Low-rank learning: the sample-size phase transition (issue 19, item 8).

Wang et al. 2024, "Diffusion Models Learn Low-Dimensional Distributions via Subspace
Clustering". Data: noiseless MoLRG (``toys.molrg(noise_var=0)``), K = 2 subspaces of rank d in
D = 32, VP process.

1. The paper's low-rank denoiser (``lowrank.fit_lowrank``: 400 Adam steps with
   ``diffinfer.train``, best of 4 random initialisations by training loss) on
   N = ratio * K * d points, ratio from 0.5 to 10, d in {2, 4, 8}, 3 seeds each: the
   subspace error (0: learned), success (error < 0.1), and the RMS gap to the exact denoiser
   on 256 fresh points (t in 0.05-0.3) beside the gap of the memorising (empirical) optimum
   on the same points. The transition N* (smallest N from which 2/3 of
   the seeds succeed at every larger N) is reported per d with N* / d.
2. A small network (``lowrank.fit_network``: MLP, hidden 32, 600 steps) on D = 8, K = 2,
   d in {1, 2}: the fraction of its 256 probability-flow samples (DDIM, 50 steps) that are
   copies of a training point (within 0.1 sqrt(d)), against the same fraction for exact samples
   (the floor), and their median distance off the true subspaces (relative).

    python bench/structured_lowrank.py           # about 7 minutes on a loaded 2-core machine
    python bench/structured_lowrank.py --quick   # d in {2, 4}, one seed, no network part

Writes ``bench/results/structured_lowrank.{json,md}``.
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

from diffinfer import VP, sample  # noqa: E402
from diffinfer.lowrank import (copy_fraction, denoising_gap, empirical_posterior_mean, fit_lowrank,  # noqa: E402
                               fit_network, molrg_posterior_mean, off_subspace, subspace_error)
from diffinfer.toys import molrg  # noqa: E402
from bench.results_io import write_results  # noqa: E402

RATIOS = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
TS = (0.05, 0.1, 0.2, 0.3)
SUCCESS = 0.1
PROC = VP()


def _problem(D, d, K, seed):
    toy = molrg(dim=D, rank=d, n_components=K, noise_var=0.0, seed=seed)
    return toy, torch.linalg.eigh(toy.covs)[1][..., -d:]


def low_rank_sweep(ranks, seeds, D=32, K=2) -> list[dict]:
    rows = []
    for d in ranks:
        for r in RATIOS:
            n = max(1, round(r * K * d))
            cells = []
            for seed in seeds:
                toy, U = _problem(D, d, K, 1000 * d + seed)
                pts = toy.sample(n, seed=seed + 1)
                fresh = toy.sample(256, seed=seed + 99)
                model = fit_lowrank(pts, d, K, PROC, steps=400, lr=0.2, seed=seed, t_max=0.15, restarts=4)
                exact = lambda x, t: molrg_posterior_mean(x, U, PROC, t)  # noqa: E731
                emp = lambda x, t: empirical_posterior_mean(x, pts, PROC, t)  # noqa: E731
                cells.append((subspace_error(model.bases.detach(), U), denoising_gap(model, exact, fresh, PROC, TS),
                              denoising_gap(emp, exact, fresh, PROC, TS)))
            k = len(cells)
            rows.append({"d": d, "N": n, "ratio": r, "success": sum(c[0] < SUCCESS for c in cells), "seeds": k,
                         "subspace_error": round(sum(c[0] for c in cells) / k, 3),
                         "worst_subspace_error": round(max(c[0] for c in cells), 3),
                         "model_gap": round(sum(c[1] for c in cells) / k, 4),
                         "empirical_gap": round(sum(c[2] for c in cells) / k, 4)})
            print(rows[-1], flush=True)
    return rows


def transitions(rows) -> list[dict]:
    """Per rank: N* = the smallest N of the grid from which at least 2/3 of the seeds learn the
    subspaces at every larger N too (training can still land in a local minimum of the
    clustering at any N: the success counts are in the table)."""
    out = []
    for d in sorted({r["d"] for r in rows}):
        grid = sorted((r for r in rows if r["d"] == d), key=lambda r: r["N"])
        n_star = None
        for i, r in enumerate(grid):
            if all(3 * q["success"] >= 2 * q["seeds"] for q in grid[i:]):
                n_star = r["N"]
                break
        out.append({"d": d, "N_star": n_star, "N_star_over_d": None if n_star is None else round(n_star / d, 2)})
    return out


def network_sweep(ranks=(1, 2), D=8, K=2, seed=0) -> list[dict]:
    rows = []
    for d in ranks:
        toy, U = _problem(D, d, K, 500 + d)
        radius = 0.1 * d ** 0.5
        for r in (0.5, 1.0, 2.0, 5.0, 10.0):
            n = max(1, round(r * K * d))
            pts = toy.sample(n, seed=seed + 1)
            den = fit_network(pts, PROC, seed=seed)
            with torch.no_grad():
                out = sample(den, shape=(256, D), solver="ddim", steps=50, seed=seed).x.double()
            exact_samples = toy.sample(256, seed=seed + 7)
            rows.append({"d": d, "N": n, "ratio": r, "copies": round(copy_fraction(out, pts, radius), 3),
                         "copies_exact_floor": round(copy_fraction(exact_samples, pts, radius), 3),
                         "off_subspace_median": round(float(off_subspace(out, U).median()), 3)})
            print(rows[-1], flush=True)
    return rows


def markdown(res: dict) -> str:
    lines = ["# Low-rank learning: the sample-size phase transition", "",
             f"Noiseless MoLRG, K = 2 subspaces of rank d in D = 32; the paper's low-rank denoiser trained 400 steps "
             f"(best of 4 random initialisations by training loss); "
             f"seeds {res['seeds']}; success: subspace error < {SUCCESS}. Gaps: RMS difference to the exact denoiser "
             f"over 256 fresh points at t in {TS}. `python bench/structured_lowrank.py`", "",
             "| d | N | N / (K d) | success | subspace error mean / worst | low-rank model gap | empirical (memorising) gap |",
             "|---|---|---|---|---|---|---|"]
    for r in res["low_rank"]:
        lines.append(f"| {r['d']} | {r['N']} | {r['ratio']:g} | {r['success']}/{r['seeds']} | "
                     f"{r['subspace_error']:.3f} / {r['worst_subspace_error']:.3f} | {r['model_gap']:.4f} | "
                     f"{r['empirical_gap']:.4f} |")
    lines += ["", "Transition N* (smallest N from which at least 2/3 of the seeds learn the subspaces at every "
              "larger N of the grid):", "",
              "| d | N* | N* / d |", "|---|---|---|"]
    for t in res["transitions"]:
        lines.append(f"| {t['d']} | {t['N_star']} | {t['N_star_over_d']} |")
    if res.get("network"):
        lines += ["", "A small network (MLP, hidden 32, 600 steps) on D = 8, K = 2: fraction of 256 DDIM samples "
                  "within 0.1 sqrt(d) of a training point (copies) against exact samples (floor), and the "
                  "median relative distance of the samples off the true subspaces.", "",
                  "| d | N | N / (K d) | copies | exact samples' copies (floor) | off-subspace median |",
                  "|---|---|---|---|---|---|"]
        for r in res["network"]:
            lines.append(f"| {r['d']} | {r['N']} | {r['ratio']:g} | {r['copies']:.3f} | {r['copies_exact_floor']:.3f} | "
                         f"{r['off_subspace_median']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    ranks, seeds = ((2, 4), [0]) if args.quick else ((2, 4, 8), [0, 1, 2])
    rows = low_rank_sweep(ranks, seeds)
    res = {"seeds": seeds, "low_rank": rows, "transitions": transitions(rows),
           "network": [] if args.quick else network_sweep()}
    res["seconds"] = round(time.time() - t0, 1)
    write_results("structured_lowrank", res, markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
