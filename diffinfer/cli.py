"""The ``diffinfer`` command. Subcommands live beside the features they run: each module
in ``COMMAND_MODULES`` defines ``add_commands(subparsers)`` and sets ``func`` on its parsers."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "diffinfer.cli_core",      # solvers, sample (toys and bundled models)
    "diffinfer.cli_models",    # demo, train
    "diffinfer.mdm.cli",       # decode
    "diffinfer.cli_inverse",   # restore, forecast
    "diffinfer.cli_scale",     # scale
    "diffinfer.cli_bench",     # bench
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffinfer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a feature not built yet
                continue
            raise
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


if __name__ == "__main__":
    sys.exit(main())
