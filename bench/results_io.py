"""One way a benchmark takes its options and records its run: ``--quick`` and ``--out`` on one
thread (``bench_args``); ``NAME.json`` (the raw results) and ``NAME.md`` (the table the README
quotes) under ``bench/results``, both written atomically, and the table printed."""
from __future__ import annotations

import argparse
import json
import pathlib

import torch

from diffinfer.atomic import write_text

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def bench_args(doc: str, argv=None, quick: str = "a smaller run") -> argparse.Namespace:
    """Parse a benchmark's ``--quick`` (help: ``quick``) and ``--out`` (default ``bench/results``)
    with its docstring's first line as the description, and run torch on one thread."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    return args


def write_results(name: str, res: dict, markdown: str, out=RESULTS) -> None:
    """Write ``res`` to ``out/NAME.json`` and ``markdown`` to ``out/NAME.md``; print the table."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{name}.json", json.dumps(res, indent=1))
    write_text(out / f"{name}.md", markdown)
    print(markdown)
