"""``diffinfer restore``: inverse problems on digits (inpaint, super-resolve, deblur, MRI)."""
from __future__ import annotations

import argparse

import torch

from .. import inverse
from ..metrics import psnr
from ..viz import digit_grid, save_image
from ..zoo.data import digits
from ..zoo.tasks import DIGIT_MODELS, DIGIT_TASKS, DPS_SCALES, measurement_view, read_digit_png, restore_digits
from .common import (UsageError, add_progress, check_out, float_in, int_in, model_call_progress, parse_options,
                     samples_int, seed_int, steps_int)

N_DIGITS = 1797  # scikit-learn's digits
MAX_RESTORE_WORK = 2_000_000  # samples x steps
MAX_RESTORATIONS = 256  # one row of the output grid
DEFAULT_STEPS = {"dps": 100, "reddiff": 500, "projection": 50}  # inverse.restore's defaults


def cmd_restore(args) -> int:
    if args.model not in DIGIT_MODELS:
        raise UsageError(f"--model {args.model!r} cannot restore digits; valid: {', '.join(DIGIT_MODELS)}")
    if args.input is not None and args.index is not None:
        raise UsageError("give --input or --index, not both")
    options = parse_options(args.option)
    steps = args.steps if args.steps is not None else DEFAULT_STEPS.get(args.method, 100)
    if args.n * steps > MAX_RESTORE_WORK:
        raise UsageError(f"--n {args.n} x --steps {steps} = {args.n * steps} sample-steps would take about "
                         f"{args.n * steps / 3000 / 60:.0f} minutes; at most {MAX_RESTORE_WORK}")
    check_out(args.out)
    if args.input:
        try:
            x = read_digit_png(args.input)
        except (OSError, SyntaxError, ValueError) as e:
            raise UsageError(f"--input {args.input!r} is not a readable PNG digit ({e})") from None
    else:
        index = args.index or 0
        x = digits()[0][index:index + 1]
    x = x.expand(args.n, -1, -1, -1).contiguous()
    with model_call_progress(args, f"restore ({args.method})"):
        out, y, op, nfe = restore_digits(args.model, args.task, args.method, x, args.noise, args.steps, args.seed,
                                         args.scale, **options)
    scores = psnr(out, x)
    print(f"model={args.model} task={args.task} method={args.method} noise_std={args.noise} n={args.n}")
    print(f"NFE={nfe}  PSNR={float(scores.mean()):.2f} dB (per sample: "
          f"{', '.join(f'{float(v):.1f}' for v in scores[:8])}{' ...' if args.n > 8 else ''})")
    if args.out:
        view = measurement_view(op, y[:1]).clamp(-1, 1)
        save_image(args.out, digit_grid(torch.cat([x[:1], view, out]).float(), nrow=args.n + 2))
        print(f"wrote {args.out} (input | measurement | {args.n} restorations)")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="restore a digit (inpaint, super-resolve, deblur) with a diffusion prior")
    p.add_argument("--model", default="digits", help="a bundled digits model (digits, digits-flow)")
    p.add_argument("--task", default="inpaint", choices=DIGIT_TASKS)
    p.add_argument("--method", default="dps", choices=inverse.METHODS)
    p.add_argument("--input", default=None, help="PNG of a digit (8x8 or a multiple); default: a real digit")
    p.add_argument("--index", type=int_in(0, N_DIGITS - 1), default=None,
                   help=f"which real digit (0-{N_DIGITS - 1}) when no --input is given (default 0)")
    p.add_argument("--noise", type=float_in(0.0, 10.0), default=0.05, help="measurement noise std (images in [-1, 1])")
    p.add_argument("--n", type=int_in(1, MAX_RESTORATIONS), default=4,
                   help=f"posterior samples to draw (1-{MAX_RESTORATIONS})")
    p.add_argument("--steps", type=steps_int, default=None, help="solver steps / RED-Diff iterations (default 100)")
    p.add_argument("--scale", type=float_in(0.0), default=None,
                   help="DPS likelihood-gradient scale (Gaussian DPS, guided for t < 0.6 on x0_hat clamped to "
                        f"[-1, 1]); default per task: {DPS_SCALES}")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option (e.g. resample=4, jump=5, lam=0.25, lr=0.1)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--out", default=None, help="output PNG")
    add_progress(p)
    p.set_defaults(func=cmd_restore)
