"""One way a benchmark records its run: ``NAME.json`` (the raw results) and ``NAME.md`` (the
table the README quotes) under ``bench/results``, both written atomically, and the table printed."""
from __future__ import annotations

import json
import pathlib

from diffinfer.atomic import write_text

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def write_results(name: str, res: dict, markdown: str, out=RESULTS) -> None:
    """Write ``res`` to ``out/NAME.json`` and ``markdown`` to ``out/NAME.md``; print the table."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / f"{name}.json", json.dumps(res, indent=1))
    write_text(out / f"{name}.md", markdown)
    print(markdown)
