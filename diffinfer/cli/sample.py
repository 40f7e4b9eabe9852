"""``diffinfer sample``: a toy oracle (scored against exact samples) or a bundled model
(digits with FD and classifier accuracy; Shakespeare text with generative perplexity;
sunspot windows)."""
from __future__ import annotations

import argparse

import torch

from .. import grids, metrics, zoo
from ..process import PROCESSES, get_process
from ..loop import sample
from ..toys import gaussian_mixture
from ..viz import digit_grid, save_image, scatter_plot, series_plot
from ..zoo import quality
from ..zoo.data import digits, sunspots_from_unit, sunspots_windows
from ..zoo.tasks import DIGIT_MODELS
from .common import parse_options

TOYS = sorted(gaussian_mixture.PRESETS)


# --- toys -----------------------------------------------------------------------------
def sample_toy(args) -> int:
    toy = gaussian_mixture.preset(args.model)
    process = get_process(args.process)
    den = toy.denoiser(process)
    ts = grids.get(args.schedule, process, args.steps) if args.schedule else None
    result = sample(den, shape=(args.n, toy.dim), solver=args.solver, steps=args.steps, ts=ts,
                    seed=args.seed, progress=args.progress, dtype=torch.float64,
                    **parse_options(args.option))
    exact = toy.sample(args.n, seed=args.seed + 1)
    sw = metrics.sliced_wasserstein(result.x, exact)
    sw_floor = metrics.sliced_wasserstein(toy.sample(args.n, seed=args.seed + 2), exact)
    logp = metrics.mean_log_density(toy, result.x)
    print(f"model={args.model} process={process!r} solver={result.solver} steps={result.ts.numel() - 1}")
    print(f"NFE={result.nfe}  time={result.wall_time:.3f}s")
    print(f"sliced Wasserstein to exact samples = {sw:.4f} (two exact sets: {sw_floor:.4f})")
    print(f"mean exact log-density = {logp:.4f} (exact samples: {metrics.mean_log_density(toy, exact):.4f})")
    if args.out:
        scatter_plot(args.out, toy, process, result.x,
                     f"{args.model} | {result.solver} | NFE {result.nfe} | SW {sw:.3f}")
        print(f"wrote {args.out}")
    return 0


# --- bundled models -------------------------------------------------------------------
def _sample_digits_cmd(args) -> int:
    n = int(getattr(args, "n", 64) or 64)
    label = getattr(args, "label", None)
    guidance = getattr(args, "guidance", None)
    labels = torch.full((n,), int(label), dtype=torch.int64) if label is not None else None
    if labels is None and guidance is not None:
        labels = torch.arange(n) % 10  # guided samples need a class: cycle through 0-9
    if labels is not None and not bool(((labels >= 0) & (labels < 10)).all()):
        raise ValueError(f"--label must be a digit 0-9, got {label}")
    solver = getattr(args, "solver", None) or quality.default_solver()
    steps = int(getattr(args, "steps", 10) or 10)
    seed = int(getattr(args, "seed", 0) or 0)
    options = parse_options(getattr(args, "option", []))
    x, nfe = quality.sample_digits(args.model, n, labels, guidance, solver, steps, seed, **options)
    if label is not None:  # one class: compare with the real digits of that class
        real, real_labels = digits()
        fd, against = quality.fd_digits(x, real[real_labels == int(label)]), f"real {int(label)}s"
    else:
        fd, against = quality.fd_digits(x), "all real digits"
    print(f"model={args.model} solver={solver} steps={steps} n={n} label={label} guidance={guidance}")
    print(f"NFE={nfe}  FD (vs {against}, n={n}) = {fd:.3f}")
    if labels is not None:
        print(f"classifier accuracy = {quality.classifier_accuracy(x, labels):.3f}")
    if getattr(args, "out", None):
        save_image(args.out, digit_grid(x, nrow=min(n, 16)))
        print(f"wrote {args.out}")
    return 0


def _sample_text_cmd(args) -> int:
    n = int(getattr(args, "n", 4) or 4)
    n = min(n, 64)
    seed = int(getattr(args, "seed", 0) or 0)
    tokens = quality.sample_text(n=n, seed=seed)
    model = zoo.load("shakespeare-char")
    for row in tokens[: min(n, 4)]:
        print(model.decode(row))
        print("-" * 40)
    report = quality.text_report(tokens)
    print(f"generative perplexity = {report['gen_ppl']:.3f} (held-out text {report['heldout_ppl']:.3f}); "
          f"unigram entropy = {report['entropy']:.3f} (held-out {report['heldout_entropy']:.3f})")
    if getattr(args, "out", None):
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n\n".join(model.decode(r) for r in tokens))
        print(f"wrote {args.out}")
    return 0


def _sample_series_cmd(args) -> int:
    n = int(getattr(args, "n", 64) or 64)
    den = zoo.load("sunspots")
    solver = getattr(args, "solver", None) or quality.default_solver()
    with torch.no_grad():
        res = sample(den, shape=(n, *den.shape), solver=solver, steps=int(getattr(args, "steps", 10) or 10),
                     seed=int(getattr(args, "seed", 0) or 0))
    real = sunspots_windows(den.shape[-1])
    print(f"model=sunspots solver={res.solver} NFE={res.nfe}")
    print(f"mean {float(sunspots_from_unit(res.x).mean()):.1f} (real {float(sunspots_from_unit(real).mean()):.1f}); "
          f"std {float(sunspots_from_unit(res.x).std()):.1f} (real {float(sunspots_from_unit(real).std()):.1f})")
    if getattr(args, "out", None):
        series_plot(args.out, res.x)
        print(f"wrote {args.out}")
    return 0


def sample_zoo(args) -> int:
    """``diffinfer sample --model NAME`` for a bundled model (digits grid with FD and
    classifier accuracy; Shakespeare text with generative perplexity; sunspot windows)."""
    name = args.model
    if name in DIGIT_MODELS:
        return _sample_digits_cmd(args)
    if name == "shakespeare-char":
        return _sample_text_cmd(args)
    if name == "sunspots":
        return _sample_series_cmd(args)
    samplable = ", ".join(DIGIT_MODELS + ("shakespeare-char", "sunspots"))
    if name in zoo.names():
        raise ValueError(f"model {name!r} is not a generative model to sample; samplable: {samplable}")
    raise ValueError(f"unknown model {name!r}; bundled: {samplable}")


def cmd_sample(args) -> int:
    if args.model in TOYS:
        return sample_toy(args)
    return sample_zoo(args)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample a toy oracle or a bundled model")
    p.add_argument("--model", default="ring2d", help=f"a toy ({', '.join(TOYS)}) or a bundled model name")
    p.add_argument("--process", default="vp", help=f"for toys: {', '.join(sorted(PROCESSES))}")
    p.add_argument("--solver", default="dpmpp-2m")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--schedule", default=None, help=f"time grid: {', '.join(grids.names())}")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="solver option")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", type=int, default=None, help="class label (conditional models)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--out", default=None, help="output PNG")
    p.add_argument("--progress", action="store_true")
    p.set_defaults(func=cmd_sample)
