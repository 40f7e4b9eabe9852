"""Per-element times (AR-Diffusion, Wu et al. 2023): figures for ``diffinfer.element_times``.

1. Anchor-field solves on the exact AR(1) oracle (phi 0.8, variance 1, L = 16): the output
   covariance of a deterministic solve, computed exactly by linearity, against the floor of
   two exact sample sets of 4000; the staggered field (delay 1.5 steps per element) beside
   the ordinary solve (delay 0) at the same steps per element.
2. Streams (front element leaves at t = 0, a fresh one enters at t = 1 every step): pooled
   lag-0 / lag-1 covariance errors of 2000 rows x 24 elements against the floor of exact
   sequences of that size (worst of 8), for the AR(1) oracle and the AR(2) fitted to sunspots.
3. Sunspot forecasts, 24 years from the 8 before at the six origins of bench/inverse.py: the
   exact AR(p) models fitted to 1700-1954, rolling (AR-Diffusion) against plain (all years at
   once) and the exact predictive law's CRPS; the bundled TSDiff model (plain, one time per
   row) and the seasonal-naive forecast for reference.

    python bench/structured_artime.py [--quick]
"""
from __future__ import annotations

import json
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import diffinfer as di  # noqa: E402
from diffinfer.atomic import write_text  # noqa: E402
from diffinfer.demos.artime import (HISTORY, HORIZON, ORIGIN_OFFSETS, fit_sunspots_ar, forecast_scores,  # noqa: E402
                                    stream_check)
from diffinfer.element_times import anchor, sample_field  # noqa: E402
from diffinfer.toys.gaussian_sequence import GaussianAR  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"
F64 = torch.float64
AR1 = GaussianAR.ar1(0.8, 0.36, 0.0)
L = 16


def field_law_error(solver: str, steps: int, delay: float, n_floor: int = 4000) -> tuple[float, float]:
    """(largest covariance-entry error of the exact output law, floor of two exact sets of ``n_floor``)."""
    P = di.VP()
    G = AR1.covariance(L)
    field = anchor(di.grids.resolve(P, steps, None), L, delay)
    a, s = P.alpha(field[0]), P.sigma(field[0])
    root = torch.linalg.cholesky(a[:, None] * G * a[None, :] + torch.diag(s * s))
    x = torch.cat([torch.zeros(1, L, dtype=F64), root.T]).reshape(L + 1, 1, L)
    out = sample_field(AR1.denoiser(P), field, x_T=x, solver=solver).x.reshape(L + 1, L)
    d = out[1:] - out[0]
    floor = 0.0
    for r in range(8):
        e = AR1.sample(n_floor, L, seed=500 + r)
        floor = max(floor, float((e.T @ e / n_floor - G).abs().max()))
    return float((d.T @ d - G).abs().max()), floor


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in argv
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res: dict = {"quick": quick}

    rows = []
    for solver in (["dpmpp-2m"] if quick else ["ddim", "dpmpp-2m", "dpmpp-3m", "unipc"]):
        for steps in ([20] if quick else [20, 40, 80]):
            err, floor = field_law_error(solver, steps, 1.5)
            plain, _ = field_law_error(solver, steps, 0.0)
            rows.append({"solver": solver, "steps_per_element": steps, "anchor_error": round(err, 5),
                         "ordinary_error": round(plain, 5), "floor": round(floor, 5)})
            print(f"  field law: {rows[-1]}", flush=True)
    res["field_law"] = rows

    rows = []
    sunspot_ar2 = fit_sunspots_ar(2)
    for label, model in (("AR(1) phi 0.8", AR1), ("sunspots AR(2)", sunspot_ar2)):
        for solver in (["dpmpp-2m"] if quick else ["dpmpp-2m", "dpmpp-3m", "unipc"]):
            for steps in ([20] if quick else [20, 40, 80]):
                c = stream_check(model, di.VP(), 500 if quick else 2000, 24, steps, 1, solver, 0)
                rows.append({"model": label, "solver": solver, "steps_per_element": steps,
                             "lag0_error": round(c["lag0_error"], 5), "lag1_error": round(c["lag1_error"], 5),
                             "floor": round(c["floor"], 5), "rows": c["rows"], "elements": c["count"]})
                print(f"  stream: {rows[-1]}", flush=True)
    res["stream"] = rows

    last = di.zoo.data.sunspots_series().numel()
    offsets = ORIGIN_OFFSETS[:1] if quick else ORIGIN_OFFSETS
    samples, steps = (200, 20) if quick else (1000, 40)
    fc_rows = []
    for order in ([2] if quick else [1, 2]):
        model = fit_sunspots_ar(order)
        for shift in ([1] if quick else [1, 4]):
            acc = {"rolling": [], "plain": [], "exact": [], "naive": []}
            for off in offsets:
                r = forecast_scores(model, di.VP(), last - off, samples, steps, shift, "dpmpp-2m", 0)
                for k in acc:
                    acc[k].append(r[k])
            mean = {k: round(sum(v) / len(v), 2) for k, v in acc.items()}
            fc_rows.append({"model": f"AR({order})", "shift": shift, "nfe_rolling": r["rolling_nfe"],
                            "nfe_plain": r["plain_nfe"], **{f"crps_{k}" if k != "naive" else "mae_naive": v
                                                           for k, v in mean.items()}})
            print(f"  forecast: {fc_rows[-1]}", flush=True)
    tsdiff = None
    if not quick:
        from diffinfer.zoo.tasks import forecast_scores as zoo_scores, forecast_sunspots
        den = di.zoo.load("sunspots")
        scores = []
        for off in offsets:
            fc, series, _, truth = forecast_sunspots(den, HORIZON, "tsdiff", 64, 4.0, "mse", 50, 0, end=last - off)
            scores.append(zoo_scores(fc, series, truth)[0])
        tsdiff = round(sum(scores) / len(scores), 2)
        print(f"  bundled TSDiff (mse) CRPS: {tsdiff}", flush=True)
    res["forecast"] = {"rows": fc_rows, "tsdiff_bundled_crps": tsdiff, "horizon": HORIZON, "history": HISTORY,
                       "samples": samples, "steps_per_element": steps, "solver": "dpmpp-2m",
                       "origins_years": [1700 + last - off - HORIZON for off in offsets]}
    res["total_wall_s"] = round(time.perf_counter() - t0, 1)
    write(res)
    return 0


