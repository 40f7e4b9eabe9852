"""Inverse-problem benchmark: distance to exact posteriors, digits restoration, sunspot forecasts (issue 5).

1. Mixtures (exact): the ring of 8 Gaussians observed through ``y = x_1 + 0.1 n``, and the
   two-prior separation ``y = x + h + 0.1 n``. Each method's samples are compared with
   exact posterior samples (sliced Wasserstein, total variation of mode weights) against
   NFE. The floor is the distance between two exact sample sets; the prior's distance is
   the ceiling.
2. Digits (bundled ``digits`` model, if present): inpainting (centred 4x4 hole), 2x
   super-resolution and deblurring (Gaussian, sigma 1 pixel) at measurement noise 0.05
   (images in [-1, 1]); PSNR against the truth and ``fd_digits`` of the restorations
   against the real digits, for DPS, RED-Diff and projection, with ``A^+ y`` as a baseline.
   Method settings are the CLI's (``zoo.tasks.restore_digits``: DPS scale per task).
3. Guidance on digits (bundled ``digits`` and ``digits-classifier``, if present): class
   accuracy and ``fd_digits`` of classifier guidance (unconditional model + noise-conditional
   classifier) and classifier-free guidance, per scale.
4. Sunspots (bundled ``sunspots`` model, if present): CRPS of 24-year forecasts from the 8
   years before, at several origins in the last decades, for TSDiff self-guidance (MSE and
   quantile) and the seasonal-naive forecast (11-year cycle).

    python bench/inverse.py            # default (about 5 minutes on 2 CPU cores)
    python bench/inverse.py --quick    # under a minute

Writes ``bench/results/inverse.{json,md}`` and ``bench/results/inverse_*.png``.
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

import diffinfer as di  # noqa: E402
from diffinfer import inverse, metrics  # noqa: E402
from diffinfer.denoiser import GuidanceDivergenceError  # noqa: E402
from diffinfer.guidance import GradientGuidance  # noqa: E402
from diffinfer.toys import GaussianMixture, ring2d  # noqa: E402
from diffinfer.toys.posterior import (NoisyLogLikelihood, linear_gaussian_posterior, mode_weight_error,  # noqa: E402
                                      product_mixture, sum_posterior)

F64 = torch.float64
NOISE = 0.1  # mixtures' measurement noise
DIGIT_NOISE = 0.05
TASKS = ("inpaint", "superres", "deblur")


# --- 0. the oracle suite: each approximate method's distance to the exact posterior ----
SUITE_METRICS = ("sw", "mass", "mean", "cov")


def _suite_methods(den, op, y, n):
    from diffinfer.guidance import GuidanceDivergenceError
    methods = {
        "DPS norm (default), ddpm 100": lambda: di.sample(inverse.DPS(den, op, y), shape=(n, den_dim(op)),
                                                          solver="ddpm", steps=100, seed=0, dtype=F64).x,
        "DPS gaussian (capped, default), ddpm 100": lambda: di.sample(
            inverse.DPS(den, op, y, likelihood="gaussian"), shape=(n, den_dim(op)), solver="ddpm", steps=100, seed=0,
            dtype=F64).x,
        "DPS gaussian raw (normalized=False), ddpm 100": lambda: di.sample(
            inverse.DPS(den, op, y, normalized=False), shape=(n, den_dim(op)), solver="ddpm", steps=100, seed=0,
            dtype=F64).x,
        "DPS norm, dpmpp-2m 10": lambda: di.sample(inverse.DPS(den, op, y), shape=(n, den_dim(op)), solver="dpmpp-2m",
                                                   steps=10, seed=0, dtype=F64).x,
        "RED-Diff, 300 iterations": lambda: inverse.red_diff(den, op, y, steps=300, seed=0),
        "projection, ddpm 50": lambda: inverse.projection_sample(den, op, y, (n, den_dim(op)), steps=50, seed=0).x,
    }
    for name, fn in methods.items():
        try:
            yield name, fn()
        except GuidanceDivergenceError:
            yield name, None


def den_dim(op) -> int:
    return int(op.A.shape[1])


def run_suite(quick: bool) -> dict:
    """On ``toys.random_problem`` seeds (6 quick, 20 full), every method's ``score`` against
    the exact posterior divided by the floor (two exact sample sets of the same size): 1 is
    as close as exact sampling can show; the prior's ratio is printed as the ceiling. A run
    that raises ``GuidanceDivergenceError`` counts as diverged."""
    from diffinfer.toys import random_problem as rp
    seeds = range(6) if quick else range(20)
    n = 200 if quick else 500
    per = {}
    for seed in seeds:
        pr = rp.random_problem(seed)
        den = pr.prior.denoiser(di.VP())
        op = inverse.Linear(pr.A, noise_std=pr.noise_std)
        fl = rp.floors(pr.target, n, repeats=4)
        y = pr.y.expand(n, -1)
        results = list(_suite_methods(den, op, y, n)) + [("prior (ceiling)", pr.prior.sample(n, seed=7))]
        for name, x in results:
            row = per.setdefault(name, {"ratios": [], "diverged": 0})
            if x is None:
                row["diverged"] += 1
                continue
            sc = rp.score(x, pr.target)
            row["ratios"].append({k: sc[k] / max(fl[k], 1e-12) for k in SUITE_METRICS})
        print(f"  suite seed {seed} done", flush=True)
    table = {}
    for name, row in per.items():
        r = row["ratios"]
        table[name] = {"seeds": len(r) + row["diverged"], "diverged": row["diverged"],
                       **{f"{k}_mean": round(sum(v[k] for v in r) / max(len(r), 1), 2) for k in SUITE_METRICS},
                       **{f"{k}_worst": round(max((v[k] for v in r), default=float("nan")), 2) for k in SUITE_METRICS}}
    return {"seeds": list(seeds), "n": n, "table": table}


def suite_markdown(suite: dict) -> list[str]:
    lines = [f"Oracle suite (`toys.random_problem` seeds {suite['seeds'][0]}-{suite['seeds'][-1]}, n={suite['n']}): "
             "distance to the exact posterior / floor (two exact sets of the same size); mean over seeds and worst seed.",
             "", "| method | diverged | SW mean | SW worst | mass mean | mass worst | mean-err mean | mean-err worst "
             "| cov mean | cov worst |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in suite["table"].items():
        lines.append(f"| {name} | {r['diverged']}/{r['seeds']} | {r['sw_mean']} | {r['sw_worst']} | {r['mass_mean']} | "
                     f"{r['mass_worst']} | {r['mean_mean']} | {r['mean_worst']} | {r['cov_mean']} | {r['cov_worst']} |")
    return lines


# --- 1. mixtures ----------------------------------------------------------------------
def ring_problem():
    prior = ring2d()
    A, y = torch.tensor([[1.0, 0.0]], dtype=F64), torch.tensor([0.6], dtype=F64)
    return prior, A, y, linear_gaussian_posterior(prior, A, y, NOISE)


def two_prior_problem():
    px = ring2d(n_modes=3, radius=1.0, std=0.15)
    ph = GaussianMixture(torch.tensor([[0.0, 0.0], [0.6, -0.6]], dtype=F64),
                         torch.stack([0.04 * torch.eye(2, dtype=F64), 0.02 * torch.eye(2, dtype=F64)]),
                         torch.tensor([0.7, 0.3], dtype=F64))
    y = torch.tensor([1.1, -0.4], dtype=F64)
    return px, ph, y, sum_posterior(px, ph, y, NOISE)


def _score(x, post, ref):
    return {"sw": round(metrics.sliced_wasserstein(x, ref), 4), "mode_tv": round(mode_weight_error(x, post), 4)}


def run_mixtures(quick: bool) -> dict:
    n = 300 if quick else 1000
    p = di.VP()
    prior, A, y, post = ring_problem()
    den = prior.denoiser(p)
    ref = post.sample(n, seed=1)
    out = {"n": n, "floor_sw": round(metrics.sliced_wasserstein(post.sample(n, seed=2), ref), 4),
           "prior": _score(prior.sample(n, seed=3), post, ref), "methods": {}}
    op = inverse.Linear(A, noise_std=NOISE)
    yb = y.expand(n, 1)
    mask = inverse.Inpaint(torch.tensor([1.0, 0.0], dtype=F64), NOISE)
    y_pad = torch.cat([yb, torch.zeros(n, 1, dtype=F64)], 1)
    exact = GradientGuidance(den, NoisyLogLikelihood(prior, post, p), through_denoiser=False)
    grids = {
        "exact score (heun)": [3, 5, 10] if quick else [3, 5, 10, 20, 40],
        "DPS (ddpm)": [10, 50] if quick else [10, 25, 50, 100, 200],
        "RED-Diff": [50, 200] if quick else [50, 100, 250, 500, 1000],
        "projection (ddpm)": [10, 50] if quick else [10, 25, 50, 100, 200],
        "projection + RePaint r=4 j=5 (ddpm)": [10] if quick else [10, 25, 50],
    }
    for name, steps_list in grids.items():
        rows = []
        for steps in steps_list:
            den.reset_nfe()
            t0 = time.perf_counter()
            try:
                if name.startswith("exact"):
                    x = di.sample(exact, shape=(n, 2), solver="heun", steps=steps, seed=0, dtype=F64).x
                elif name.startswith("DPS"):
                    x = di.sample(inverse.DPS(den, op, yb, normalized=False), shape=(n, 2), solver="ddpm", steps=steps,
                                  seed=0, dtype=F64).x  # the Gaussian (Bayes-rule) form
                elif name == "RED-Diff":
                    x = inverse.red_diff(den, op, yb, steps=steps, seed=0)
                elif "RePaint" in name:
                    x = inverse.projection_sample(den, mask, y_pad, (n, 2), steps=steps, seed=0, resample=4, jump=5).x
                else:
                    x = inverse.projection_sample(den, mask, y_pad, (n, 2), steps=steps, seed=0).x
            except GuidanceDivergenceError as e:  # too few steps for this step size: reported, not hidden
                rows.append({"steps": steps, "nfe": den.nfe, "wall_s": round(time.perf_counter() - t0, 2),
                             "sw": float("nan"), "mode_tv": float("nan"), "diverged": str(e)})
                continue
            rows.append({"steps": steps, "nfe": den.nfe, "wall_s": round(time.perf_counter() - t0, 2),
                         **_score(x, post, ref)})
        out["methods"][name] = rows
        print(f"  ring / {name}: " + ", ".join(f"NFE {r['nfe']}: SW {r['sw']}" for r in rows), flush=True)

    px, ph, y2, post2 = two_prior_problem()
    ref2 = post2.sample(n, seed=4)
    two = {"floor_sw": round(metrics.sliced_wasserstein(post2.sample(n, seed=5), ref2), 4),
           "prior": _score(product_mixture(px, ph).sample(n, seed=6), post2, ref2), "methods": {}}
    ll = NoisyLogLikelihood(product_mixture(px, ph), post2, p)
    dx, dh = px.denoiser(p), ph.denoiser(p)
    for name, solver, steps_list, kw in [("exact score (heun)", "heun", [5, 20] if quick else [5, 10, 20, 40],
                                          {"log_likelihood": ll}),
                                         ("DPS (ddpm)", "ddpm", [25, 100] if quick else [25, 50, 100, 200], {})]:
        rows = []
        for steps in steps_list:
            dx.reset_nfe(), dh.reset_nfe()
            xs, hs = inverse.two_prior_posterior(dx, dh, y2.expand(n, 2), NOISE, solver=solver, steps=steps, seed=0, **kw)
            rows.append({"steps": steps, "nfe": dx.nfe + dh.nfe, **_score(torch.cat([xs, hs], 1), post2, ref2)})
        two["methods"][name] = rows
        print(f"  two priors / {name}: " + ", ".join(f"NFE {r['nfe']}: SW {r['sw']}" for r in rows), flush=True)
    return {"ring": out, "two_priors": two}


# --- 2. digits --------------------------------------------------------------------------
def _load(name: str):
    try:
        from diffinfer import zoo
        return zoo.load(name), None
    except Exception as e:  # noqa: BLE001  (a missing or unreadable checkpoint skips the section)
        return None, f"{type(e).__name__}: {e}"


def _fd_digits(x: torch.Tensor) -> float | None:
    """``quality.fd_digits`` of restorations, or ``None`` without the digits classifier."""
    from diffinfer.zoo import quality
    try:
        return round(quality.fd_digits(x), 2)
    except Exception as e:  # noqa: BLE001
        print(f"  fd_digits unavailable: {type(e).__name__}: {e}")
        return None


def run_digits(quick: bool, out_dir: pathlib.Path) -> dict:
    base, err = _load("digits")
    if base is None:
        return {"skipped": f"bundled digits model unavailable ({err})"}
    from diffinfer.metrics import psnr
    from diffinfer.viz import digit_grid, save_image
    from diffinfer.zoo.data import digits
    from diffinfer.zoo.tasks import measurement_view, restore_digits
    n = 8 if quick else 64
    x_all, _ = digits()
    idx = torch.randperm(x_all.shape[0], generator=torch.Generator().manual_seed(0))[:n]
    x = x_all[idx]
    res = {"n": n, "noise_std": DIGIT_NOISE, "tasks": {}}
    for task in TASKS:
        op = inverse.task_operator(task, (1, 8, 8), DIGIT_NOISE)
        y = op.measure(x, seed=1)
        view = measurement_view(op, y).clamp(-1, 1)
        rows = {"A^+ y": {"psnr": round(float(psnr(view, x).mean()), 2)}}
        shown = [x[:8], view[:8]]
        for method in inverse.METHODS:
            t0 = time.perf_counter()
            steps = {"dps": 50, "reddiff": 200, "projection": 50}[method] if quick else None
            out, _, _, nfe = restore_digits("digits", task, method, x, DIGIT_NOISE, steps, 0)
            rows[method] = {"psnr": round(float(psnr(out, x).mean()), 2), "nfe": nfe,
                            "fd_digits": _fd_digits(out) if n >= 32 else None,
                            "wall_s": round(time.perf_counter() - t0, 1)}
            shown.append(out[:8])
            print(f"  digits / {task} / {method}: {rows[method]}", flush=True)
        res["tasks"][task] = rows
        save_image(str(out_dir / f"inverse_digits_{task}.png"), digit_grid(torch.cat(shown).float(), nrow=8))
    return res


def run_digit_guidance(quick: bool) -> dict:
    """Class-conditional digits from the unconditional model: classifier guidance with the
    bundled noise-conditional classifier, against classifier-free guidance of the
    conditional model; clean-classifier accuracy and ``fd_digits`` per scale."""
    base, err = _load("digits")
    clf, err2 = _load("digits-classifier")
    if base is None or clf is None:
        return {"skipped": f"bundled digits models unavailable ({err or err2})"}
    from diffinfer.zoo import quality
    from diffinfer.guidance import ClassifierFreeGuidance, ClassifierGuidance
    n = 20 if quick else 100
    labels = torch.arange(n) % 10
    null = int(base.config.get("null_label", 10))
    rows = []
    for kind, scales in (("classifier guidance", [0.0, 1.0, 3.0]), ("classifier-free guidance", [1.0, 2.0])):
        for scale in scales:
            if kind.startswith("classifier guidance"):
                den = ClassifierGuidance(base, clf.noisy, labels, scale=scale)  # base: no label, the null class
            else:
                den = ClassifierFreeGuidance(base.bind(label=labels), scale, null)
            res = di.sample(den, shape=(n, *base.shape), solver="ddpm", steps=50, seed=0)
            x = res.x.clamp(-1, 1)
            rows.append({"method": kind, "scale": scale, "nfe": res.nfe,
                         "accuracy": round(quality.classifier_accuracy(x, labels), 3),
                         "fd_digits": _fd_digits(x) if n >= 32 else None})
            print(f"  digits guidance: {rows[-1]}", flush=True)
    return {"n": n, "rows": rows}


# --- 3. sunspots ------------------------------------------------------------------------
def run_sunspots(quick: bool, out_dir: pathlib.Path) -> dict:
    den, err = _load("sunspots")
    if den is None:
        return {"skipped": f"bundled sunspots model unavailable ({err})"}
    from diffinfer.viz import forecast_plot
    from diffinfer.zoo.data import sunspots_series
    from diffinfer.zoo.tasks import forecast_scores, forecast_sunspots
    last = sunspots_series(torch.float32).numel()
    window, horizon = int(den.shape[-1]), 24
    n = 16 if quick else 64
    origins = [last] if quick else [last - k for k in (0, 6, 12, 18, 24, 30)]
    methods = {"TSDiff (mse)": "mse", "TSDiff (quantile)": "quantile"}
    scores = {m: [] for m in list(methods) + ["seasonal naive"]}
    for end in origins:
        for name, loss in methods.items():
            fc, series, _, truth = forecast_sunspots(den, horizon, "tsdiff", n, 4.0, loss, 50, 0, end=end)
            crps, naive_mae, naive = forecast_scores(fc, series, truth)
            scores[name].append(crps)
            if end == last and loss == "mse":
                forecast_plot(str(out_dir / "inverse_sunspots.png"), series, truth, fc, naive,
                              f"sunspots | TSDiff (mse) | last {horizon} years")
        scores["seasonal naive"].append(naive_mae)
    res = {"horizon": horizon, "history": window - horizon, "n_samples": n,
           "origins_years": [1700 + e - horizon for e in origins],
           "crps": {k: round(sum(v) / len(v), 2) for k, v in scores.items()},
           "note": "the bundled sunspots model is trained on windows ending before 1955; every forecast tail lies in the held-out 1955-2008"}
    print(f"  sunspots CRPS: {res['crps']}", flush=True)
    return res


# --- report -----------------------------------------------------------------------------
def write_markdown(res: dict, path: pathlib.Path) -> None:
    lines = ["# Inverse problems (bench/inverse.py)", "", *suite_markdown(res["suite"]), "",
             f"quick={res['quick']}, wall time {res['total_wall_s']} s. Sliced Wasserstein (SW) and mode-weight "
             "total variation (TV) to exact posterior samples; lower is better.", ""]
    for key, title in (("ring", "Ring of 8 Gaussians, y = x_1 + 0.1 n"), ("two_priors", "Two priors, y = x + h + 0.1 n")):
        r = res["mixtures"][key]
        lines += [f"## {title}", "", f"floor (two exact sets) SW {r['floor_sw']}; prior SW {r['prior']['sw']}, "
                                     f"TV {r['prior']['mode_tv']}", "", "| method | NFE | SW | mode TV |", "|---|---|---|---|"]
        for name, rows in r["methods"].items():
            lines += [f"| {name} | {row['nfe']} | {row['sw']} | {row['mode_tv']} |" for row in rows]
        lines.append("")
    d = res["digits"]
    lines += ["## Digits restoration", ""]
    if "skipped" in d:
        lines += [f"skipped: {d['skipped']}", ""]
    else:
        lines += [f"n={d['n']} digits, measurement noise {d['noise_std']}; PSNR in dB (images in [-1, 1]).", "",
                  "| task | method | NFE | PSNR | fd_digits |", "|---|---|---|---|---|"]
        for task, rows in d["tasks"].items():
            for m, row in rows.items():
                fd = row.get("fd_digits")
                lines.append(f"| {task} | {m} | {row.get('nfe', 0)} | {row['psnr']} | {'' if fd is None else fd} |")
        lines += ["", "Examples (rows: truth, A^+ y, DPS, RED-Diff, projection): "
                      + ", ".join(f"`inverse_digits_{t}.png`" for t in TASKS), ""]
    g = res["digit_guidance"]
    lines += ["## Class-conditional digits by guidance", ""]
    if "skipped" in g:
        lines += [f"skipped: {g['skipped']}", ""]
    else:
        lines += [f"n={g['n']} (labels 0-9 cycled), DDPM 50 steps; accuracy of the clean digits classifier. "
                  "NFE counts denoiser calls: classifier guidance adds a classifier forward and backward per "
                  "call; classifier-free guidance makes one batched call of 2B rows.", "",
                  "| method | scale | NFE | accuracy | fd_digits |", "|---|---|---|---|---|"]
        for r in g["rows"]:
            fd = r["fd_digits"]
            lines.append(f"| {r['method']} | {r['scale']} | {r['nfe']} | {r['accuracy']} | {'' if fd is None else fd} |")
        lines.append("")
    s = res["sunspots"]
    lines += ["## Sunspot forecasts", ""]
    if "skipped" in s:
        lines += [f"skipped: {s['skipped']}", ""]
    else:
        lines += [f"horizon {s['horizon']} years from {s['history']}, {s['n_samples']} samples, forecast starts "
                  f"{s['origins_years']}; CRPS in sunspot numbers (a point forecast's CRPS is its MAE). "
                  f"Note: {s['note']}.", "", "| method | CRPS |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in s["crps"].items()]
        lines += ["", "Example: `inverse_sunspots.png`", ""]
    path.write_text("\n".join(lines))


def plot_mixtures(res: dict, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("ring", "two_priors")):
        r = res["mixtures"][key]
        for name, rows in r["methods"].items():
            ax.plot([row["nfe"] for row in rows], [row["sw"] for row in rows], marker="o", label=name)
        ax.axhline(r["floor_sw"], color="black", ls=":", label="exact vs exact")
        ax.axhline(r["prior"]["sw"], color="gray", ls="--", label="prior")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("NFE")
        ax.set_ylabel("SW to exact posterior")
        ax.set_title(key)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent / "results"))
    ap.add_argument("--suite-only", action="store_true",
                    help="only the oracle-suite table (writes inverse_suite.{json,md} under --out)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.suite_only:
        suite = run_suite(args.quick)
        (out / "inverse_suite.json").write_text(json.dumps(suite, indent=1))
        (out / "inverse_suite.md").write_text("\n".join(suite_markdown(suite)) + "\n")
        print("\n".join(suite_markdown(suite)))
        return 0
    res = {"quick": args.quick, "suite": run_suite(args.quick), "mixtures": run_mixtures(args.quick)}
    res["mixtures_wall_s"] = round(time.perf_counter() - t0, 1)
    res["digits"] = run_digits(args.quick, out)
    res["digit_guidance"] = run_digit_guidance(args.quick)
    res["sunspots"] = run_sunspots(args.quick, out)
    res["total_wall_s"] = round(time.perf_counter() - t0, 1)
    (out / "inverse.json").write_text(json.dumps(res, indent=1))
    write_markdown(res, out / "inverse.md")
    plot_mixtures(res, out / "inverse_mixtures.png")
    print(f"wrote {out / 'inverse.json'}, inverse.md, inverse_*.png in {res['total_wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
