"""Bridges (``diffinfer.bridges``): the bridge sampler against the exact law of Gaussian pairs,
and Brownian-bridge translation of digits into their mirror images.

1. Gaussian pairs (``toys.gaussian_pair``, d = 3, seeds 0-4): the exact output law of
   ``BridgeSampler(eta)`` with the exact denoiser (``bridge_sampler_law``: affine steps, no
   sampling noise) against ``p(x0 | x1)``: the mean is exact at every step count; the table
   gives the covariance error relative to ``max |Cov[x0 | x1]|`` (mean over seeds / worst)
   on the uniform and the quadratic (default) grid, and the same for ``EnergyGuidance`` with a
   linear energy against the tilted target (mean error relative to ``|P r|``). A Monte Carlo
   check per seed: ``translate`` (per-row streams) against the exact law, in floors (the
   largest error of an exact sample set of the same size over 8 sets).
2. Digits (``zoo.bridge_digits``): a bridge trained on the classifier's training split,
   scored on the 180 held-out digits by the clean classifier's accuracy on the outputs
   mirrored back and by the RMSE to the true mirror.

Writes bench/results/structured_bridges.{json,md}.

    python bench/structured_bridges.py           # about 3 minutes on one thread
    python bench/structured_bridges.py --quick   # seconds
"""
from __future__ import annotations

import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from diffinfer import grids  # noqa: E402
from diffinfer.bridges import BridgeDenoiser, BrownianBridge, translate  # noqa: E402
from diffinfer.toys.gaussian_mixture import GaussianMixture  # noqa: E402
from diffinfer.toys.gaussian_pair import GaussianPair, bridge_sampler_law  # noqa: E402
from bench.results_io import write_results  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
F64 = torch.float64
GRIDS = {"uniform": grids.uniform, "quadratic": grids.quadratic}


def _problem(seed: int):
    pair = GaussianPair.random(3, seed)
    _, x1 = pair.sample(1, seed=seed + 100)
    return pair, x1[0]


def gaussian_table(seeds, step_counts) -> list[dict]:
    br = BrownianBridge(1.0)
    rows = []
    for method in ("eta=1", "eta=0", "energy"):
        for gname, builder in GRIDS.items():
            for steps in step_counts:
                errs, mean_errs = [], []
                for seed in seeds:
                    pair, x1 = _problem(seed)
                    ts = builder(br, steps)
                    r = torch.randn(3, dtype=F64, generator=torch.Generator().manual_seed(seed + 7)) \
                        if method == "energy" else None
                    m, S = bridge_sampler_law(pair, x1, 1.0, ts, 0.0 if method == "eta=0" else 1.0, r=r)
                    mu, P = pair.conditional(x1[None]) if r is None else pair.tilted(x1[None], r)
                    errs.append(float((S - P).abs().max() / P.abs().max()))
                    scale = 1.0 if r is None else float((P @ r).norm())
                    mean_errs.append(float((m - mu[0]).norm()) / scale)
                rows.append({"method": method, "grid": gname, "steps": steps,
                             "cov_rel_mean": sum(errs) / len(errs), "cov_rel_worst": max(errs),
                             "mean_err_mean": sum(mean_errs) / len(mean_errs), "mean_err_worst": max(mean_errs)})
    return rows


def _moments(x, mean, cov) -> dict:
    return {"mean": float((x.mean(0) - mean).norm()), "cov": float((torch.cov(x.T) - cov).abs().max())}


def monte_carlo(seeds, n: int, steps: int) -> list[dict]:
    """``translate`` with per-row streams against the exact law, in floors."""
    rows = []
    for seed in seeds:
        for eta in (1.0, 0.0):
            pair, x1 = _problem(seed)
            br = BrownianBridge(1.0)
            den = BridgeDenoiser(pair.denoiser_net(br), br, "x0")
            ts = grids.quadratic(br, steps)
            t0 = time.perf_counter()
            x = translate(den, x1.expand(n, -1).contiguous(), ts=ts, eta=eta, seed=seed).x
            sec = time.perf_counter() - t0
            m, S = bridge_sampler_law(pair, x1, 1.0, ts, eta)
            law = GaussianMixture(m[None], S[None])
            floor = {"mean": 0.0, "cov": 0.0}
            for k in range(8):
                for key, v in _moments(law.sample(n, seed=10_000 + k), m, S).items():
                    floor[key] = max(floor[key], v)
            got = _moments(x, m, S)
            rows.append({"seed": seed, "eta": eta, "n": n, "steps": steps, "seconds": sec,
                         "mean_in_floors": got["mean"] / floor["mean"], "cov_in_floors": got["cov"] / floor["cov"]})
    return rows


