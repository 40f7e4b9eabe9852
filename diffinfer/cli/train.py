"""``diffinfer train NAME``: retrain a bundled model from its recipe (``zoo.recipes``)."""
from __future__ import annotations

import argparse

from .. import zoo


def cmd_train(args) -> int:
    from ..zoo.recipes import train_model
    path = train_model(args.name, steps=args.steps, out_dir=args.out, work_dir=args.work_dir,
                       resume=not args.no_resume, progress=not args.quiet, threads=args.threads)
    print(f"wrote {path}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="retrain a bundled model from its recipe")
    p.add_argument("name", help=f"one of: {', '.join(zoo.names())}")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
    p.add_argument("--out", default=None, help="output directory (default: the package's zoo/weights)")
    p.add_argument("--work-dir", default=None, help="resumable checkpoints (default ./.diffinfer-train)")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)
