"""``diffinfer solvers``: the registered solvers with their order and stochasticity."""
from __future__ import annotations

import argparse

from .. import solvers


def cmd_solvers(args) -> int:
    rows = solvers.describe()
    width = max(len(r["name"]) for r in rows)
    print(f"{'solver':<{width}}  order  stochastic  summary")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['order']:>5}  {str(r['stochastic']):>10}  {r['summary']}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("solvers", help="list solvers with their order and stochasticity")
    p.set_defaults(func=cmd_solvers)
