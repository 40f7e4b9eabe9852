"""``diffinfer train NAME``: retrain a bundled model from its recipe (``zoo.recipes``).

Writes ``NAME.safetensors`` to a user directory (``--out``, default
``$DIFFINFER_HOME/models`` or ``~/.local/share/diffinfer/models``), never into the installed
package unless ``--replace-bundled``. Resumable checkpoints go to ``--work-dir`` (default
``.../diffinfer/train``) every ``--checkpoint-every`` (steps, or a duration such as ``90s``
or ``5m``; default 3 minutes of work) and on Ctrl-C / SIGTERM; a rerun with the same
settings resumes bitwise, one with other settings is refused with the difference."""
from __future__ import annotations

import argparse
import re

from .. import zoo
from .common import UsageError, int_in


def checkpoint_interval(text: str) -> tuple[int | None, float | None]:
    """``"200"`` -> 200 steps; ``"90s"`` / ``"5m"`` / ``"1h"`` -> seconds of work."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text or "")
    if not m:
        raise argparse.ArgumentTypeError(f"must be a number of steps (e.g. 200) or a duration (90s, 5m, 1h), got {text!r}")
    value, unit = m.groups()
    if not unit:
        if "." in value or int(value) < 1:
            raise argparse.ArgumentTypeError(f"a step interval must be a positive integer, got {text!r}")
        return int(value), None
    seconds = float(value) * {"s": 1, "m": 60, "h": 3600}[unit]
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"a duration must be positive, got {text!r}")
    return None, seconds


def cmd_train(args) -> int:
    from ..zoo.recipes import RECIPES, train_model
    if args.name not in RECIPES:
        raise UsageError(f"no training recipe for {args.name!r}; valid: {', '.join(sorted(RECIPES))}")
    every_steps, every_seconds = args.checkpoint_every
    path = train_model(args.name, steps=args.steps, out_dir=args.out, work_dir=args.work_dir,
                       resume=not args.no_resume, progress=not args.quiet, threads=args.threads,
                       checkpoint_every=every_steps if every_steps is not None else 0,
                       checkpoint_seconds=every_seconds, replace_bundled=args.replace_bundled)
    print(f"wrote {path}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="retrain a bundled model from its recipe (into a user directory)")
    p.add_argument("name", help=f"one of: {', '.join(zoo.names())}")
    p.add_argument("--steps", type=int_in(1, 10_000_000), default=None, help="override the recipe's step count")
    p.add_argument("--out", default=None, help="output directory (default: $DIFFINFER_HOME/models, "
                   "else ~/.local/share/diffinfer/models)")
    p.add_argument("--replace-bundled", action="store_true",
                   help="allow --out to be the package's zoo/weights (overwrites the bundled checkpoint)")
    p.add_argument("--work-dir", default=None, help="resumable checkpoints (default: .../diffinfer/train)")
    p.add_argument("--checkpoint-every", type=checkpoint_interval, default=(None, 180.0), metavar="N|DURATION",
                   help="checkpoint every N steps or every DURATION of work (90s, 5m, 1h); default 3m")
    p.add_argument("--no-resume", action="store_true", help="start from step 0 even if a checkpoint exists")
    p.add_argument("--threads", type=int_in(1, 1024), default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)
