"""``diffinfer forecast``: probabilistic forecast of the sunspot series (TSDiff self-guidance)."""
from __future__ import annotations

import argparse

from .. import inverse
from ..viz import forecast_plot
from ..zoo.tasks import FORECAST_METHODS, GUIDANCE_T_MAX, forecast_scores, forecast_sunspots


def cmd_forecast(args) -> int:
    if args.method not in FORECAST_METHODS:
        raise ValueError(f"unknown method {args.method!r}; valid: {', '.join(FORECAST_METHODS)}")
    fc, series, hist, truth = forecast_sunspots(args.model, args.horizon, args.method, args.n, args.scale,
                                                args.loss, args.steps, args.seed, args.t_max)
    crps, crps_naive, naive = forecast_scores(fc, series, truth)
    print(f"model={args.model} method={args.method} horizon={args.horizon} n={args.n} loss={args.loss} scale={args.scale}")
    print(f"CRPS={crps:.2f} sunspots (seasonal naive, point forecast: {crps_naive:.2f})")
    if args.out:
        forecast_plot(args.out, series, truth, fc, naive,
                      f"{args.model} | {args.method} | CRPS {crps:.1f} (seasonal naive {crps_naive:.1f})")
        print(f"wrote {args.out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("forecast", help="probabilistic forecast of the sunspot series (TSDiff self-guidance)")
    p.add_argument("--model", default="sunspots")
    p.add_argument("--horizon", type=int, default=24)
    p.add_argument("--method", default="tsdiff", help="tsdiff or tsdiff-refine")
    p.add_argument("--n", type=int, default=64, help="forecast samples")
    p.add_argument("--scale", type=float, default=4.0, help="self-guidance scale")
    p.add_argument("--t-max", type=float, default=GUIDANCE_T_MAX, help="guide only for t below this")
    p.add_argument("--loss", default="mse", choices=inverse.OBS_LOSSES)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output PNG")
    p.set_defaults(func=cmd_forecast)
