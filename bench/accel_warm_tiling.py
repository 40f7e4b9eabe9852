"""Warm / mid-path starts and any-size tiling (``diffinfer.accel.warm``, ``diffinfer.accel.tiling``)
-> bench/results/accel_warm_tiling.{json,md} and PNGs.

    python bench/accel_warm_tiling.py            # everything (a few minutes on one CPU core)
    python bench/accel_warm_tiling.py --only warm|tiling|sunspots|digits

- warm: on the random mixture priors (``toys.random_problem``, seeds 0-7), an estimate
  ``x0 + s e`` (exact ``x0``, ``s = 0.3``) started at the rule's ``t*`` (``c = 1, 2``) and
  at a start below the error level (the control), dpmpp-2m on the 20-step grid: sliced
  Wasserstein and component masses in floors of two exact sets (N = 1000), NFE; and the
  posterior given one estimate (``c = 1`` vs ``c = 3``, dpmpp-2m-sde, 50 steps).
- tiling: the MA(2) oracle of tests/test_accel_tiling.py (canvas 48, window 16): the exact
  output law of each deterministic solver (40 steps) with the full-canvas model and with
  tiles, the largest variance / lag-k covariance error against the floor of two exact sets
  of 4000 samples; and the windowed posterior mean's error by distance to the tile edge.
- sunspots: 128 years from the 32-year model: tiles (stride 16), chunked warm starts
  (stride 16, ``t*`` from the measured error of the shifted estimate), and four independent
  windows side by side (the baseline with seams); autocorrelations against the real series.
- digits: a 16x16 mosaic from the 8x8 model (tiles 8x8, stride 4) and fixed tiles.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import diffinfer as di  # noqa: E402
from diffinfer.accel import tiling, warm  # noqa: E402
from diffinfer.atomic import write_text  # noqa: E402
from diffinfer.toys.gaussian_mixture import GaussianMixture  # noqa: E402
from diffinfer.toys.posterior import linear_gaussian_posterior  # noqa: E402
from diffinfer.toys.random_problem import floors, random_problem, score  # noqa: E402

RESULTS = ROOT / "bench" / "results"
F64 = torch.float64


def _ratios(x, target, fl):
    sc = score(x, target, seed=3)
    return {k: round(sc[k] / fl[k], 2) for k in ("sw", "mass")}


# --- warm starts on the mixtures ----------------------------------------------------------
def bench_warm(seeds=range(8), n=1000, s=0.3) -> dict:
    rows = []
    for seed in seeds:
        prior = random_problem(seed).prior
        den = prior.denoiser(di.VP())
        fl = floors(prior, n)
        x0 = prior.sample(n, seed=100 + seed)
        est = x0 + s * torch.randn(n, prior.dim, dtype=F64, generator=torch.Generator().manual_seed(7 + seed))
        runs = {"cold (20 steps)": di.sample(den, shape=(n, prior.dim), dtype=F64, solver="dpmpp-2m", steps=20, seed=1),
                "warm c=1": warm.warm_start(den, est, s, c=1.0, solver="dpmpp-2m", steps=20, seed=1),
                "warm c=2": warm.warm_start(den, est, s, c=2.0, solver="dpmpp-2m", steps=20, seed=1),
                "control: t* at 0.3 s": di.sample(den, init=est, t_start=warm.t_start_for(den.process, 0.3 * s),
                                                  solver="dpmpp-2m", steps=20, seed=1)}
        row = {"seed": seed, "dim": prior.dim}
        for name, r in runs.items():
            row[name] = {**_ratios(r.x, prior, fl), "nfe": r.nfe, "t_start": round(float(r.ts[0]), 4)}
        # the posterior given one estimate
        xhat = prior.sample(1, seed=50 + seed) + 0.5 * torch.randn(1, prior.dim, dtype=F64,
                                                                 generator=torch.Generator().manual_seed(seed))
        post = linear_gaussian_posterior(prior, torch.eye(prior.dim, dtype=F64), xhat[0], 0.5)
        pfl = floors(post, n)
        init = xhat.expand(n, -1).contiguous()
        for c in (1.0, 3.0):
            r = warm.warm_start(den, init, 0.5, c=c, solver="dpmpp-2m-sde", steps=50, seed=1)
            row[f"posterior c={c:g}"] = {**_ratios(r.x, post, pfl), "nfe": r.nfe}
        rows.append(row)
        print(f"warm seed {seed}: " + "; ".join(f"{k} {v}" for k, v in row.items() if isinstance(v, dict)), flush=True)
    return {"rows": rows, "n": n, "s": s}


def warm_md(res: dict) -> str:
    names = [k for k in res["rows"][0] if isinstance(res["rows"][0][k], dict)]
    out = [f"Estimate x0 + s e (s = {res['s']}, exact x0), N = {res['n']}, VP, dpmpp-2m on the 20-step grid "
           "(posterior rows: one estimate with s = 0.5, dpmpp-2m-sde on 50 steps, against the closed-form "
           "posterior). Values in floors of two exact sets (mean / worst over seeds 0-7).", "",
           "| start | sw mean | sw worst | mass mean | mass worst | NFE mean |", "|---|---|---|---|---|---|"]
    for name in names:
        sw = [r[name]["sw"] for r in res["rows"]]
        mass = [r[name]["mass"] for r in res["rows"]]
        nfe = [r[name]["nfe"] for r in res["rows"]]
        out.append(f"| {name} | {statistics.mean(sw):.3g} | {max(sw):.3g} | {statistics.mean(mass):.3g} | "
                   f"{max(mass):.3g} | {statistics.mean(nfe):.1f} |")
    return "\n".join(out)


# --- tiling on the MA(2) oracle -------------------------------------------------------------
THETA = (1.0, 0.8, 0.4)


def ma_cov(n: int) -> torch.Tensor:
    th = torch.tensor(THETA, dtype=F64)
    q = len(THETA) - 1
    g = torch.zeros(n, dtype=F64)
    for k in range(q + 1):
        g[k] = (th[: q + 1 - k] * th[k:]).sum()
    idx = torch.arange(n)
    return g[(idx[:, None] - idx[None, :]).abs()]


def bench_tiling(L=48, W=16, steps=40, n_floor=4000) -> dict:
    proc = di.VP()
    gamma = ma_cov(L)
    max_lag = len(THETA)

    def model(m):
        return GaussianMixture(torch.zeros(1, m, dtype=F64), ma_cov(m)[None]).denoiser(proc)

    def lag_error(C):
        d = C - gamma
        return max(float(d.diagonal(k).abs().max()) for k in range(max_lag + 1))

    chol = torch.linalg.cholesky(gamma)
    g = torch.Generator().manual_seed(10_000)
    floor = 0.0
    for _ in range(8):
        x = torch.randn(n_floor, L, dtype=F64, generator=g) @ chol.T
        floor = max(floor, lag_error(x.T @ x / n_floor))

    def law(den, solver):
        ts = di.grids.resolve(proc, steps, None)
        M = di.sample(den, x_T=torch.eye(L, dtype=F64), solver=solver, ts=ts).x.T
        return float(proc.sigma(ts[0])) ** 2 * M @ M.T

    configs = {"hann, stride 8, random": dict(stride=8, weights="hann", offsets="random"),
               "hann, stride 8, fixed": dict(stride=8, weights="hann", offsets="fixed"),
               "uniform, stride 8, random": dict(stride=8, weights="uniform", offsets="random"),
               "FSTD: uniform, stride 16, random": dict(stride=16, weights="uniform", offsets="random"),
               "fixed, no overlap": dict(stride=16, weights="uniform", offsets="fixed")}
    rows = []
    for solver in [s for s in di.solvers.names() if s != "adaptive" and not di.solvers.get(s).stochastic]:
        full = law(model(L), solver)
        row = {"solver": solver, "full canvas": round(lag_error(full) / floor, 3)}
        for name, cfg in configs.items():
            row[name] = round(lag_error(law(tiling.Tiled(model(W), W, **cfg), solver)) / floor, 3)
        rows.append(row)
        print("tiling", row, flush=True)
    # the windowed posterior mean's RMS error by distance to the edge, at several t
    edge = {}
    for t in (0.2, 0.5, 0.8):
        a, s = float(proc.alpha(torch.tensor(t, dtype=F64))), float(proc.sigma(torch.tensor(t, dtype=F64)))
        Sig = a * a * gamma + s * s * torch.eye(L, dtype=F64)
        full = a * gamma @ torch.linalg.inv(Sig)
        lo = 16
        Gw = gamma[lo:lo + W, lo:lo + W]
        win = torch.zeros(W, L, dtype=F64)
        win[:, lo:lo + W] = a * Gw @ torch.linalg.inv(a * a * Gw + s * s * torch.eye(W, dtype=F64))
        D = win - full[lo:lo + W]
        err = torch.einsum("jm,mn,jn->j", D, Sig, D).sqrt()
        edge[f"t={t}"] = [float(f"{float(err[j]):.2e}") for j in range(W // 2)]
    return {"rows": rows, "floor": floor, "n_floor": n_floor, "L": L, "W": W, "steps": steps,
            "window_error_by_distance": edge}


def tiling_md(res: dict) -> str:
    cols = [k for k in res["rows"][0] if k != "solver"]
    out = [f"MA(2) canvas of {res['L']} from the exact window model of {res['W']}, VP, {res['steps']} steps; the exact "
           "output law (by linearity); largest error of a per-position variance or lag-1..3 covariance, in floors "
           f"(two exact sets of {res['n_floor']} samples: {res['floor']:.4f}).", "",
           "| solver | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in res["rows"]:
        out.append(f"| {r['solver']} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    out += ["", "RMS error of the windowed posterior mean (window at positions 16-31 of the canvas) at distance "
            "0..7 from its edge:", ""]
    for t, e in res["window_error_by_distance"].items():
        out.append(f"- {t}: " + ", ".join(f"{v:.1e}" for v in e))
    return "\n".join(out)


# --- sunspots over 128 years ------------------------------------------------------------------
def _series_stats(x: torch.Tensor, seams=()) -> dict:
    """Mean, std, pooled autocorrelations (lags 1, 5, 11) of series ``[n, T]`` (sunspot numbers),
    and the RMS first difference at ``seams`` over the RMS first difference elsewhere."""
    x = x.double()
    xc = x - x.mean()
    var = float(xc.square().mean())
    out = {"mean": round(float(x.mean()), 2), "std": round(var ** 0.5, 2)}
    for k in (1, 5, 11):
        out[f"acf{k}"] = round(float((xc[:, k:] * xc[:, :-k]).mean()) / var, 3)
    if seams:
        d = (x[:, 1:] - x[:, :-1]).square()  # [n, T - 1]
        at = torch.zeros(d.shape[1], dtype=torch.bool)
        at[list(seams)] = True
        out["seam_jump"] = round(float(d[:, at].mean().sqrt() / d[:, ~at].mean().sqrt()), 3)
    return out


def bench_sunspots(n=64, years=128, steps=50, stride=16) -> dict:
    from diffinfer import zoo
    from diffinfer.viz import _pyplot
    from diffinfer.zoo.data import sunspots_from_unit, sunspots_series, sunspots_windows

    den = zoo.load("sunspots")
    win = int(den.shape[-1])
    seams = [win * k - 1 for k in range(1, years // win)]  # differences x[32k] - x[32k - 1]
    out = {"real (1700-2008)": _series_stats(sunspots_from_unit(sunspots_series(F64))[None])}
    # tiles
    t0, n0 = time.perf_counter(), den.nfe
    tiled = di.sample(tiling.Tiled(den, win, stride=stride), shape=(n, 1, years), solver="dpmpp-2m", steps=steps,
                      seed=0)
    out["tiled (stride 16)"] = {**_series_stats(sunspots_from_unit(tiled.x[:, 0]), seams),
                                "nfe": den.nfe - n0, "seconds": round(time.perf_counter() - t0, 2)}
    # chunked warm starts: t* from the measured error of the shifted estimate on training windows
    w = sunspots_windows(win, split="train").double()
    est, truth = warm.shift_estimate(w[:-stride], stride, 11), w[stride:]
    s = warm.measure_error(est, truth)
    n_chunks = 1 + (years - win) // stride
    chunk_seams = [win + stride * k - 1 for k in range(n_chunks - 1)]
    chunked = {}
    for c in (1.0, 3.0):
        t_star = warm.t_start_for(den.process, s, c)
        t0, n0 = time.perf_counter(), den.nfe
        ch = warm.chunked(den, (n, 1, win), n_chunks, stride, t_star, pad=11, seed=0, solver="dpmpp-2m", steps=steps)
        out[f"chunked warm (stride 16, c={c:g})"] = {
            **_series_stats(sunspots_from_unit(ch.sequence[:, 0]), chunk_seams), "nfe": ch.nfe,
            "seconds": round(time.perf_counter() - t0, 2), "measured_error": round(s, 4), "t_start": round(t_star, 4)}
        chunked[c] = ch
    ch = chunked[1.0]
    # the network is convolutional: it also runs on the whole canvas (outside its training size)
    t0, n0 = time.perf_counter(), den.nfe
    native = di.sample(den, shape=(n, 1, years), solver="dpmpp-2m", steps=steps, seed=0)
    out["the net on the whole canvas"] = {**_series_stats(sunspots_from_unit(native.x[:, 0]), seams),
                                          "nfe": den.nfe - n0, "seconds": round(time.perf_counter() - t0, 2)}
    # the baseline: independent windows side by side
    t0, n0 = time.perf_counter(), den.nfe
    parts = di.sample(den, shape=(n * (years // win), 1, win), solver="dpmpp-2m", steps=steps, seed=0).x
    side = parts.reshape(n, years // win, win).reshape(n, years)
    out["independent windows"] = {**_series_stats(sunspots_from_unit(side), seams),
                                  "nfe": den.nfe - n0, "seconds": round(time.perf_counter() - t0, 2)}
    for name, v in out.items():
        print("sunspots", name, v, flush=True)
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(8, 6), sharex=True)
    for ax, (name, x) in zip(axes, [("tiled", tiled.x[:3, 0]), ("chunked warm", ch.sequence[:3, 0]),
                                     ("independent windows", side[:3])]):
        for row in sunspots_from_unit(x):
            ax.plot(row.numpy(), lw=1)
        for sm in (seams if name != "chunked warm" else chunk_seams):
            ax.axvline(sm + 0.5, color="grey", lw=0.5, ls=":")
        ax.set_title(f"{name}: 128 years from the 32-year model", fontsize=9)
    fig.tight_layout()
    from diffinfer.viz import _savefig
    _savefig(fig, str(RESULTS / "accel_sunspots_128.png"))
    return out


# --- a digits mosaic --------------------------------------------------------------------------
def bench_digits(n=16, size=16, steps=20) -> dict:
    from diffinfer import zoo
    from diffinfer.viz import digit_grid, save_image

    den = zoo.load("digits")  # no label bound: the null class (unconditional)
    out, images = {}, {}
    for name, wrapped in [("tiled (stride 4, hann, random)", tiling.Tiled(den, (8, 8), stride=(4, 4))),
                          ("fixed tiles, no overlap", tiling.Tiled(den, (8, 8), stride=(8, 8), offsets="fixed",
                                                                   weights="uniform"))]:
        t0, n0 = time.perf_counter(), den.nfe
        x = di.sample(wrapped, shape=(n, 1, size, size), solver="dpmpp-2m", steps=steps, seed=0).x.clamp(-1, 1)
        dr = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((0, 1, 3))  # [size - 1] mean |row step|
        dc = (x[..., 1:] - x[..., :-1]).abs().mean((0, 1, 2))
        mid = size // 2 - 1
        rest = torch.cat([dr[torch.arange(size - 1) != mid], dc[torch.arange(size - 1) != mid]]).mean()
        out[name] = {"seam_step_ratio": round(float((dr[mid] + dc[mid]) / 2 / rest), 3), "nfe": den.nfe - n0,
                     "seconds": round(time.perf_counter() - t0, 2)}
        images[name] = x
        print("digits", name, out[name], flush=True)
    save_image(str(RESULTS / "accel_digits_mosaic.png"), digit_grid(images["tiled (stride 4, hann, random)"], 4), 6)
    save_image(str(RESULTS / "accel_digits_fixed_tiles.png"), digit_grid(images["fixed tiles, no overlap"], 4), 6)
    return out


def table(d: dict, keys) -> str:
    out = ["| run | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, v in d.items():
        out.append(f"| {name} | " + " | ".join(str(v.get(k, "")) for k in keys) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("warm", "tiling", "sunspots", "digits"), default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "accel_warm_tiling.json"
    res = json.loads(path.read_text()) if path.exists() else {}
    parts = {"warm": bench_warm, "tiling": bench_tiling, "sunspots": bench_sunspots, "digits": bench_digits}
    for name, fn in parts.items():
        if args.only in (None, name):
            t0 = time.perf_counter()
            res[name] = fn()
            print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    write_text(path, json.dumps(res, indent=1))
    md = ["# Warm starts and tiling (`python bench/accel_warm_tiling.py`)", ""]
    if "warm" in res:
        md += ["## Warm / mid-path starts on the mixture priors", "", warm_md(res["warm"]), ""]
    if "tiling" in res:
        md += ["## Tiling on the MA(2) oracle", "", tiling_md(res["tiling"]), ""]
    if "sunspots" in res:
        md += ["## Sunspots: 128 years from the 32-year model (64 samples, dpmpp-2m, 50 steps)", "",
               table(res["sunspots"],
                     ["mean", "std", "acf1", "acf5", "acf11", "seam_jump", "nfe", "seconds", "t_start"]),
               "", "seam_jump: RMS first difference across the 32-year seams (chunks: the 16-year ones) over the "
               "RMS first difference elsewhere (1 = no seam). Wall times on a shared CPU.", ""]
    if "digits" in res:
        md += ["## Digits: 16x16 mosaics from the 8x8 model (16 samples, dpmpp-2m, 20 steps)", "",
               table(res["digits"], ["seam_step_ratio", "nfe", "seconds"]), "",
               "seam_step_ratio: mean |pixel step| across the middle row / column over the mean elsewhere. "
               "Images: bench/results/accel_digits_mosaic.png, accel_digits_fixed_tiles.png.", ""]
    write_text(RESULTS / "accel_warm_tiling.md", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
