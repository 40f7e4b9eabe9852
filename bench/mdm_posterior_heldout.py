"""Held-out check of discrete posterior sampling on sticky HMMs (issue 18's goal: per-position
posterior marginals within 0.03 TV of the exact posterior, averaged over positions).

The first pass (``bench/mdm_posterior.py``) chose its settings on tuning seeds and met the goal
on its ten bench seeds, but on tuning seed 104 the linear-sum problem missed it (0.033-0.036 with
SMC streams 0-1). This bench (1) diagnoses that miss (``--diagnose``: the error against N, beside
the floor of exact draws of the same size), (2) records the settings grid on the tuning seeds
100-109 (``--tune``), and (3) measures the chosen setting ONCE on held-out HMM seeds 300-319,
fixed before any run, with three SMC streams each (default), reporting the worst seed/stream
beside the mean. The problems are those of ``bench/mdm_posterior.py`` (same generators):

- ``channel`` (noisy symmetric channel, eps 0.3) and ``inpaint`` (half the positions exact):
  ``smc+rb`` = ``posterior_smc`` + ``rao_blackwell_marginals``, N = 4096;
- ``sum`` (``y = sum_i x_i + N(0, 1)``): ``smc-cov+rb`` = ``posterior_smc`` with
  ``SumPotential(covariance=value_covariance(...), inflate=SUM_INFLATE)``, ``SUM_N`` particles,
  Rao-Blackwellised; beside it the first pass's setting (N = 4096) with ``--baseline``.

Floors: the same score of as many exact draws (FFBS; for ``sum`` exact joint draws from
``toys.hmm_sum_posterior_sample``), one-hot and Rao-Blackwellised (the RB floor is the floor of
the ``+rb`` rows).

    python bench/mdm_posterior_heldout.py              # held-out seeds 300-319 x 3 streams
    python bench/mdm_posterior_heldout.py --baseline   # + the first pass's N = 4096 on sum
    python bench/mdm_posterior_heldout.py --diagnose   # seed 104: TV against N, floors
    python bench/mdm_posterior_heldout.py --tune       # the settings grid on seeds 100-109
    python bench/mdm_posterior_heldout.py --round2     # channel at N = 16384 on fresh seeds 400-419
    python bench/mdm_posterior_heldout.py --quick      # seconds (tuning seeds 100-101, a smoke run)

Writes ``bench/results/mdm_posterior_heldout{,_diagnose,_tune,_round2,_quick}.{json,md}``.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.mdm_posterior import EPS, GOAL, SUM_SIGMA, problems, sum_observation  # noqa: E402
from bench.results_io import write_results  # noqa: E402
from diffinfer.mdm import (SumPotential, marginal_tv, posterior_smc, rao_blackwell_marginals,  # noqa: E402
                           value_covariance, weighted_marginals)
from diffinfer.toys import (HiddenMarkovModel, hmm_posterior_marginals, hmm_posterior_sample,  # noqa: E402
                            hmm_sum_posterior_marginals, hmm_sum_posterior_sample)

# Fixed BEFORE any run or look at these models (20:50 UTC, issue 18 second pass): the held-out HMM seeds
# and SMC streams. Settings are chosen on tuning seeds 100-109 only; these are measured once.
HELDOUT_SEEDS = tuple(range(300, 320))  # HMM seeds 300-319
HELDOUT_STREAMS = (0, 1, 2)  # SMC seeds (particle streams) per problem
TUNING_SEEDS = tuple(range(100, 110))  # where every setting was chosen
# Round 2, fixed (21:55 UTC) after the held-out run above showed one channel miss at N = 4096 (seed 303,
# stream 0: 0.0436) and BEFORE any run on these seeds: the channel problem with CHANNEL_N2 particles (the sum
# problem's N; not tuned further) measured once on fresh seeds 400-419 x streams 0-2 (`--round2`).
ROUND2_SEEDS = tuple(range(400, 420))
CHANNEL_N2 = 16384

LENGTH = 16
N = 4096  # channel / inpaint particles (the first pass's setting)
SUM_N = 16384  # sum particles, chosen on the tuning seeds (see --tune: best worst and mean TV of the grid)
SUM_INFLATE = 2.0  # the twist's defensive factor, chosen on the tuning seeds (see --tune)
BASELINE_N = 4096  # the first pass's sum setting
DIAGNOSE_SEED, DIAGNOSE_NS, DIAGNOSE_STREAMS = 104, (4096, 8192, 16384), tuple(range(6))
TUNE_GRID = ((4096, 1.0), (4096, 2.0), (4096, 4.0), (8192, 1.0), (8192, 2.0), (8192, 4.0), (16384, 1.0),
             (16384, 2.0))  # (N, inflate) on the sum problem, streams 0-2


def tv(marginals, exact) -> float:
    return float(marginal_tv(marginals, exact).mean())


class SumCase:
    """The ``sum`` problem of one HMM seed: exact marginals, the observation, the covariance."""

    def __init__(self, seed: int, length: int):
        self.hmm = HiddenMarkovModel.random(seed=seed)
        self.length, self.seed = length, seed
        self.y, _ = sum_observation(self.hmm, length, seed)
        self.values = torch.arange(self.hmm.n_states)
        self.exact = hmm_sum_posterior_marginals(self.hmm, length, self.y, SUM_SIGMA, self.values)  # [L, V]
        self.cov = value_covariance(self.hmm, self.values.double(), length)  # 2 model calls

    def potential(self, inflate: float) -> SumPotential:
        return SumPotential(self.values, self.y, SUM_SIGMA, self.length, covariance=self.cov, inflate=inflate)

    def rb(self, tokens, log_weights=None):
        pot = self.potential(1.0)  # the leave-one-out likelihood does not depend on the twist
        return rao_blackwell_marginals(self.hmm, tokens, pot.leave_one_out_likelihood(tokens), log_weights)

    def smc_rb(self, n: int, inflate: float, stream: int) -> tuple[float, int]:
        """TV of ``smc-cov+rb`` and its NFE (SMC steps + 2 covariance calls + L RB calls)."""
        s = posterior_smc(self.hmm, None, n, seed=stream, potential=self.potential(inflate))
        return tv(self.rb(s["tokens"], s["log_weights"]), self.exact), s["nfe"] + 2 + self.length

    def floors(self, n: int, set_seed: int) -> tuple[float, float]:
        """One-hot and RB floors of ``n`` exact joint draws."""
        g = torch.Generator().manual_seed(set_seed)
        d = hmm_sum_posterior_sample(self.hmm, self.length, self.y, SUM_SIGMA, n, self.values, generator=g)
        return tv(weighted_marginals(d, self.hmm.n_states), self.exact), tv(self.rb(d), self.exact)


def smc_rb_rows(hmm, lik, prob: str, seed: int, streams, length: int, n: int) -> list[dict]:
    """``smc+rb`` with ``n`` particles on one per-token problem, one row per SMC stream, beside
    the floors of ``n`` FFBS draws (one-hot and Rao-Blackwellised)."""
    exact = hmm_posterior_marginals(hmm, lik)[0]  # [L, V]
    ffbs = hmm_posterior_sample(hmm, lik, n, torch.Generator().manual_seed(seed))
    floor, rb_floor = tv(weighted_marginals(ffbs, hmm.n_states), exact), \
        tv(rao_blackwell_marginals(hmm, ffbs, lik), exact)
    rows = []
    for stream in streams:
        s = posterior_smc(hmm, lik, n, seed=stream)
        t = tv(rao_blackwell_marginals(hmm, s["tokens"], lik, s["log_weights"]), exact)
        rows.append({"seed": seed, "stream": stream, "problem": prob, "sampler": "smc+rb", "n": n,
                     "tv": t, "floor": floor, "rb_floor": rb_floor, "nfe": s["nfe"] + length})
        print(f"seed {seed} stream {stream} {prob:8s} smc+rb N {n} TV {t:.4f} floor {floor:.4f} "
              f"RB floor {rb_floor:.4f}", flush=True)
    return rows


def heldout(seeds, streams, length: int, n: int, sum_n: int, baseline: bool) -> dict:
    rows = []
    for seed in seeds:
        hmm = HiddenMarkovModel.random(seed=seed)
        for prob, lik in problems(hmm, length, seed).items():
            rows += smc_rb_rows(hmm, lik, prob, seed, streams, length, n)
        case = SumCase(seed, length)
        floor, rb_floor = case.floors(sum_n, seed)
        configs = [("smc-cov+rb", sum_n)] + ([("smc-cov+rb (first pass)", BASELINE_N)] if baseline else [])
        for name, size in configs:
            for stream in streams:
                t, nfe = case.smc_rb(size, SUM_INFLATE if size == sum_n else 1.0, stream)
                f = (floor, rb_floor) if size == sum_n else case.floors(size, seed)
                rows.append({"seed": seed, "stream": stream, "problem": "sum", "sampler": name, "n": size,
                             "tv": t, "floor": f[0], "rb_floor": f[1], "nfe": nfe})
                print(f"seed {seed} stream {stream} sum      {name} N {size} TV {t:.4f} floor {f[0]:.4f} "
                      f"RB floor {f[1]:.4f}", flush=True)
    summary = summarise(rows)
    return {"config": {"seeds": list(seeds), "streams": list(streams), "length": length, "n": n, "sum_n": sum_n,
                       "sum_inflate": SUM_INFLATE, "eps": EPS, "sum_sigma": SUM_SIGMA, "goal": GOAL,
                       "hmm": "HiddenMarkovModel.random(n_hidden=4, n_states=8, stay=0.95, seed=s)"},
            "rows": rows, "summary": summary}


def round2(seeds, streams, length: int, n: int) -> dict:
    """The ``channel`` problem alone, ``smc+rb`` with ``n`` particles (floors of ``n`` FFBS draws)."""
    rows = []
    for seed in seeds:
        hmm = HiddenMarkovModel.random(seed=seed)
        rows += smc_rb_rows(hmm, problems(hmm, length, seed)["channel"], "channel", seed, streams, length, n)
    return {"config": {"seeds": list(seeds), "streams": list(streams), "length": length, "n": n, "sum_n": None,
                       "sum_inflate": None, "eps": EPS, "sum_sigma": SUM_SIGMA, "goal": GOAL,
                       "hmm": "HiddenMarkovModel.random(n_hidden=4, n_states=8, stay=0.95, seed=s)"},
            "rows": rows, "summary": summarise(rows)}


def summarise(rows) -> dict:
    summary = {}
    for key in dict.fromkeys((r["problem"], r["sampler"]) for r in rows):
        sel = [r for r in rows if (r["problem"], r["sampler"]) == key]
        worst = max(sel, key=lambda r: r["tv"])
        summary["/".join(key)] = {
            "n": sel[0]["n"], "nfe": sel[0]["nfe"], "runs": len(sel), "mean_tv": sum(r["tv"] for r in sel) / len(sel),
            "worst_tv": worst["tv"], "worst_seed": worst["seed"], "worst_stream": worst["stream"],
            "over_goal": sum(r["tv"] > GOAL for r in sel), "mean_floor": sum(r["floor"] for r in sel) / len(sel),
            "mean_rb_floor": sum(r["rb_floor"] for r in sel) / len(sel),
            "worst_ratio_to_rb_floor": max(r["tv"] / r["rb_floor"] for r in sel),
            "meets_goal": all(r["tv"] <= GOAL for r in sel)}
    return summary


def heldout_markdown(res: dict) -> str:
    c = res["config"]
    lines = [f"# Held-out discrete posterior sampling on sticky HMMs (seeds {c['seeds'][0]}-{c['seeds'][-1]}, "
             f"SMC streams {c['streams']}, L = {c['length']})", "",
             "Seeds and streams fixed before any run; settings chosen on tuning seeds 100-109 only. Per-position "
             "marginal TV to the exact posterior, averaged over positions; floor: as many exact draws (FFBS; for "
             "`sum` exact joint draws), RB floor: the Rao-Blackwellised estimator on them. Goal: <= "
             f"{c['goal']} on every seed and stream.", "",
             "| problem | sampler | N | NFE | runs | mean TV | worst TV (seed, stream) | runs > goal | mean floor "
             "| mean RB floor | worst TV / RB floor | goal met |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, s in res["summary"].items():
        prob, name = key.split("/")
        lines.append(f"| {prob} | {name} | {s['n']} | {s['nfe']} | {s['runs']} | {s['mean_tv']:.4f} | "
                     f"{s['worst_tv']:.4f} ({s['worst_seed']}, {s['worst_stream']}) | {s['over_goal']} | "
                     f"{s['mean_floor']:.4f} | {s['mean_rb_floor']:.4f} | {s['worst_ratio_to_rb_floor']:.1f} | "
                     f"{'yes' if s['meets_goal'] else 'no'} |")
    if c["sum_n"] is None:
        lines += ["", f"Round 2: the channel problem alone with {c['n']} particles (the sum problem's N), raised after "
                  "the first held-out run's one channel miss at N = 4096 (seed 303, stream 0); these seeds were fixed "
                  "before any run on them."]
    else:
        lines += ["", f"`sum`: y = sum of token ids + N(0, {c['sum_sigma']}^2); `smc-cov+rb`: the covariance twist "
                  f"(`value_covariance`, 2 calls), inflate {c['sum_inflate']}, {c['sum_n']} particles, RB marginals."]
    lines += ["", "Per-seed worst stream (TV over streams):", "",
              "| seed | " + " | ".join(res["summary"]) + " |", "|---|" + "---|" * len(res["summary"])]
    for seed in c["seeds"]:
        cells = []
        for key in res["summary"]:
            tvs = [r["tv"] for r in res["rows"] if r["seed"] == seed and "/".join((r["problem"], r["sampler"])) == key]
            cells.append(f"{max(tvs):.4f}")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def diagnose(seed: int, ns, streams, length: int) -> dict:
    """The miss on one seed's ``sum``: ``smc-cov+rb`` (inflate 1) TV per stream at each N, the TV of
    the streams' averaged marginals (a bias would not shrink with it), and the one-hot and RB
    floors of two exact sets of each size."""
    case = SumCase(seed, length)
    out = []
    for n in ns:
        tvs, margs = [], []
        for stream in streams:
            s = posterior_smc(case.hmm, None, n, seed=stream, potential=case.potential(1.0))
            m = case.rb(s["tokens"], s["log_weights"])
            margs.append(m)
            tvs.append(tv(m, case.exact))
        floors = [case.floors(n, 10 * n + k) for k in range(2)]
        avg = tv(torch.stack(margs).mean(0), case.exact)
        out.append({"n": n, "tv": tvs, "tv_of_stream_average": avg, "floor": [f[0] for f in floors],
                    "rb_floor": [f[1] for f in floors]})
        print(f"N {n}: TV {[round(t, 4) for t in tvs]}, of the average {avg:.4f}, floors {floors}", flush=True)
    return {"config": {"seed": seed, "ns": list(ns), "streams": list(streams), "length": length, "inflate": 1.0},
            "rows": out}


def diagnose_markdown(res: dict) -> str:
    c = res["config"]
    lines = [f"# Diagnosis of the `sum` miss on tuning seed {c['seed']} (`smc-cov+rb`, inflate 1, L = {c['length']})",
             "", "TV per SMC stream; `avg`: TV of the streams' averaged marginals (shrinks with more streams if "
             "the miss is Monte-Carlo error, would not if it were bias); floors: two exact joint sets of size N.", "",
             "| N | " + " | ".join(f"stream {s}" for s in c["streams"]) + " | mean | avg | floor (2 sets) "
             "| RB floor (2 sets) |", "|---|" + "---|" * (len(c["streams"]) + 4)]
    for r in res["rows"]:
        lines.append(f"| {r['n']} | " + " | ".join(f"{t:.4f}" for t in r["tv"]) +
                     f" | {sum(r['tv']) / len(r['tv']):.4f} | {r['tv_of_stream_average']:.4f} | "
                     f"{r['floor'][0]:.4f}, {r['floor'][1]:.4f} | {r['rb_floor'][0]:.4f}, {r['rb_floor'][1]:.4f} |")
    return "\n".join(lines) + "\n"


def tune(seeds, grid, streams, length: int) -> dict:
    """``smc-cov+rb`` on the ``sum`` problem of the tuning seeds for each ``(N, inflate)``."""
    rows = []
    for seed in seeds:
        case = SumCase(seed, length)
        for n, inflate in grid:
            for stream in streams:
                t0 = time.perf_counter()
                t, nfe = case.smc_rb(n, inflate, stream)
                rows.append({"seed": seed, "stream": stream, "n": n, "inflate": inflate, "tv": t, "nfe": nfe,
                             "seconds": time.perf_counter() - t0})
                print(f"seed {seed} N {n} inflate {inflate} stream {stream} TV {t:.4f}", flush=True)
    summary = []
    for n, inflate in grid:
        sel = [r for r in rows if r["n"] == n and r["inflate"] == inflate]
        worst = max(sel, key=lambda r: r["tv"])
        summary.append({"n": n, "inflate": inflate, "mean_tv": sum(r["tv"] for r in sel) / len(sel),
                        "worst_tv": worst["tv"], "worst_seed": worst["seed"], "worst_stream": worst["stream"],
                        "over_goal": sum(r["tv"] > GOAL for r in sel),
                        "seconds": sum(r["seconds"] for r in sel) / len(sel)})
    return {"config": {"seeds": list(seeds), "streams": list(streams), "length": length, "goal": GOAL},
            "rows": rows, "summary": summary}


def tune_markdown(res: dict) -> str:
    c = res["config"]
    lines = [f"# `sum` settings grid on tuning seeds {c['seeds'][0]}-{c['seeds'][-1]} (streams {c['streams']}, "
             f"L = {c['length']})", "", "| N | inflate | mean TV | worst TV (seed, stream) | runs > goal "
             "| s / run (SMC + RB, one core) |", "|---|---|---|---|---|---|"]
    for s in res["summary"]:
        lines.append(f"| {s['n']} | {s['inflate']} | {s['mean_tv']:.4f} | {s['worst_tv']:.4f} ({s['worst_seed']}, "
                     f"{s['worst_stream']}) | {s['over_goal']} | "
                     f"{'-' if s.get('seconds') is None else format(s['seconds'], '.1f')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="two TUNING seeds (never held-out ones), one stream, N = 512, L = 12")
    mode.add_argument("--diagnose", action="store_true", help="seed 104's sum miss against N")
    mode.add_argument("--tune", action="store_true", help="the sum settings grid on tuning seeds 100-109")
    mode.add_argument("--round2", action="store_true", help="channel, N = 16384, on fresh seeds 400-419")
    ap.add_argument("--baseline", action="store_true", help="also the first pass's N = 4096 on sum")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.diagnose:
        res = diagnose(DIAGNOSE_SEED, DIAGNOSE_NS, DIAGNOSE_STREAMS, LENGTH)
        name, md = "mdm_posterior_heldout_diagnose", diagnose_markdown
    elif args.tune:
        res = tune(TUNING_SEEDS, TUNE_GRID, HELDOUT_STREAMS, LENGTH)
        name, md = "mdm_posterior_heldout_tune", tune_markdown
    elif args.round2:
        res = round2(ROUND2_SEEDS, HELDOUT_STREAMS, LENGTH, CHANNEL_N2)
        name, md = "mdm_posterior_heldout_round2", heldout_markdown
    elif args.quick:
        res = heldout(TUNING_SEEDS[:2], HELDOUT_STREAMS[:1], 12, 512, 512, args.baseline)
        name, md = "mdm_posterior_heldout_quick", heldout_markdown
    else:
        res = heldout(HELDOUT_SEEDS, HELDOUT_STREAMS, LENGTH, N, SUM_N, args.baseline)
        name, md = "mdm_posterior_heldout", heldout_markdown
    res["seconds"] = time.perf_counter() - t0
    text = md(res) + f"\nWall time: {res['seconds']:.0f} s on one core.\n"
    write_results(name, res, text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
