"""``diffinfer structured artime``: per-element times (AR-Diffusion) on the sunspot series.

The bundled ``sunspots`` model (``nets.series.SeriesNet``) embeds one time per row (``t``
``[B]``), not one per position, so it cannot run a time field. The demo uses the exact model
instead: a stationary Gaussian AR(p) fitted (Yule-Walker) to the training years of the same
series (1700-1954, the bundled model's training years), on the bundled model's scale. It
forecasts the last 24 years from the 8 before (the bundled model's split) by rolling
AR-Diffusion generation (``element_times.forecast``, a new year enters at ``t = 1`` every
``shift`` steps and the front one leaves at ``t = 0``) and compares it with the plain forecast
(every year at once) and with the exact predictive law, then checks a long stream's lag-0 /
lag-1 covariances against the floor of exact sequences.
"""
from __future__ import annotations

import torch

from ..cli.common import int_in

HELP = "per-element times (AR-Diffusion): a rolling sunspot forecast and a streamed AR sequence"
HORIZON, HISTORY = 24, 8
#: forecast ends (indices into the yearly series, counted back from its end) as bench/inverse.py
ORIGIN_OFFSETS = (0, 6, 12, 18, 24, 30)


def add_arguments(p) -> None:
    from ..element_times import SUPPORTED
    from .. import solvers
    names = [n for n in solvers.names() if type(solvers.get(n)) in SUPPORTED]
    p.add_argument("--order", type=int_in(1, 8), default=2, help="AR order of the exact model (default 2)")
    p.add_argument("--steps", type=int_in(2, 1000), default=40, help="solver steps per element (default 40)")
    p.add_argument("--shift", type=int_in(1, 100), default=1, help="steps between elements entering (default 1)")
    p.add_argument("--samples", type=int_in(2, 5000), default=200, help="forecast samples (default 200)")
    p.add_argument("--rows", type=int_in(10, 20000), default=2000, help="rows of the stream check (default 2000)")
    p.add_argument("--solver", choices=names, default="dpmpp-2m")


def fit_sunspots_ar(order: int):
    """The exact AR(``order``) model of the scaled sunspot series' training years."""
    from ..toys.gaussian_sequence import GaussianAR
    from ..zoo.data import SUNSPOTS_HELDOUT_YEARS, sunspots_series
    return GaussianAR.fit(sunspots_series(torch.float64)[:-SUNSPOTS_HELDOUT_YEARS], order)


def forecast_scores(model, process, end: int, samples: int, steps: int, shift: int, solver: str, seed: int) -> dict:
    """CRPS (sunspot numbers) of the rolling (``shift``) and plain forecasts of the ``HORIZON``
    years ending at index ``end`` from the ``HISTORY`` before, the exact predictive law's CRPS,
    the seasonal-naive MAE, the forecast samples and NFE."""
    from .. import grids, inverse
    from ..element_times import forecast
    from ..toys.gaussian_sequence import gaussian_crps
    from ..zoo.data import SUNSPOTS_MAX, sunspots_from_unit, sunspots_series
    from ..zoo.tasks import SUNSPOT_PERIOD
    s = sunspots_series(torch.float64)[:end]
    hist, truth = s[-HORIZON - HISTORY:-HORIZON], s[-HORIZON:]
    den = model.denoiser(process)
    base = grids.resolve(process, steps, None)
    out = {}
    for name, sh in (("rolling", shift), ("plain", 0)):
        nfe0 = den.nfe
        fc = forecast(den, hist.reshape(1, 1, HISTORY).expand(samples, 1, HISTORY), HORIZON, base, shift=sh,
                      solver=solver, seed=seed)[:, 0]
        out[name] = inverse.crps_samples(sunspots_from_unit(fc), sunspots_from_unit(truth))
        out[f"{name}_nfe"] = den.nfe - nfe0
        out[f"{name}_samples"] = fc
    m, C = model.predictive(hist, HORIZON)
    out["exact"] = float(gaussian_crps(m, C.diagonal().sqrt(), truth).mean()) * SUNSPOTS_MAX / 2
    naive = inverse.seasonal_naive(s[:-HORIZON], HORIZON, SUNSPOT_PERIOD)
    out["naive"] = float((sunspots_from_unit(naive) - sunspots_from_unit(truth)).abs().mean())
    out["series"], out["truth"], out["naive_forecast"] = s, truth, naive
    return out


def stream_check(model, process, rows: int, count: int, steps: int, shift: int, solver: str, seed: int,
                 repeats: int = 8) -> dict:
    """A stream's pooled lag-0 / lag-1 covariance errors (``rows`` sequences of ``count``
    elements) against the floor of exact sequences of the same size (worst of ``repeats``)."""
    from .. import grids
    from ..element_times import stream
    target = model.autocov(2)

    def err(x):
        d = x - model.mean
        lags = torch.stack([(d * d).mean(), (d[:, 1:] * d[:, :-1]).mean()])
        return (lags - target).abs()
    floor = max(float(err(model.sample(rows, count, seed=10_000 + r)).max()) for r in range(repeats))
    x = torch.stack(list(stream(model.denoiser(process), grids.resolve(process, steps, None), shift, count, rows,
                                solver=solver, seed=seed, dtype=torch.float64)), -1)[:, 0]
    e = err(x)
    return {"lag0_error": float(e[0]), "lag1_error": float(e[1]), "floor": floor, "rows": rows, "count": count}


def run(args) -> int:
    from .. import VP
    from ..zoo.data import sunspots_series
    model = fit_sunspots_ar(args.order)
    print("the bundled sunspots model embeds one time per row ([B]), not one per position; this demo uses the "
          f"exact AR({args.order}) model fitted (Yule-Walker) to the scaled sunspot years 1700-1954: {model}")
    last = sunspots_series().numel()
    r = forecast_scores(model, VP(), last, args.samples, args.steps, args.shift, args.solver, args.seed)
    first = 1700 + last - HORIZON
    print(f"forecast {first}-{first + HORIZON - 1} from the {HISTORY} years before, {args.samples} samples, "
          f"{args.solver}, {args.steps} steps per year:")
    print(f"  CRPS rolling (shift {args.shift}, NFE {r['rolling_nfe']}) {r['rolling']:.2f} | plain (all years at once, "
          f"NFE {r['plain_nfe']}) {r['plain']:.2f} | exact predictive {r['exact']:.2f} | seasonal naive MAE {r['naive']:.2f}")
    c = stream_check(model, VP(), args.rows, 24, args.steps, args.shift, args.solver, args.seed)
    print(f"stream of {c['count']} years x {c['rows']} rows: lag-0 covariance error {c['lag0_error']:.4f}, lag-1 "
          f"{c['lag1_error']:.4f}; floor of exact sequences {c['floor']:.4f}")
    if args.out:
        from ..viz import forecast_plot
        forecast_plot(args.out, r["series"], r["truth"], r["rolling_samples"], r["naive_forecast"],
                      f"sunspots | rolling AR-Diffusion forecast, exact AR({args.order}) | CRPS {r['rolling']:.2f}")
        print(f"wrote {args.out}")
    return 0
