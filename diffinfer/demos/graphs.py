"""``diffinfer structured graphs``: a GDSS-style joint graph diffusion (Jo et al. 2022) in a minute.

Trains a tiny permutation-equivariant joint denoiser (``nets.graph.GraphNet``) on small
random graphs from networkx (``graph_data``: two-community or grid graphs, 12 nodes, a
+-1 node feature tied to the structure), as one packed state per graph
(``structured_state.Layout(nodes=Dense(n, 1), adj=Symmetric(n))``, symmetric noise on the
adjacency by construction), samples new graphs with any solver and scores them by degree
and clustering MMD (``graph_stats``) against held-out graphs of the training distribution,
beside an Erdos-Renyi baseline of the same density and the floor (fresh graphs of the
training distribution).
"""
from __future__ import annotations

import sys
import time

import torch

from .. import graph_data, solvers
from ..graph_stats import graph_mmd
from ..loop import sample
from ..nets.graph import GraphNet
from ..process import VP
from ..structured_state import Dense, Layout, Symmetric, joint_denoiser
from ..train import TrainConfig, denoising_loss, fit
from ..cli.common import int_in

HELP = "GDSS-style graph states: train a joint (nodes, symmetric adjacency) denoiser, sample graphs, degree/clustering MMD"

N_NODES = 12
TRAIN_GRAPHS = 512


def add_arguments(parser) -> None:
    parser.add_argument("--data", default="community", help=f"training graphs: {', '.join(graph_data.KINDS)}")
    parser.add_argument("--train-steps", type=int_in(1, 20000), default=800, help="optimiser steps (default 800)")
    parser.add_argument("--samples", type=int_in(2, 4096), default=128, help="graphs to sample and score (default 128)")
    parser.add_argument("--solver", default="dpmpp-2m-sde", help="a solver name (default dpmpp-2m-sde)")
    parser.add_argument("--steps", type=int_in(1, 1000), default=40, help="solver steps (default 40)")


def check(data: str, solver: str) -> None:
    """Bad values raise ``ValueError`` (the CLI: one line, exit status 2)."""
    if data not in graph_data.KINDS:
        raise ValueError(f"--data {data!r} is not valid; valid: {', '.join(graph_data.KINDS)}")
    if solver not in solvers.names():
        raise ValueError(f"--solver {solver!r} is not valid; valid: {', '.join(solvers.names())}")


def layout(n: int = N_NODES) -> Layout:
    return Layout(nodes=Dense(n, 1), adj=Symmetric(n))


def train(data: str, steps: int, seed: int = 0, progress: bool = False):
    """A joint denoiser trained on ``TRAIN_GRAPHS`` graphs of ``data`` (v prediction, cosine
    VP, the denoising loss on the packed state); returns ``(den, train_adjacency, seconds)``."""
    torch.manual_seed(seed)
    X, A = graph_data.graphs(data, TRAIN_GRAPHS, N_NODES, seed=seed)
    lay = layout()
    x0 = lay.pack(nodes=X, adj=graph_data.to_signed(A)).float()  # [G, D]
    net = GraphNet(node_features=1, hidden=48, rounds=2)
    den = joint_denoiser(net, lay, VP("cosine"), "v")  # checks each output for NaN / Inf

    def loss_fn(model, gen):
        rows = torch.randint(0, x0.shape[0], (64,), generator=gen)
        return denoising_loss(den, x0[rows], generator=gen)

    start = time.perf_counter()
    cfg = TrainConfig(steps=steps, lr=2e-3, warmup=min(50, steps), ema_decay=0.99, seed=seed, checkpoint_every=0,
                      log_every=max(1, steps // 20))
    result = fit(den.net, loss_fn, cfg, progress=progress, desc=f"train {data}")
    den.net.load_state_dict(result.ema_model().state_dict())
    den.net.eval()
    return den, A, time.perf_counter() - start


def generate(den, count: int, solver: str, steps: int, seed: int) -> torch.Tensor:
    """``count`` sampled 0/1 adjacencies ``[count, n, n]`` (sign of the sampled ``A``)."""
    res = sample(den, shape=(count, den.net.layout.size), solver=solver, steps=steps, seed=seed)
    if not bool(torch.isfinite(res.x).all()):
        raise FloatingPointError(f"{solver} x {steps}: the sampled states hold NaN / Inf (train longer or use more steps)")
    _, A = den.net.layout.unpack(res.x)  # symmetric by construction
    return graph_data.from_signed(A)


def evaluate(data: str, train_steps: int, samples: int, solver: str, steps: int, seed: int = 0,
             progress: bool = False) -> dict:
    """Train, sample and score: MMDs of the model, the Erdos-Renyi baseline and the floor."""
    check(data, solver)
    den, A_train, train_s = train(data, train_steps, seed, progress)
    start = time.perf_counter()
    A_model = generate(den, samples, solver, steps, seed)
    sample_s = time.perf_counter() - start
    _, A_test = graph_data.graphs(data, samples, N_NODES, seed=seed + 10_000)
    _, A_fresh = graph_data.graphs(data, samples, N_NODES, seed=seed + 20_000)
    A_er = graph_data.erdos_renyi(samples, N_NODES, graph_data.density(A_train), seed=seed + 30_000)
    rows = {name: graph_mmd(A, A_test) for name, A in
            (("model", A_model), ("erdos-renyi", A_er), ("floor", A_fresh))}
    return {"data": data, "nodes": N_NODES, "train_graphs": TRAIN_GRAPHS, "train_steps": train_steps,
            "samples": samples, "solver": solver, "steps": steps, "seed": seed, "mmd": rows,
            "density": {"train": graph_data.density(A_train), "model": graph_data.density(A_model)},
            "train_seconds": train_s, "sample_seconds": sample_s, "adjacency": A_model}


def table(result: dict) -> str:
    lines = [f"{'graphs':<12} {'degree MMD^2':>13} {'clustering MMD^2':>17}"]
    for name, m in result["mmd"].items():
        lines.append(f"{name:<12} {m['degree']:>13.4f} {m['clustering']:>17.4f}")
    return "\n".join(lines)


def run(args) -> int:
    check(args.data, args.solver)
    torch.set_num_threads(1)
    progress = args.progress if args.progress is not None else bool(getattr(sys.stderr, "isatty", lambda: False)())
    r = evaluate(args.data, args.train_steps, args.samples, args.solver, args.steps, args.seed, progress)
    print(f"{args.data} graphs ({r['nodes']} nodes): trained {r['train_steps']} steps on {r['train_graphs']} graphs "
          f"in {r['train_seconds']:.1f} s; {r['samples']} samples with {r['solver']} x {r['steps']} in "
          f"{r['sample_seconds']:.1f} s; edge density train {r['density']['train']:.3f}, model {r['density']['model']:.3f}")
    print(f"MMD^2 against {r['samples']} held-out {args.data} graphs (Gaussian TV kernel; lower is better):")
    print(table(r))
    if args.out:
        from ..viz import graph_grid
        graph_grid(args.out, r["adjacency"][:16], title=f"sampled {args.data} graphs")
        print(f"wrote {args.out}")
    return 0
