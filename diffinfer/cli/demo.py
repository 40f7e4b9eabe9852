"""``diffinfer demo``: sample the bundled digits model with several solvers; grid + FD table."""
from __future__ import annotations

import argparse
import time

import torch

from .. import solvers
from ..viz import digit_grid, save_image
from ..zoo import quality
from ..zoo.tasks import DIGIT_MODELS
from .common import (UsageError, add_progress, check_out, finite_float, model_call_progress, samples_int, seed_int,
                     steps_int)

#: sample-steps (n x steps, summed over cells) one demo may take (about half an hour on a core)
MAX_DEMO_WORK = 5_000_000

DEMO_SOLVERS = ("ddim", "heun", "dpmpp-2m", "dpmpp-3m", "unipc")


def cmd_demo(args) -> int:
    """Sample ``digits`` with several solvers at a few step counts: one comparison grid PNG
    and a table of FD and NFE per solver."""
    available = [s for s in (args.solvers or DEMO_SOLVERS) if s in solvers.names()]
    unknown = [s for s in (args.solvers or []) if s not in solvers.names()]
    if unknown:
        raise UsageError(f"unknown solvers {unknown}; valid: {', '.join(solvers.names())}")
    if args.n < 2:
        raise UsageError(f"--n {args.n}: the FD of digit samples needs at least 2 samples")
    fitted = _fitted_grids(args.model, args.steps) if args.fitted else {}
    work = args.n * (sum(args.steps) * len(available) + sum(fitted))
    if work > MAX_DEMO_WORK:
        raise UsageError(f"--n {args.n} x steps {args.steps} x {len(available)} solvers = {work} sample-steps would "
                         f"take about {work / 3000 / 60:.0f} minutes; at most {MAX_DEMO_WORK}")
    check_out(args.out)
    labels = torch.arange(args.n) % 10
    rows, images = [], []
    print(f"digits, {args.n} class-conditional samples per cell (labels 0-9), guidance={args.guidance}")
    halves = [quality.fd_digits_floor(seed) for seed in range(5)]
    print(f"FD of two disjoint halves of the real data: {sum(halves) / 5:.3f} (mean of 5 splits; "
          f"{min(halves):.3f}..{max(halves):.3f})")
    print(f"{'solver':<18} {'steps':>5} {'NFE':>5} {'FD':>9} {'acc':>6} {'time s':>7}")
    for name in available:
        for steps in args.steps:
            start = time.perf_counter()
            with model_call_progress(args, f"{name}@{steps}"):
                x, nfe = quality.sample_digits(args.model, args.n, labels, args.guidance, name, steps, args.seed)
            wall = time.perf_counter() - start
            fd, acc = quality.fd_digits(x), quality.classifier_accuracy(x, labels)
            rows.append({"solver": name, "steps": steps, "nfe": nfe, "fd": fd, "accuracy": acc, "time": wall})
            print(f"{name:<18} {steps:>5} {nfe:>5} {fd:>9.3f} {acc:>6.3f} {wall:>7.2f}")
            images.append(digit_grid(x[:10], nrow=10))
    for steps, rec in fitted.items():  # what a user should pick: the shipped fitted grid beside the defaults
        name = rec.solver + "".join(f"[{k}={v}]" for k, v in sorted(rec.solver_options.items())) + "+fit"
        start = time.perf_counter()
        with model_call_progress(args, f"{name}@{steps}"):
            x, nfe = quality.sample_digits(args.model, args.n, labels, args.guidance, rec.solver, steps, args.seed,
                                           ts=rec.grid, **rec.solver_options)
        wall = time.perf_counter() - start
        fd, acc = quality.fd_digits(x), quality.classifier_accuracy(x, labels)
        rows.append({"solver": name, "steps": steps, "nfe": nfe, "fd": fd, "accuracy": acc, "time": wall})
        print(f"{name:<18} {steps:>5} {nfe:>5} {fd:>9.3f} {acc:>6.3f} {wall:>7.2f}")
        images.append(digit_grid(x[:10], nrow=10))
    if fitted:
        print("(+fit: the grid fitted to this model and step count, shipped beside it; `grids.load`)")
    if args.out:
        gap = torch.zeros(2, images[0].shape[1])
        save_image(args.out, torch.cat([torch.cat([im, gap]) for im in images]), scale=6)
        order = ", ".join(f"{r['solver']}@{r['steps']}" for r in rows)
        print(f"wrote {args.out} (rows top to bottom: {order})")
    return 0


def _fitted_grids(model: str, steps) -> dict:
    """``{steps: record}``: the lowest-loss fitted grid (plain model times) shipped beside
    ``model`` for each step count that has one (``grids.best`` over ``zoo.grids_path``)."""
    from .. import grids, zoo
    path = zoo.grids_path(model)
    if not path.exists():
        return {}
    records = [r for r in grids.load(path).values() if r.model_ts is None]
    return {k: grids.best(records, k) for k in dict.fromkeys(steps) if any(r.steps == k for r in records)}


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="sample the bundled digits model with several solvers; grid + FD table")
    p.add_argument("--model", default="digits", choices=DIGIT_MODELS)
    p.add_argument("--solvers", nargs="+", default=None, help=f"default: those of {', '.join(DEMO_SOLVERS)} available")
    p.add_argument("--steps", nargs="+", type=steps_int, default=[5, 10, 20])
    p.add_argument("--n", type=samples_int, default=500)
    p.add_argument("--guidance", type=finite_float, default=None)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--out", default="demo.png")
    p.add_argument("--no-fitted", dest="fitted", action="store_false",
                   help="leave out the rows on the model's shipped fitted grids")
    add_progress(p)
    p.set_defaults(func=cmd_demo)
