"""``diffinfer structured PART``: the small demos of issue 19's parts (states beyond one tensor
and one noise level), one subcommand per part.

Each part lives in its own module, listed in ``PARTS`` as ``name -> module path``; the module
defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. The modules are
imported only when their part runs, so a part's optional dependency never slows the others."""
from __future__ import annotations

import argparse
import importlib

from .common import add_progress, check_out, seed_int

#: part name -> module defining HELP, add_arguments(parser), run(args)
PARTS: dict[str, str] = {
    "bridges": "diffinfer.demos.bridges",
    "artime": "diffinfer.demos.artime",
    "graphs": "diffinfer.demos.graphs",
    "jointlabel": "diffinfer.demos.jointlabel",
    "forwardmodel": "diffinfer.demos.forwardmodel",
    "routing": "diffinfer.demos.routing",
    "superres": "diffinfer.demos.superres",
    "interpolant2": "diffinfer.demos.interpolant2",
    "lowrank": "diffinfer.demos.lowrank",
}


def _load(name: str):
    return importlib.import_module(PARTS[name])


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("structured", help="demos of per-element times, graph states, bridges, joint labels, ...")
    parts = p.add_subparsers(dest="part", metavar="PART", parser_class=type(p))
    for name in PARTS:
        module = _load(name)
        q = parts.add_parser(name, help=module.HELP)
        q.add_argument("--seed", type=seed_int, default=0)
        q.add_argument("--out", default=None, help="output PNG (optional)")
        add_progress(q)
        module.add_arguments(q)
        q.set_defaults(func=_runner(module))


def _runner(module):
    def run(args) -> int:
        check_out(args.out)
        return module.run(args)
    return run
