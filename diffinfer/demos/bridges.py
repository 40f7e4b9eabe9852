"""``diffinfer structured bridges``: Brownian-bridge translation of held-out digits into their
mirror images (``diffinfer.bridges``; task in ``diffinfer.zoo.bridge_digits``).

Trains a small bridge model from the digits' pairs (seeded, seconds on one core), translates
the 180 held-out digits starting at the source (``x_1 = x1``, no noise), and prints the clean
digits classifier's accuracy on the outputs mirrored back and the RMSE to the true mirror,
beside the untranslated source and the true mirror."""
from __future__ import annotations

import argparse

from ..cli.common import float_in, int_in

HELP = "Brownian-bridge translation: held-out digits -> their mirror images (small bridge trained in seconds)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairing", choices=("mirror", "mirror-coarse"), default="mirror",
                   help="source: the digit (mirror) or the digit at 4x4 (mirror-coarse); target: its mirror")
    p.add_argument("--steps", type=int_in(1, 1000), default=20, help="bridge sampling steps (default 20)")
    p.add_argument("--eta", type=float_in(0.0, 1.0), default=1.0,
                   help="1: the bridge's stochastic transition; 0: DDIM-like (deterministic after the first step)")
    p.add_argument("--train-steps", type=int_in(1, 100_000), default=600, help="training steps (default 600)")
    p.add_argument("--n", type=int_in(1, 180), default=180, help="held-out digits to translate (default 180)")


def run(args) -> int:
    import torch

    from ..zoo import bridge_digits as bd
    from .. import viz

    torch.set_num_threads(1)
    progress = bool(getattr(args, "progress", None))
    trained = bd.train(args.pairing, steps=args.train_steps, seed=args.seed, progress=progress)
    res = bd.evaluate(trained, steps=args.steps, eta=args.eta, n=args.n, seed=args.seed)
    x0, x1, labels = res["x0"], res["x1"], res["labels"]
    source = bd.scores(x1, x0, labels)
    truth = bd.scores(x0, x0, labels)
    print(f"bridge {args.pairing}: trained {trained.steps} steps in {trained.seconds:.1f} s "
          f"(final loss {trained.final_loss:.4f}); {args.n} held-out digits, {args.steps} steps, eta={args.eta:g}")
    print(f"{'':18s} {'accuracy':>9s} {'rmse':>7s}")
    print(f"{'source as is':18s} {source['accuracy']:9.3f} {source['rmse']:7.3f}")
    print(f"{'bridge':18s} {res['accuracy']:9.3f} {res['rmse']:7.3f}")
    print(f"{'true mirror':18s} {truth['accuracy']:9.3f} {truth['rmse']:7.3f}")
    if args.out:
        k = min(16, args.n)
        rows = torch.cat([x1[:k], res["x"][:k].float(), x0[:k]])
        viz.save_image(args.out, viz.digit_grid(rows, nrow=k))
        print(f"wrote {args.out} (rows: source, bridge output, true mirror)")
    return 0
