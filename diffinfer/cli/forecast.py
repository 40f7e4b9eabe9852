"""``diffinfer forecast``: probabilistic forecast of the sunspot series (TSDiff self-guidance)."""
from __future__ import annotations

import argparse

from .. import inverse
from ..viz import forecast_plot
from ..zoo.tasks import FORECAST_METHODS, GUIDANCE_T_MAX, forecast_scores, forecast_sunspots
from .common import (UsageError, add_progress, check_out, finite_float, float_in, int_in, model_call_progress,
                     samples_int, seed_int, steps_int)

FORECAST_MODELS = ("sunspots",)
MAX_FORECAST_WORK = 5_000_000  # samples x steps


def cmd_forecast(args) -> int:
    if args.model not in FORECAST_MODELS:
        raise UsageError(f"--model {args.model!r} cannot forecast; valid: {', '.join(FORECAST_MODELS)}")
    if args.method not in FORECAST_METHODS:
        raise UsageError(f"unknown --method {args.method!r}; valid: {', '.join(FORECAST_METHODS)}")
    work = args.n * args.steps * (2 if args.method == "tsdiff-refine" else 1)
    if work > MAX_FORECAST_WORK:
        raise UsageError(f"--n {args.n} x --steps {args.steps} = {work} sample-steps would take about "
                         f"{work / 20000 / 60:.0f} minutes; at most {MAX_FORECAST_WORK}")
    check_out(args.out)
    with model_call_progress(args, f"forecast ({args.method})"):
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
    p.add_argument("--model", default="sunspots", help="sunspots (the bundled 32-year series model)")
    p.add_argument("--horizon", type=int_in(1, 31), default=24, help="years to forecast, 1-31")
    p.add_argument("--method", default="tsdiff", help="tsdiff or tsdiff-refine")
    p.add_argument("--n", type=samples_int, default=64, help="forecast samples")
    p.add_argument("--scale", type=float_in(0.0), default=4.0, help="self-guidance scale (>= 0)")
    p.add_argument("--t-max", type=float_in(0.0, 1.0), default=GUIDANCE_T_MAX, help="guide only for t below this")
    p.add_argument("--loss", default="mse", choices=inverse.OBS_LOSSES)
    p.add_argument("--steps", type=steps_int, default=50)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--out", default=None, help="output PNG")
    add_progress(p)
    p.set_defaults(func=cmd_forecast)
