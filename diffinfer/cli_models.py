"""``diffinfer demo``, ``diffinfer train NAME`` and ``diffinfer sample --model NAME`` for the
bundled models (the lead's ``sample`` subcommand calls ``sample_zoo``)."""
from __future__ import annotations

import argparse
import time

import torch

from . import quality, solvers, zoo
from .data import digits

DEMO_SOLVERS = ("ddim", "heun", "dpmpp-2m", "dpmpp-3m", "unipc")
DIGIT_MODELS = ("digits", "digits-flow")


# --- images ---------------------------------------------------------------------------
def digit_grid(x: torch.Tensor, nrow: int, pad: int = 1) -> torch.Tensor:
    """Tile digits ``[N, 1, 8, 8]`` in ``[-1, 1]`` into one ``[H, W]`` image in ``[0, 1]``."""
    from .data import digits_to_unit
    n = x.shape[0]
    ncol = (n + nrow - 1) // nrow
    h, w = x.shape[-2:]
    grid = torch.zeros(ncol * (h + pad) + pad, nrow * (w + pad) + pad)  # white gaps (ink is 1)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = \
            digits_to_unit(x[i, 0].float())
    return grid


def save_image(path: str, image: torch.Tensor, scale: int = 4) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    big = image.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    plt.imsave(path, big.numpy(), cmap="gray_r", vmin=0.0, vmax=1.0)


# --- sample ---------------------------------------------------------------------------
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
    from .cli_core import parse_options
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
    from .data import sunspots_from_unit, sunspots_windows
    from .loop import sample
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
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3))
        for row in sunspots_from_unit(res.x[:8, 0]):
            ax.plot(row.numpy(), lw=1)
        ax.set_xlabel("year in window")
        ax.set_ylabel("sunspot number")
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        plt.close(fig)
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


# --- demo -----------------------------------------------------------------------------
def cmd_demo(args) -> int:
    """Sample ``digits`` with several solvers at a few step counts: one comparison grid PNG
    and a table of FD and NFE per solver."""
    available = [s for s in (args.solvers or DEMO_SOLVERS) if s in solvers.names()]
    unknown = [s for s in (args.solvers or []) if s not in solvers.names()]
    if unknown:
        raise ValueError(f"unknown solvers {unknown}; valid: {', '.join(solvers.names())}")
    labels = torch.arange(args.n) % 10
    rows, images = [], []
    print(f"digits, {args.n} class-conditional samples per cell (labels 0-9), guidance={args.guidance}")
    halves = [quality.fd_digits_floor(seed) for seed in range(5)]
    print(f"FD of two disjoint halves of the real data: {sum(halves) / 5:.3f} (mean of 5 splits; "
          f"{min(halves):.3f}..{max(halves):.3f})")
    print(f"{'solver':<10} {'steps':>5} {'NFE':>5} {'FD':>9} {'acc':>6} {'time s':>7}")
    for name in available:
        for steps in args.steps:
            start = time.perf_counter()
            x, nfe = quality.sample_digits(args.model, args.n, labels, args.guidance, name, steps, args.seed)
            wall = time.perf_counter() - start
            fd, acc = quality.fd_digits(x), quality.classifier_accuracy(x, labels)
            rows.append({"solver": name, "steps": steps, "nfe": nfe, "fd": fd, "accuracy": acc, "time": wall})
            print(f"{name:<10} {steps:>5} {nfe:>5} {fd:>9.3f} {acc:>6.3f} {wall:>7.2f}")
            images.append(digit_grid(x[:10], nrow=10))
    if args.out:
        gap = torch.zeros(2, images[0].shape[1])
        save_image(args.out, torch.cat([torch.cat([im, gap]) for im in images]), scale=6)
        order = ", ".join(f"{r['solver']}@{r['steps']}" for r in rows)
        print(f"wrote {args.out} (rows top to bottom: {order})")
    return 0


def cmd_train(args) -> int:
    from .train import train_model
    path = train_model(args.name, steps=args.steps, out_dir=args.out, work_dir=args.work_dir,
                       resume=not args.no_resume, progress=not args.quiet, threads=args.threads)
    print(f"wrote {path}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="sample the bundled digits model with several solvers; grid + FD table")
    p.add_argument("--model", default="digits", choices=DIGIT_MODELS)
    p.add_argument("--solvers", nargs="+", default=None, help=f"default: those of {', '.join(DEMO_SOLVERS)} available")
    p.add_argument("--steps", nargs="+", type=int, default=[5, 10, 20])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="demo.png")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="retrain a bundled model from its recipe")
    p.add_argument("name", help=f"one of: {', '.join(zoo.names())}")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
    p.add_argument("--out", default=None, help="output directory (default: the package's zoo_weights)")
    p.add_argument("--work-dir", default=None, help="resumable checkpoints (default ./.diffinfer-train)")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)
