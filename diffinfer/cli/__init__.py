"""The ``diffinfer`` command, one module per subcommand.

Each module in ``COMMAND_MODULES`` defines ``add_commands(subparsers)`` and sets ``func`` on
its parsers; ``common`` holds the shared argument helpers. The commands run the library
(``diffinfer``, ``diffinfer.zoo``, ``diffinfer.viz``); nothing in the library imports them."""
from __future__ import annotations

import argparse
import sys

from . import bench, decode, demo, forecast, restore, sample, scale, solvers, train

#: subcommand modules in the order of ``diffinfer --help``
COMMAND_MODULES = (solvers, sample, demo, train, decode, restore, forecast, scale, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffinfer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_commands(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"diffinfer {args.command}: error: {e}", file=sys.stderr)
        return 2
