"""Partial information decomposition from denoising errors (DiffusionPID) against exact answers.

For each two-label construction of ``diffinfer.toys.label_information.two_label_mixture``
(xor, copy, unique, independent), the I-MMSE estimates of ``I(x; y1)``, ``I(x; y2)``,
``I(x; y1, y2)`` from the exact mixture denoisers and their minimum-mutual-information PID
(``diffinfer.pid.information_decomposition``), beside the exact values (``H(y) - E H(y|x)``
over 400,000 exact samples). Writes bench/results/pid.{json,md}.

    python bench/pid.py            # about a minute on one thread
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from diffinfer import VP  # noqa: E402
from diffinfer.atomic import write_text  # noqa: E402
from diffinfer.pid import information_decomposition  # noqa: E402
from diffinfer.toys.label_information import (CONSTRUCTIONS, exact_decomposition, label_denoisers,  # noqa: E402
                                              sample_with_components, two_label_mixture)

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
TERMS = ("mi1", "mi2", "mi12", "redundancy", "unique1", "unique2", "synergy")


def run(n: int, n_pairs: int, n_groups: int, seed: int) -> list[dict]:
    rows = []
    for name in CONSTRUCTIONS:
        gm, y1, y2 = two_label_mixture(name)
        x, k = sample_with_components(gm, n, seed)
        t0 = time.perf_counter()
        d = information_decomposition(*label_denoisers(gm, y1, y2, VP()), x, y1[k], y2[k],
                                      n_pairs=n_pairs, n_groups=n_groups, seed=seed)
        sec = time.perf_counter() - t0
        ex = exact_decomposition(gm, y1, y2, n=400_000, seed=seed + 1)
        se_ex = ex["se_mi1"] + ex["se_mi2"] + ex["se_mi12"]  # bounds the SE of any exact term
        row = {"construction": name, "seconds": sec, "se_exact_bound": se_ex}
        for term in TERMS:
            e = getattr(d, term)
            row[term] = {"estimate": e.value, "se": e.se, "exact": ex[term],
                         "z": (e.value - ex[term]) / (e.se ** 2 + se_ex ** 2) ** 0.5}
        rows.append(row)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"PID from denoising errors (VP, exact mixture denoisers, {meta['n']} samples, "
             f"{meta['n_groups']} groups x {meta['n_pairs']} (t, eps) pairs; nats, estimate ± SE / exact; "
             f"minimum-MI redundancy); {meta['seconds']:.0f} s", "",
             "| construction | " + " | ".join(TERMS) + " | worst abs(z) (SEs combined) |", "|---" * (len(TERMS) + 2) + "|"]
    for r in rows:
        cells = [f"{r[t]['estimate']:.3f} ± {r[t]['se']:.3f} / {r[t]['exact']:.3f}" for t in TERMS]
        worst = max(abs(r[t]["z"]) for t in TERMS)
        lines.append(f"| {r['construction']} | " + " | ".join(cells) + f" | {worst:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = run(args.n, args.pairs, args.groups, args.seed)
    meta = {"n": args.n, "n_pairs": args.pairs, "n_groups": args.groups, "seed": args.seed,
            "seconds": time.perf_counter() - t0, "torch_threads": 1}
    write_text(RESULTS / "pid.json", json.dumps({"rows": rows, **meta}, indent=1))
    md = markdown(rows, meta)
    write_text(RESULTS / "pid.md", md)
    print(md)


if __name__ == "__main__":
    main()
