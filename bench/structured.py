"""Figures of issue 19's parts (per-element times, graph states, bridges, joint label diffusion,
training through a forward model, low-rank learning, model-side parts), one module per part.

Each part is ``bench/structured_<name>.py`` with ``main(argv) -> int`` that writes
``bench/results/structured_<name>.{json,md}``; this script runs the parts named (default: all).

    python bench/structured.py                 # every part
    python bench/structured.py graphs bridges  # some parts
"""
from __future__ import annotations

import importlib
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout without installing

#: part names, each with bench/structured_<name>.py
PARTS: tuple[str, ...] = (
    "bridges",
    "artime",
    "graphs",
    "jointlabel",
    "forwardmodel",
    "routing",
    "superres",
    "interpolant2",
    "lowrank",
)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = [a for a in argv if not a.startswith("-")] or list(PARTS)
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        print(f"unknown parts {unknown}; valid: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    flags = [a for a in argv if a.startswith("-")]
    for name in names:
        print(f"== {name}")
        status = importlib.import_module(f"bench.structured_{name}").main(flags)
        if status:
            return status
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
