"""Benchmark of the dependency-aware unmasking rules (issue 18 item 2) on the sticky
hidden-Markov oracles of ``bench/mdm.py --hmm``: the leave-one-out rule (``policy="dependency"``)
and speculative unmasking (``policy="speculative"``, exact by construction).

    python bench/mdm_dependency.py          # ~ 4 minutes on one core
    python bench/mdm_dependency.py --quick  # under a minute

For a few thresholds ``tau`` (``k_max = 16`` candidates per step) and, for the speculative rule,
drafts per call ``k_max`` in ``SPECULATIVE_K``: tokens per call (the NFE counts the rules' own
calls), model rows per token, bigram TV and TV of ``(x_i, x_{i+8})`` pairs over the floor of
exact sample sets of the same size, and the NLL error; against random order at the same number
of calls and the dilated order, and the default value rule (fresh draws) against committing
the proposals (``draw="proposal"``). Writes
``bench/results/mdm_dependency.{json,md}``.
"""
from __future__ import annotations

import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.results_io import bench_args, write_results  # noqa: E402
from diffinfer.mdm import decode  # noqa: E402
from diffinfer.mdm.metrics import bigram_tv, nll_per_token, pair_tv  # noqa: E402
from diffinfer.toys.hmm import HiddenMarkovModel  # noqa: E402

SEEDS = (0, 1, 2)  # the oracles of bench/mdm.py --hmm, fixed before any run
LAG, BAR_TV, BAR_NLL = 8, 1.5, 0.02
TAUS, K_MAX = (0.003, 0.01, 0.03, 0.1), 16
PROPOSAL_TAUS = (0.01, 0.03)
SPECULATIVE_K = (4, 8, 16, 32)  # drafts verified per call by policy="speculative"


def run(quick: bool) -> dict:
    L, N = (32, 256) if quick else (64, 1024)
    taus = TAUS[::2] if quick else TAUS
    proposal_taus = PROPOSAL_TAUS[:1] if quick else PROPOSAL_TAUS
    spec_ks = SPECULATIVE_K[1::2] if quick else SPECULATIVE_K
    out = {}
    for seed in SEEDS:
        hmm = HiddenMarkovModel.random(n_hidden=4, n_states=8, stay=0.95, concentration=0.3, seed=seed)
        expected, _ = hmm.nll_estimate(L, n=16384, seed=12345)
        g = torch.Generator().manual_seed(99)
        reps = [hmm.sample(N, L, generator=g) for _ in range(8)]
        fb = sum(bigram_tv(x, hmm) for x in reps) / 8
        fp = sum(pair_tv(x, hmm, LAG) for x in reps) / 8
        rows = []

        def add(label, policy, r):
            tv, ptv, nll = bigram_tv(r.tokens, hmm), pair_tv(r.tokens, hmm, LAG), nll_per_token(r.tokens, hmm)
            row = {"config": label, "policy": policy, "nfe": r.nfe, "tokens_per_nfe": round(r.tokens_per_nfe, 3),
                   "policy_calls": r.policy_calls, "rows_per_token": round(r.model_rows / int(r.decoded_per_row.sum()), 3),
                   "bigram_tv_over_floor": round(tv / fb, 3), "pair_tv_over_floor": round(ptv / fp, 3),
                   "nll_rel_err": round(nll / expected - 1, 4), "wall_s": round(r.wall_time, 2)}
            row["holds"] = bool(tv <= BAR_TV * fb and ptv <= BAR_TV * fp and abs(nll / expected - 1) <= BAR_NLL)
            rows.append(row)
            print(f"[hmm-sticky-{seed}] {label:34s} tpn={row['tokens_per_nfe']:5.2f} rows/tok={row['rows_per_token']:5.2f} "
                  f"bigram/floor={row['bigram_tv_over_floor']:5.2f} pair8/floor={row['pair_tv_over_floor']:5.2f} "
                  f"nll={100 * row['nll_rel_err']:+6.2f}% {'holds' if row['holds'] else ''}", flush=True)

        for tau in taus:
            r = decode(hmm, length=L, batch=N, policy="dependency", tau=tau, k_max=K_MAX, seed=0)
            add(f"dependency tau={tau} k_max={K_MAX}", "dependency", r)
            add(f"random steps={r.nfe} (same NFE)", "random",
                decode(hmm, length=L, batch=N, policy="random", steps=r.nfe, seed=0))
        for tau in proposal_taus:  # the value rule, measured: commit the proposals themselves
            add(f"dependency tau={tau} draw=proposal", "dependency[proposal]",
                decode(hmm, length=L, batch=N, policy="dependency", tau=tau, k_max=K_MAX, draw="proposal", seed=0))
        for k in spec_ks:  # the exact rule: verified drafts (one call per step, k + 1 canvases per call)
            active = []  # [B] per step: the rows that took part in the step's call
            r = decode(hmm, length=L, batch=N, policy="speculative", k_max=k, seed=0,
                       callback=lambda step, tokens, info: active.append(info["commit"].any(-1)))
            add(f"speculative k_max={k}", "speculative", r)
            calls = torch.stack(active).sum(0).double() + 1  # [B]: each row's own calls
            per_row = L / calls  # [B]
            rows[-1]["row_tokens_per_call"] = {"mean": round(float(L / calls.mean()), 2),
                                               "worst_row": round(float(per_row.min()), 2),
                                               "median_row": round(float(per_row.median()), 2)}
            add(f"random steps={r.nfe} (same NFE as k_max={k})", "random",
                decode(hmm, length=L, batch=N, policy="random", steps=r.nfe, seed=0))
        add("dilated", "dilated", decode(hmm, length=L, batch=N, policy="dilated", seed=0))
        add(f"random steps={L} (exact)", "random", decode(hmm, length=L, batch=N, policy="random", steps=L, seed=0))
        out[f"hmm-sticky-{seed}"] = {"length": L, "samples": N, "floor_bigram_tv": fb, "floor_pair_tv": fp,
                                     "expected_nll_per_token": expected, "rows": rows}
    return out


