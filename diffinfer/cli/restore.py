"""``diffinfer restore``: inverse problems on digits (inpaint, super-resolve, deblur, MRI)."""
from __future__ import annotations

import argparse

import torch

from .. import inverse
from ..metrics import psnr
from ..viz import digit_grid, save_image
from ..zoo.data import digits
from ..zoo.tasks import DIGIT_TASKS, DPS_SCALES, measurement_view, read_digit_png, restore_digits
from .common import parse_options


def cmd_restore(args) -> int:
    if args.input:
        x = read_digit_png(args.input)
    else:
        x = digits()[0][args.index:args.index + 1]
    x = x.expand(args.n, -1, -1, -1).contiguous()
    out, y, op, nfe = restore_digits(args.model, args.task, args.method, x, args.noise, args.steps, args.seed,
                                     args.scale, **parse_options(args.option))
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
    p.add_argument("--index", type=int, default=0, help="which real digit when no --input is given")
    p.add_argument("--noise", type=float, default=0.05, help="measurement noise std (images in [-1, 1])")
    p.add_argument("--n", type=int, default=4, help="posterior samples to draw")
    p.add_argument("--steps", type=int, default=None, help="solver steps / RED-Diff iterations")
    p.add_argument("--scale", type=float, default=None,
                   help="DPS likelihood-gradient scale (Gaussian DPS, guided for t < 0.6 on x0_hat clamped to "
                        f"[-1, 1]); default per task: {DPS_SCALES}")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option (e.g. resample=4, jump=5, lam=0.25, lr=0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output PNG")
    p.set_defaults(func=cmd_restore)
