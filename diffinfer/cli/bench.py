"""``diffinfer bench ...``: the benchmarks in the repository's ``bench/`` folder.

``diffinfer bench solvers [--quick]`` runs ``bench/solvers.py`` (solvers against diffusers
and k-diffusion per model call). The benchmarks live beside the package in a source
checkout, not in the installed wheel.
"""
from __future__ import annotations

import argparse
import importlib
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the source checkout: diffinfer/cli/bench.py -> .


def _bench_module(name: str):
    if not (ROOT / "bench" / f"{name}.py").exists():
        raise FileNotFoundError(f"bench/{name}.py not found beside the package (run from a source checkout)")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"bench.{name}")


def _run_solvers(args) -> int:
    return _bench_module("solvers").main_from_args(args)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="run a benchmark from bench/ (solvers)")
    bench.set_defaults(func=lambda args: bench.print_help() or 2)
    sub = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    solvers = sub.add_parser("solvers", help="solvers vs diffusers and k-diffusion per model call")
    try:
        _bench_module("solvers").add_arguments(solvers)
    except (FileNotFoundError, ImportError):  # not a source checkout: running it reports why
        pass
    solvers.set_defaults(func=_run_solvers)
