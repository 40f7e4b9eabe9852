"""The ``diffinfer`` command, one module per subcommand.

Each module in ``COMMAND_MODULES`` defines ``add_commands(subparsers)`` and sets ``func`` on
its parsers; ``common`` holds the shared argument helpers (the input contract). The
commands run the library (``diffinfer``, ``diffinfer.zoo``, ``diffinfer.viz``); nothing in
the library imports them.

Exit status: 0 done; 2 a bad option value or input (one line naming it and what is valid);
1 a project error at run time (a broken checkpoint, a model output check, an OS error on
an output), one line; 130 interrupted. ``--debug`` (anywhere) shows the traceback instead."""
from __future__ import annotations

import sys

from . import bench, decode, demo, forecast, generate, restore, sample, scale, serve, solvers, structured, train
from .common import OneLineParser

#: subcommand modules in the order of ``diffinfer --help``
COMMAND_MODULES = (solvers, sample, generate, demo, train, decode, restore, forecast, structured, scale, bench,
                   serve)


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="diffinfer", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also accepted after the command)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for module in COMMAND_MODULES:
        module.add_commands(sub)
    return parser


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 2000 else text[:2000] + " ..."


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ..denoiser import ModelOutputError
    from ..train import TrainingInterrupted
    from ..zoo.checkpoints import ZooError
    name = " ".join(filter(None, [args.command, getattr(args, "benchmark", None), getattr(args, "part", None)]))
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        if debug:
            raise
        if isinstance(e, TrainingInterrupted):
            print(f"diffinfer {name}: {_one_line(e)}", file=sys.stderr)
            return 130
        if isinstance(e, (ZooError, ModelOutputError, FloatingPointError)):
            status = 1
        elif isinstance(e, (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError)):
            status = 2
        elif isinstance(e, OSError):
            status = 1
        else:
            print(f"diffinfer {name}: internal error: {type(e).__name__}: {_one_line(e)} "
                  f"(rerun with --debug for the traceback)", file=sys.stderr)
            return 1
        print(f"diffinfer {name}: error: {_one_line(e)}", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"diffinfer {name}: interrupted", file=sys.stderr)
        return 130
