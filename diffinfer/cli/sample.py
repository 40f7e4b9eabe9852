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
from .common import (write_text, MAX_SAMPLES, UsageError, add_progress, check_out, finite_float, int_in, model_call_progress,
                     parse_options, progress_enabled, samples_int, seed_int, steps_int)

TOYS = sorted(gaussian_mixture.PRESETS)


# --- the input contract ----------------------------------------------------------------
#: defaults per kind of model (``--n`` / ``--steps`` not given)
DEFAULT_N = {"toy": 2000, "digits": 64, "text": 4, "series": 64}
DEFAULT_STEPS = {"toy": 10, "digits": 10, "series": 10}
#: the most text samples one run decodes (each is 256 steps of the transformer)
MAX_TEXT_SAMPLES = 256
#: sample-steps (n x steps) one run may take: beyond, it runs for hours
MAX_SAMPLE_STEPS = {"toy": 50_000_000, "digits": 2_000_000, "series": 5_000_000}
#: rough sample-steps per second on one CPU core, for the estimate in the refusal
RATE = {"toy": 2_000_000, "digits": 3_000, "series": 20_000}
TEXT_LENGTH = 256


def model_kind(name: str) -> str:
    if name in TOYS:
        return "toy"
    if name in DIGIT_MODELS:
        return "digits"
    if name == "shakespeare-char":
        return "text"
    if name == "sunspots":
        return "series"
    samplable = ", ".join(TOYS + list(DIGIT_MODELS) + ["shakespeare-char", "sunspots"])
    if name in zoo.names():
        raise UsageError(f"--model {name!r} is not a generative model to sample; samplable: {samplable}")
    raise UsageError(f"unknown --model {name!r}; valid: {samplable}")


def validate(args) -> str:
    """Check every option against the model before any work; fill the per-model defaults."""
    from .. import solvers
    kind = model_kind(args.model)
    explicit = lambda name: getattr(args, name) is not None  # noqa: E731
    not_for = {"toy": ("label", "guidance"), "digits": ("process", "schedule"),
               "text": ("process", "schedule", "solver", "option", "label", "guidance"),
               "series": ("process", "schedule", "option", "label", "guidance")}[kind]
    for name in not_for:
        if getattr(args, name) not in (None, []):
            raise UsageError(f"--{name} does not apply to --model {args.model}")
    if kind == "toy":
        args.process = args.process or "vp"
        if args.process not in PROCESSES:
            raise UsageError(f"unknown --process {args.process!r}; valid: {', '.join(sorted(PROCESSES))}")
        if args.schedule is not None and args.schedule not in grids.names():
            raise UsageError(f"unknown --schedule {args.schedule!r}; valid: {', '.join(grids.names())}")
    if kind != "text":
        args.solver = args.solver or (quality.default_solver() if kind != "toy" else "dpmpp-2m")
        if args.solver not in solvers.names():
            raise UsageError(f"unknown --solver {args.solver!r}; valid: {', '.join(solvers.names())}")
    if not explicit("n"):
        args.n = DEFAULT_N[kind]
    if kind == "text":
        if args.n > MAX_TEXT_SAMPLES:
            raise UsageError(f"--n {args.n}: at most {MAX_TEXT_SAMPLES} text samples per run (each takes "
                             f"{TEXT_LENGTH} model calls; {args.n} would take about {args.n * 0.5 / 60:.0f} minutes)")
        if explicit("steps") and args.steps > TEXT_LENGTH:
            raise UsageError(f"--steps {args.steps}: text samples are {TEXT_LENGTH} tokens; valid: 1..{TEXT_LENGTH}")
        args.steps = args.steps or TEXT_LENGTH
    else:
        args.steps = args.steps or DEFAULT_STEPS[kind]
        work = args.n * args.steps
        if work > MAX_SAMPLE_STEPS[kind]:
            raise UsageError(f"--n {args.n} x --steps {args.steps} = {work} sample-steps would take about "
                             f"{work / RATE[kind] / 60:.0f} minutes; at most {MAX_SAMPLE_STEPS[kind]} for "
                             f"--model {args.model}")
    if kind == "digits" and args.n < 2:
        raise UsageError(f"--n {args.n}: the FD of digit samples needs at least 2 samples")
    if args.label is not None and not 0 <= args.label < 10:
        raise UsageError(f"--label must be a digit 0-9, got {args.label}")
    options = parse_options(args.option)
    check_out(args.out)
    return kind, options


