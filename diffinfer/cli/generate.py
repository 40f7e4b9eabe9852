"""``diffinfer generate``: draw ``--n`` rows of one configuration into ``--out DIR`` as
safetensors shards, from one process or many (``torchrun --nproc-per-node K -m
diffinfer.cli generate ...``); resumable, exact, refusing a changed configuration.
``diffinfer generate --status DIR`` reads a job's manifest. See ``diffinfer.generate``."""
from __future__ import annotations

import argparse
import os
import sys

from .common import (UsageError, add_progress, finite_float, int_in, parse_options, positive_int, progress_enabled,
                     seed_int, steps_int)

#: the most rows one job may hold (shard names have 9 digits)
MAX_ROWS = 999_999_999


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers (e.g. 3,32,32), got {text!r}") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers (e.g. 3,32,32), got {text!r}")
    return shape


def cmd_generate(args) -> int:
    from ..generate import ConfigMismatch, GenerateConfig, format_status, generate, status
    if args.status is not None:
        given = [f"--{k}" for k in ("model", "n", "out") if getattr(args, k) is not None]
        if given:
            raise UsageError(f"--status reads a job; it takes no {', '.join(given)}")
        if not os.path.isdir(args.status):
            raise UsageError(f"--status {args.status!r} is not a directory")
        print(format_status(status(args.status)))
        return 0
    missing = [f"--{k}" for k in ("model", "n", "out") if getattr(args, k) is None]
    if missing:
        raise UsageError(f"generate needs {', '.join(missing)} (or --status DIR)")
    if os.getcwd() not in sys.path:  # module:function specs name modules of the working directory
        sys.path.insert(0, os.getcwd())
    config = GenerateConfig(model=args.model, n=args.n, seed=args.seed, solver=args.solver, steps=args.steps,
                            batch=args.batch, options=parse_options(args.option), label=args.label,
                            guidance=args.guidance, length=args.length, shape=args.shape, png=args.png)
    try:
        generate(config, args.out, progress=progress_enabled(args))
    except ConfigMismatch as e:  # a usage error: the same --out with other values
        raise UsageError(str(e)) from None
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="draw many samples into resumable shards (one or many processes)")
    p.add_argument("--model", default=None,
                   help="a toy (ring2d, molrg), digits, digits-flow, sunspots, shakespeare-char, markov, "
                        "module:function (returns a Denoiser or a masked model) or diffusers:PATH")
    p.add_argument("--n", "--num-samples", dest="n", type=int_in(1, MAX_ROWS), default=None,
                   help="rows to draw (0 .. n-1); under torchrun write --num-samples (torchrun's own parser "
                        "reads --n as an abbreviation of its --nnodes / --nproc-per-node)")
    p.add_argument("--out", default=None, help="the output directory (new, empty, or this job's own to resume)")
    p.add_argument("--solver", default=None, help="continuous: a solver (default dpmpp-2m); text: an unmasking "
                                                  "policy (default random)")
    p.add_argument("--steps", type=steps_int, default=None, help="solver steps (default 10; text: one token per step)")
    p.add_argument("--seed", type=seed_int, default=0, help="row i uses random stream (seed, i)")
    p.add_argument("--batch", type=int_in(1, 1_000_000), default=64, help="rows per shard and per model batch (default 64)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="solver option (continuous) or mdm.decode keyword (text)")
    p.add_argument("--label", type=int_in(0, 9), default=None, help="digits models: one class for every row")
    p.add_argument("--guidance", type=finite_float, default=None,
                   help="digits models: classifier-free guidance scale, row i conditioned on class i %% 10")
    p.add_argument("--length", type=positive_int, default=None, help="text: tokens per row (default the model's max_len)")
    p.add_argument("--shape", type=_shape, default=None, help="one sample's shape for a module:function denoiser "
                                                              "without .shape (e.g. 3,32,32)")
    p.add_argument("--png", action="store_true", help="also write an image grid per shard (one-channel images)")
    p.add_argument("--status", default=None, metavar="DIR", help="print a job's progress (rows done per rank) and exit")
    add_progress(p)
    p.set_defaults(func=cmd_generate)
