"""``diffinfer solvers`` and ``diffinfer sample`` (toy oracles here; bundled models via ``cli_models``)."""
from __future__ import annotations

import argparse
import json

import torch

from . import grids as timesteps, metrics, solvers
from .process import PROCESSES, get_process
from .loop import sample
from .toys import gaussian_mixture

TOYS = sorted(gaussian_mixture.PRESETS)


def parse_options(pairs: list[str]) -> dict:
    """``["eta=1.0", "variant=bh1"]`` -> ``{"eta": 1.0, "variant": "bh1"}`` (JSON values where they parse)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"solver option {pair!r} is not KEY=VALUE")
        k, v = pair.split("=", 1)
        try:
            out[k.replace("-", "_")] = json.loads(v)
        except json.JSONDecodeError:
            out[k.replace("-", "_")] = v
    return out


def cmd_solvers(args) -> int:
    rows = solvers.describe()
    width = max(len(r["name"]) for r in rows)
    print(f"{'solver':<{width}}  order  stochastic  summary")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['order']:>5}  {str(r['stochastic']):>10}  {r['summary']}")
    return 0


def scatter_plot(path: str, toy, process, samples: torch.Tensor, title: str) -> None:
    """Samples over the contours of the true density (2-D toys; first two coordinates otherwise)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = samples.reshape(samples.shape[0], -1)[:, :2].double()
    fig, ax = plt.subplots(figsize=(5, 5))
    if toy.dim == 2:
        lo, hi = float(s.min()) - 0.5, float(s.max()) + 0.5
        g = torch.linspace(lo, hi, 200, dtype=torch.float64)
        xx, yy = torch.meshgrid(g, g, indexing="xy")
        logp = toy.log_prob(torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)).reshape(200, 200)
        ax.contour(xx.numpy(), yy.numpy(), logp.exp().numpy(), levels=8, cmap="Greys")
    ax.scatter(s[:, 0].numpy(), s[:, 1].numpy(), s=2, alpha=0.5, color="tab:blue")
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sample_toy(args) -> int:
    toy = gaussian_mixture.preset(args.model)
    process = get_process(args.process)
    den = toy.denoiser(process)
    ts = timesteps.get(args.schedule, process, args.steps) if args.schedule else None
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


def cmd_sample(args) -> int:
    if args.model in TOYS:
        return sample_toy(args)
    try:
        from .cli_models import sample_zoo
    except ModuleNotFoundError:
        sample_zoo = None
    if sample_zoo is None:
        raise ValueError(f"unknown model {args.model!r}; valid: {', '.join(TOYS)}")
    return sample_zoo(args)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("solvers", help="list solvers with their order and stochasticity")
    p.set_defaults(func=cmd_solvers)

    p = sub.add_parser("sample", help="sample a toy oracle or a bundled model")
    p.add_argument("--model", default="ring2d", help=f"a toy ({', '.join(TOYS)}) or a bundled model name")
    p.add_argument("--process", default="vp", help=f"for toys: {', '.join(sorted(PROCESSES))}")
    p.add_argument("--solver", default="dpmpp-2m")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--schedule", default=None, help=f"time grid: {', '.join(timesteps.names())}")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="solver option")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", type=int, default=None, help="class label (conditional models)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--out", default=None, help="output PNG")
    p.add_argument("--progress", action="store_true")
    p.set_defaults(func=cmd_sample)