# --- toys -----------------------------------------------------------------------------
def sample_toy(args, options) -> int:
    toy = gaussian_mixture.preset(args.model)
    process = get_process(args.process)
    den = toy.denoiser(process)
    ts = grids.get(args.schedule, process, args.steps) if args.schedule else None
    result = sample(den, shape=(args.n, toy.dim), solver=args.solver, steps=args.steps, ts=ts,
                    seed=args.seed, progress=progress_enabled(args), dtype=torch.float64,
                    **options)
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
def _sample_digits_cmd(args, options) -> int:
    n, label, guidance, solver, steps, seed = args.n, args.label, args.guidance, args.solver, args.steps, args.seed
    labels = torch.full((n,), int(label), dtype=torch.int64) if label is not None else None
    if labels is None and guidance is not None:
        labels = torch.arange(n) % 10  # guided samples need a class: cycle through 0-9
    with model_call_progress(args, f"{args.model} ({solver})"):
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


def _sample_text_cmd(args, options) -> int:
    n, seed = args.n, args.seed
    with model_call_progress(args, "shakespeare-char", total=n * args.steps):
        tokens = quality.sample_text(n=n, seed=seed, steps=args.steps)
    model = zoo.load("shakespeare-char")
    for row in tokens[: min(n, 4)]:
        print(model.decode(row))
        print("-" * 40)
    report = quality.text_report(tokens)
    print(f"generative perplexity = {report['gen_ppl']:.3f} (held-out text {report['heldout_ppl']:.3f}); "
          f"unigram entropy = {report['entropy']:.3f} (held-out {report['heldout_entropy']:.3f})")
    if getattr(args, "out", None):
        write_text(args.out, "\n\n".join(model.decode(r) for r in tokens))
        print(f"wrote {args.out}")
    return 0


def _sample_series_cmd(args, options) -> int:
    den = zoo.load("sunspots")
    with torch.no_grad():
        res = sample(den, shape=(args.n, *den.shape), solver=args.solver, steps=args.steps, seed=args.seed,
                     progress=progress_enabled(args), **options)
    real = sunspots_windows(den.shape[-1])
    print(f"model=sunspots solver={res.solver} NFE={res.nfe}")
    print(f"mean {float(sunspots_from_unit(res.x).mean()):.1f} (real {float(sunspots_from_unit(real).mean()):.1f}); "
          f"std {float(sunspots_from_unit(res.x).std()):.1f} (real {float(sunspots_from_unit(real).std()):.1f})")
    if getattr(args, "out", None):
        series_plot(args.out, res.x)
        print(f"wrote {args.out}")
    return 0


def cmd_sample(args) -> int:
    kind, options = validate(args)
    run = {"toy": sample_toy, "digits": _sample_digits_cmd, "text": _sample_text_cmd,
           "series": _sample_series_cmd}[kind]
    return run(args, options)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample a toy oracle or a bundled model")
    p.add_argument("--model", default="ring2d", help=f"a toy ({', '.join(TOYS)}) or a bundled model name")
    p.add_argument("--process", default=None, help=f"for toys: {', '.join(sorted(PROCESSES))} (default vp)")
    p.add_argument("--solver", default=None, help="default dpmpp-2m (not for shakespeare-char)")
    p.add_argument("--steps", type=steps_int, default=None,
                   help="solver steps (default 10); shakespeare-char: decoding steps, 1-256 (default 256)")
    p.add_argument("--schedule", default=None, help=f"time grid for toys: {', '.join(grids.names())}")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="solver option")
    p.add_argument("--n", type=samples_int, default=None,
                   help=f"samples (default: toys {DEFAULT_N['toy']}, digits/sunspots 64, text 4)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--label", type=int_in(0, 9), default=None, help="class label 0-9 (digits models)")
    p.add_argument("--guidance", type=finite_float, default=None, help="classifier-free guidance scale (digits)")
    p.add_argument("--out", default=None, help="output file (PNG; .txt for shakespeare-char)")
    add_progress(p)
    p.set_defaults(func=cmd_sample)