def write(res: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    write_text(RESULTS / "structured_artime.json", json.dumps(res, indent=1) + "\n")
    f = res["forecast"]
    lines = ["# Per-element times (bench/structured_artime.py)", "",
             f"quick={res['quick']}, wall time {res['total_wall_s']} s, VP (linear) process, one CPU thread.", "",
             "## Anchor-field solves: exact output law", "",
             "AR(1) (phi 0.8, variance 1), L = 16. Largest covariance-entry error of the output law of a "
             "deterministic solve (exact, by linearity) on the anchor field with a delay of 1.5 steps per element, "
             "beside the ordinary solve (all elements at one time) at the same steps per element; the floor is that "
             "of two exact sample sets of 4000 (worst of 8).", "",
             "| solver | steps per element | anchor field | ordinary | floor |", "|---|---|---|---|---|"]
    lines += [f"| {r['solver']} | {r['steps_per_element']} | {r['anchor_error']} | {r['ordinary_error']} | {r['floor']} |"
              for r in res["field_law"]]
    lines += ["", "## Streams: lag-0 / lag-1 covariance against the floor", "",
              "A new element enters at t = 1 every step and the front one leaves at t = 0 (one clean context "
              "element kept). Pooled covariance errors of rows x elements against the floor of exact sequences of "
              "the same size (worst of 8).", "",
              "| model | solver | steps per element | lag-0 error | lag-1 error | floor | rows x elements |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['solver']} | {r['steps_per_element']} | {r['lag0_error']} | {r['lag1_error']} | "
              f"{r['floor']} | {r['rows']} x {r['elements']} |" for r in res["stream"]]
    lines += ["", "## Sunspot forecasts", "",
              f"{f['horizon']} years from the {f['history']} before, forecast starts {f['origins_years']}; exact AR "
              f"models fitted (Yule-Walker) to 1700-1954; {f['samples']} samples, {f['solver']}, "
              f"{f['steps_per_element']} steps per year. CRPS in sunspot numbers (mean over the origins); the "
              "exact predictive law's CRPS is closed form. The bundled sunspots model takes one time per row, so it "
              "cannot run a rolling forecast; its plain TSDiff forecast (64 samples) is shown for reference.", "",
              "| model | shift | NFE rolling / plain | CRPS rolling | CRPS plain | CRPS exact predictive | "
              "seasonal-naive MAE |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['shift']} | {r['nfe_rolling']} / {r['nfe_plain']} | {r['crps_rolling']} | "
              f"{r['crps_plain']} | {r['crps_exact']} | {r['mae_naive']} |" for r in f["rows"]]
    if f["tsdiff_bundled_crps"] is not None:
        lines += ["", f"Bundled `sunspots` model, TSDiff (mse) plain forecast: CRPS {f['tsdiff_bundled_crps']}."]
    write_text(RESULTS / "structured_artime.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