def largest_rate(oracles: dict) -> dict:
    """Per policy: the largest tokens per NFE (the minimum over oracles) among configurations
    that hold on every oracle, or None."""
    names = list(oracles)
    best = {}
    for i, r0 in enumerate(oracles[names[0]]["rows"]):
        same = [oracles[n]["rows"][i] for n in names]
        best.setdefault(r0["policy"], None)
        if all(r["holds"] for r in same):
            rate = min(r["tokens_per_nfe"] for r in same)
            if best[r0["policy"]] is None or rate > best[r0["policy"]][1]:
                best[r0["policy"]] = (r0["config"], rate)
    return best


def markdown(res: dict) -> str:
    lines = ["# Dependency-aware unmasking (leave-one-out and speculative) on hidden-Markov oracles", "",
             f"Command: `{res['command']}` ({res['total_wall_s']} s). Oracles: `HiddenMarkovModel.random(4, 8, stay=0.95, "
             f"concentration=0.3, seed=s)`, s in {list(SEEDS)}. Bar (issue 18): bigram and lag-{LAG} pair TV <= "
             f"{BAR_TV}x their floors (mean of 8 exact sample sets of the same size), NLL within {100 * BAR_NLL:.0f}%, "
             "on every oracle. Tokens/NFE counts the rules' own calls (the leave-one-out call; the speculative "
             "verification call, which is also the next step's call); rows/token counts every canvas pushed "
             "through the model.", "",
             "| policy | largest tokens/NFE that holds on every oracle |", "|---|---|"]
    for p, b in largest_rate(res["oracles"]).items():
        lines.append(f"| {p} | {'none holds' if b is None else f'{b[1]:.2f} ({b[0]})'} |")
    for name, c in res["oracles"].items():
        lines += ["", f"## `{name}` (L={c['length']}, {c['samples']} samples; floors: bigram {c['floor_bigram_tv']:.4f}, "
                  f"pair {c['floor_pair_tv']:.4f})", "",
                  "| config | tokens/NFE | NFE (policy calls) | rows/token | bigram TV / floor | pair TV / floor | NLL error | holds |",
                  "|---|---:|---:|---:|---:|---:|---:|:---:|"]
        for r in c["rows"]:
            lines.append(f"| {r['config']} | {r['tokens_per_nfe']:.2f} | {r['nfe']} ({r['policy_calls']}) | "
                         f"{r['rows_per_token']:.2f} | {r['bigram_tv_over_floor']:.2f} | {r['pair_tv_over_floor']:.2f} | "
                         f"{100 * r['nll_rel_err']:+.2f}% | {'yes' if r['holds'] else 'no'} |")
    lines += ["", "## Speculative unmasking per sequence", "",
              "A batch calls the model until its slowest row is done (the tokens/NFE above); a row's own calls "
              "are the steps it took part in, plus the first call. Tokens per call of the rows:", "",
              "| oracle | k_max | batch tokens/NFE | rows: tokens per mean call | median row | worst row |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, c in res["oracles"].items():
        for r in c["rows"]:
            if "row_tokens_per_call" in r:
                t = r["row_tokens_per_call"]
                lines.append(f"| {name} | {r['config'].split('=')[-1]} | {r['tokens_per_nfe']:.2f} | {t['mean']:.2f} | "
                             f"{t['median_row']:.2f} | {t['worst_row']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = bench_args(__doc__, argv, quick="L = 32, 256 samples, fewer configurations")
    t0 = time.perf_counter()
    res = {"command": "python bench/mdm_dependency.py" + (" --quick" if args.quick else ""), "oracles": run(args.quick)}
    res["total_wall_s"] = round(time.perf_counter() - t0, 1)
    write_results("mdm_dependency_quick" if args.quick else "mdm_dependency", res, markdown(res), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
