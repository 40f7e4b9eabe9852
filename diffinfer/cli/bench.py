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
    from .common import UsageError
    module = _bench_module("solvers")
    valid = list(getattr(module, "TOY_MODELS", [])) + ["digits"]
    unknown = [m for m in (getattr(args, "models", None) or []) if m not in valid]
    if unknown:
        raise UsageError(f"unknown --models {unknown}; valid: {', '.join(valid)}")
    out = getattr(args, "out", None)
    if out is not None and pathlib.Path(out).exists() and not pathlib.Path(out).is_dir():
        raise UsageError(f"--out {out!r} is a file; give a directory")
    return module.main_from_args(args)


#: bench options whose values the input contract checks while parsing (dest -> argparse type)
def _checked_types() -> dict:
    from .common import int_in
    return {"n_eval": int_in(1, 100_000)}


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="run a benchmark from bench/ (solvers)")
    bench.set_defaults(func=lambda args: bench.print_help() or 2)
    sub = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    solvers = sub.add_parser("solvers", help="solvers vs diffusers and k-diffusion per model call")
    try:
        _bench_module("solvers").add_arguments(solvers)
    except (FileNotFoundError, ImportError):  # not a source checkout: running it reports why
        pass
    checked = _checked_types()
    for action in solvers._actions:
        if action.dest in checked:
            action.type = checked[action.dest]
    solvers.set_defaults(func=_run_solvers)
