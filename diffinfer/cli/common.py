"""Argument helpers shared by the subcommands."""
from __future__ import annotations

import json


def parse_options(pairs: list[str]) -> dict:
    """``["eta=1.0", "variant=bh1"]`` -> ``{"eta": 1.0, "variant": "bh1"}`` (JSON values where they parse)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"solver option {pair!r} is not KEY=VALUE")
        k, v = pair.split("=", 1)
        try:
            out[k.replace("-", "_")] = json.loads(v)
        except json.JSONDecodeError:
            out[k.replace("-", "_")] = v
    return out