def digits_table(train_steps: int, configs, seed: int = 0) -> list[dict]:
    from diffinfer.zoo import bridge_digits as bd
    rows = []
    for pairing in bd.PAIRINGS:
        trained = bd.train(pairing, steps=train_steps, seed=seed)
        x0, x1, labels = bd.heldout(pairing)
        base = {"pairing": pairing, "train_steps": train_steps, "train_seconds": trained.seconds,
                "final_loss": trained.final_loss}
        rows.append({**base, "method": "source as is", **bd.scores(x1, x0, labels), "nfe": 0})
        rows.append({**base, "method": "mirror of the source (by hand)", **bd.scores(bd.mirror(x1), x0, labels),
                     "nfe": 0})
        for eta, steps in configs:
            t0 = time.perf_counter()
            r = bd.evaluate(trained, steps=steps, eta=eta, seed=seed)
            rows.append({**base, "method": f"bridge eta={eta:g}, {steps} steps", "accuracy": r["accuracy"],
                         "rmse": r["rmse"], "nfe": r["nfe"], "seconds": time.perf_counter() - t0})
        rows.append({**base, "method": "true mirror", **bd.scores(x0, x0, labels), "nfe": 0})
    return rows


def markdown(res: dict) -> str:
    meta = res["meta"]
    lines = [f"Bridges: Gaussian pairs (d = 3, seeds {meta['seeds']}; exact output law of the sampler with the exact "
             f"denoiser) and digits -> mirror translation; {meta['seconds']:.0f} s"
             + (" (--quick)" if meta["quick"] else ""), "",
             "Covariance error of the sampler's exact output law, relative to max |Cov[x0 | x1]| (mean over seeds / "
             "worst); mean error (relative to 1, or to |P r| for energy guidance):", "",
             "| sampler | grid | steps | cov error | mean error |", "|---|---|---|---|---|"]
    for r in res["gaussian"]:
        lines.append(f"| {r['method']} | {r['grid']} | {r['steps']} | {r['cov_rel_mean']:.4f} / {r['cov_rel_worst']:.4f} "
                     f"| {r['mean_err_mean']:.2e} / {r['mean_err_worst']:.2e} |")
    mc = res["monte_carlo"]
    worst_m = max(r["mean_in_floors"] for r in mc)
    worst_c = max(r["cov_in_floors"] for r in mc)
    lines += ["", f"Monte Carlo (translate, per-row streams, n = {mc[0]['n']}, {mc[0]['steps']} steps, "
              f"{len(mc)} runs) against the exact law: worst mean error {worst_m:.2f} floors, "
              f"worst covariance error {worst_c:.2f} floors.", "",
              f"Digits -> mirror (180 held-out digits; bridge trained {res['digits'][0]['train_steps']} steps, "
              "seed 0; accuracy of the clean digits classifier on the outputs mirrored back):", "",
              "| pairing | method | accuracy | RMSE | NFE |", "|---|---|---|---|---|"]
    for r in res["digits"]:
        lines.append(f"| {r['pairing']} | {r['method']} | {r['accuracy']:.3f} | {r['rmse']:.3f} | {r['nfe']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seeds = (0, 1) if quick else (0, 1, 2, 3, 4)
    res = {
        "gaussian": gaussian_table(seeds, (10, 50) if quick else (10, 50, 200, 800)),
        "monte_carlo": monte_carlo(seeds, 300 if quick else 1000, 20),
        "digits": digits_table(100 if quick else 1500, ((1.0, 20),) if quick else
                               ((1.0, 5), (1.0, 20), (0.0, 5), (0.0, 20))),
    }
    res["meta"] = {"seeds": list(seeds), "quick": quick, "seconds": time.perf_counter() - t0}
    write_results("structured_bridges", res, markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
