"""Benchmark of discrete posterior sampling with a masked-diffusion prior (issue 18, item 3).

The prior is a sticky hidden Markov model (``toys.HiddenMarkovModel.random``), used as an
exact masked model; the posterior under a per-position observation is exact by
forward-backward (``toys.hmm_posterior_marginals``). Two inverse problems per model, on an
exact draw ``x``:

- ``channel``: a noisy symmetric channel, each token kept with probability ``1 - eps``, else
  replaced by one of the others uniformly;
- ``inpaint``: half the positions observed exactly, the rest unobserved;
- ``sum``: ``y = sum_i x_i + N(0, 1)`` (token values = ids), which does not factorise over
  positions (exact marginals on the augmented running-sum chain, ``toys.hmm_sum_posterior_marginals``).

Samplers (``diffinfer.mdm.posterior``), each with ``N`` samples / particles:

- ``tilt``: ``mdm.decode`` on ``LikelihoodTilt`` in random order, one token per call;
- ``tilt+rcr``: the same with running-confidence remasking (the anchored-remasking flavour
  of APS on the decode loop's ``rcr`` policy);
- ``smc``: ``posterior_smc`` (the tilt as proposal, weights = tilt normalisers);
- ``smc+rb``: the same particles, marginals Rao-Blackwellised (``rao_blackwell_marginals``:
  each position's exact tilted conditional given the rest of its particle, ``L`` more calls);
- ``aps``: Anchored Posterior Sampling (``mdm.aps_sample``: quantized-expectation guidance, which
  is the exact tilt here, with anchored remasking), ``aps-noremask`` without the remasking.

Exact constraints (inpainting) are written into the canvas (``clamped_canvas``) for every sampler.
On ``sum``: ``prior+is`` (prior draws weighted by the likelihood), ``aps`` (value codebook),
``smc`` with ``SumPotential`` (moment-matched twisting) and ``smc+rb`` (its leave-one-out
likelihood), ``smc-cov`` with the correlation-aware twist (``value_covariance``), ``+rb``, and
``+move+rb`` (Gibbs sweeps, ``posterior_gibbs``, before the RB estimate); the floor there is ``N``
exact per-position draws from the exact marginals (the same law of counts as ``N`` joint draws).

Score: total variation between each sampler's per-position token marginals and the exact
posterior marginals, averaged over positions; the floor is the same score of ``N`` exact
posterior draws (FFBS). Goal (issue 18): at most 0.03 on every problem.

    python bench/mdm_posterior.py           # about 13 minutes on one shared core (10 seeds)
    python bench/mdm_posterior.py --quick   # under a minute

Writes ``bench/results/mdm_posterior.json`` and ``bench/results/mdm_posterior.md``.
"""
from __future__ import annotations

import pathlib
import sys

import torch
from torch import Tensor

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.results_io import bench_args, write_results  # noqa: E402
from diffinfer.mdm import (LikelihoodTilt, SumPotential, aps_sample, channel_codebook, clamped_canvas,  # noqa: E402
                           decode, marginal_tv, posterior_gibbs, posterior_smc, rao_blackwell_marginals,
                           sum_codebook, value_covariance, weighted_marginals)
from diffinfer.toys import (HiddenMarkovModel, hmm_posterior_marginals, hmm_posterior_sample,  # noqa: E402
                            hmm_sum_posterior_marginals, inpainting_likelihood, symmetric_channel_likelihood)

GOAL = 0.03
SEEDS = tuple(range(10))  # HMM seeds, fixed before any run (0-4 first, 5-9 added with the covariance twist,
# whose settings were chosen on seeds 100-109); observation seed = 1000 + seed (2000 + seed for `sum`)
GIBBS_SWEEPS = 2  # the `+move` rows: exact-conditional Gibbs sweeps after the last SMC step
EPS = 0.3
SUM_SIGMA = 1.0  # the linear-sum observation's noise; token values are the token ids


def problems(hmm: HiddenMarkovModel, length: int, seed: int) -> dict:
    """The observation likelihoods ``[L, V]`` of the two inverse problems on one exact draw."""
    g = torch.Generator().manual_seed(1000 + seed)
    V = hmm.n_states
    x = hmm.sample(1, length, generator=g)[0]
    flip = torch.rand(length, generator=g) < EPS
    other = (x + torch.randint(1, V, (length,), generator=g)) % V  # uniform over the other tokens
    y = torch.where(flip, other, x)
    observed = torch.randperm(length, generator=g)[: length // 2]
    mask = torch.zeros(length, dtype=torch.bool)
    mask[observed] = True
    return {"channel": symmetric_channel_likelihood(y, V, EPS), "inpaint": inpainting_likelihood(x, mask, V)}


def samplers(hmm, lik, n: int, length: int, seed: int) -> dict:
    """Each sampler's ``(marginals [L, V], nfe)``; exact constraints are clamped into the canvas."""
    out = {}
    canvas = clamped_canvas(hmm, lik).expand(n, length)
    for name, policy in (("tilt", "random"), ("tilt+rcr", "rcr")):
        steps = int((canvas == hmm.mask_id).sum(-1).max())  # one token per call
        r = decode(LikelihoodTilt(hmm, lik), canvas=canvas, policy=policy, steps=steps, seed=seed)
        out[name] = (weighted_marginals(r.tokens, hmm.n_states), r.nfe)
    codebook, log_lik = channel_codebook(lik, hmm.n_states)
    for name, remask in (("aps", True), ("aps-noremask", False)):
        r = aps_sample(hmm, codebook, log_lik, n, canvas=canvas, steps=steps, seed=seed, remask=remask)
        out[name] = (weighted_marginals(r.tokens, hmm.n_states), r.nfe)
    s = posterior_smc(hmm, lik, n, seed=seed)
    out["smc"] = (weighted_marginals(s["tokens"], hmm.n_states, s["log_weights"]), s["nfe"])
    rb = rao_blackwell_marginals(hmm, s["tokens"], lik, s["log_weights"])
    out["smc+rb"] = (rb, s["nfe"] + length)
    return out


def sum_observation(hmm, length: int, seed: int) -> tuple[float, torch.Generator]:
    """``y = sum_i x_i + N(0, SUM_SIGMA^2)`` of an exact draw (generator seed ``2000 + seed``), and
    the generator, which the floor's draws continue."""
    g = torch.Generator().manual_seed(2000 + seed)
    x = hmm.sample(1, length, generator=g)[0]
    return float(x.sum()) + SUM_SIGMA * float(torch.randn((), generator=g, dtype=torch.float64)), g


def sum_problem(hmm, n: int, length: int, seed: int) -> tuple[dict, Tensor, float]:
    """The linear-sum observation ``y = sum_i x_i + N(0, SUM_SIGMA^2)`` of an exact draw: each
    sampler's ``(marginals, nfe)``, the exact marginals and the one-hot floor."""
    y, g = sum_observation(hmm, length, seed)
    values = torch.arange(hmm.n_states)
    exact = hmm_sum_posterior_marginals(hmm, length, y, SUM_SIGMA, values)  # [L, V]
    pot = SumPotential(values, y, SUM_SIGMA, length)
    draws = torch.multinomial(exact, n, replacement=True, generator=g).T  # [N, L]: exact per-position draws
    floor = float(marginal_tv(weighted_marginals(draws, hmm.n_states), exact).mean())
    out = {}
    prior = decode(hmm, length=length, batch=n, policy="random", seed=seed).tokens
    log_w = pot.final(prior, hmm.vocab_size, hmm.mask_id)  # importance sampling from the prior
    out["prior+is"] = (weighted_marginals(prior, hmm.n_states, log_w), length)
    codebook, log_lik = sum_codebook(values, y, SUM_SIGMA)
    r = aps_sample(hmm, codebook, log_lik, n, length=length, steps=length, seed=seed)
    out["aps"] = (weighted_marginals(r.tokens, hmm.n_states), r.nfe)
    s = posterior_smc(hmm, None, n, seed=seed, potential=pot)
    out["smc"] = (weighted_marginals(s["tokens"], hmm.n_states, s["log_weights"]), s["nfe"])
    rb = rao_blackwell_marginals(hmm, s["tokens"], pot.leave_one_out_likelihood(s["tokens"]), s["log_weights"])
    out["smc+rb"] = (rb, s["nfe"] + length)
    # the correlation-aware twist: the prior covariance of the values from two model calls
    cov_pot = SumPotential(values, y, SUM_SIGMA, length, covariance=value_covariance(hmm, values.double(), length))
    s = posterior_smc(hmm, None, n, seed=seed, potential=cov_pot)
    nfe = s["nfe"] + 2
    out["smc-cov"] = (weighted_marginals(s["tokens"], hmm.n_states, s["log_weights"]), nfe)
    rb = rao_blackwell_marginals(hmm, s["tokens"], cov_pot.leave_one_out_likelihood(s["tokens"]), s["log_weights"])
    out["smc-cov+rb"] = (rb, nfe + length)
    moved = posterior_gibbs(hmm, s["tokens"], None, GIBBS_SWEEPS, seed=seed, potential=cov_pot)
    rb = rao_blackwell_marginals(hmm, moved, cov_pot.leave_one_out_likelihood(moved), s["log_weights"])
    out["smc-cov+move+rb"] = (rb, nfe + (GIBBS_SWEEPS + 1) * length)
    return out, exact, floor


def run(n: int, length: int, seeds) -> dict:
    rows = []
    for seed in seeds:
        hmm = HiddenMarkovModel.random(seed=seed)
        for prob, lik in problems(hmm, length, seed).items():
            exact = hmm_posterior_marginals(hmm, lik)[0]  # [L, V]
            ffbs = hmm_posterior_sample(hmm, lik, n, torch.Generator().manual_seed(seed))
            floor = float(marginal_tv(weighted_marginals(ffbs, hmm.n_states), exact).mean())
            rb_floor = float(marginal_tv(rao_blackwell_marginals(hmm, ffbs, lik), exact).mean())
            for name, (marg, nfe) in samplers(hmm, lik, n, length, seed).items():
                tv = float(marginal_tv(marg, exact).mean())
                rows.append({"seed": seed, "problem": prob, "sampler": name, "tv": tv, "floor": floor,
                             "rb_floor": rb_floor, "nfe": nfe})
                print(f"seed {seed} {prob:8s} {name:9s} TV {tv:.4f} floor {floor:.4f} RB floor {rb_floor:.4f}",
                      flush=True)
        samples, exact, floor = sum_problem(hmm, n, length, seed)
        for name, (marg, nfe) in samples.items():
            tv = float(marginal_tv(marg, exact).mean())
            rows.append({"seed": seed, "problem": "sum", "sampler": name, "tv": tv, "floor": floor,
                         "rb_floor": float("nan"), "nfe": nfe})
            print(f"seed {seed} sum      {name:15s} TV {tv:.4f} floor {floor:.4f}", flush=True)
    summary = {}
    pp = ("tilt", "tilt+rcr", "aps", "aps-noremask", "smc", "smc+rb")
    for prob, names in (("channel", pp), ("inpaint", pp),
                        ("sum", ("prior+is", "aps", "smc", "smc+rb", "smc-cov", "smc-cov+rb", "smc-cov+move+rb"))):
        for name in names:
            sel = [r for r in rows if r["problem"] == prob and r["sampler"] == name]
            worst = max(sel, key=lambda r: r["tv"])
            summary[f"{prob}/{name}"] = {
                "mean_tv": sum(r["tv"] for r in sel) / len(sel), "worst_tv": worst["tv"],
                "worst_seed": worst["seed"], "mean_floor": sum(r["floor"] for r in sel) / len(sel),
                "mean_rb_floor": sum(r["rb_floor"] for r in sel) / len(sel),
                "meets_goal": all(r["tv"] <= GOAL for r in sel), "nfe": sel[0]["nfe"],
                "worst_tv_0_4": max(r["tv"] for r in sel if r["seed"] < 5),
                "worst_tv_5_9": max((r["tv"] for r in sel if r["seed"] >= 5), default=float("nan"))}
    return {"config": {"n": n, "length": length, "seeds": list(seeds), "eps": EPS, "goal": GOAL,
                       "hmm": "HiddenMarkovModel.random(n_hidden=4, n_states=8, stay=0.95, seed=s)"},
            "sum_sigma": SUM_SIGMA, "rows": rows, "summary": summary}


def markdown(res: dict) -> str:
    c = res["config"]
    lines = [f"# Discrete posterior sampling on sticky HMMs (N = {c['n']}, L = {c['length']}, "
             f"seeds {c['seeds']}, channel eps = {c['eps']})", "",
             "Per-position marginal TV to the exact posterior, averaged over positions; floor: "
             f"{c['n']} exact FFBS draws (RB floor: the Rao-Blackwellised estimator on those draws, the floor "
             "of `smc+rb`). Goal: <= " f"{c['goal']} on every seed.", "",
             "| problem | sampler | NFE | mean TV | worst TV (seed) | worst seeds 0-4 | worst seeds 5-9 | mean floor "
             "| mean RB floor | goal met |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, s in res["summary"].items():
        prob, name = key.split("/")
        rb_floor = "-" if prob == "sum" else f"{s['mean_rb_floor']:.4f}"
        lines.append(f"| {prob} | {name} | {s['nfe']} | {s['mean_tv']:.4f} | {s['worst_tv']:.4f} "
                     f"({s['worst_seed']}) | {s['worst_tv_0_4']:.4f} | {s['worst_tv_5_9']:.4f} | "
                     f"{s['mean_floor']:.4f} | {rb_floor} | "
                     f"{'yes' if s['meets_goal'] else 'no'} |")
    floors = {r["seed"]: r["floor"] for r in res["rows"] if r["problem"] == "sum"}
    lines += ["", f"`sum`: y = sum of token ids + N(0, {res['sum_sigma']}^2); its floor is {c['n']} exact "
              "per-position draws from the exact marginals; no RB floor computed there. `smc-cov`: the twist "
              "with the prior covariance of the values (`value_covariance`, 2 calls); `+move`: "
              f"{GIBBS_SWEEPS} exact-conditional Gibbs sweeps (`posterior_gibbs`) before the RB estimate. "
              "`aps`: quantized expectation + anchored remasking (`aps_sample`, a heuristic); "
              "`aps-noremask`: the same guidance, confidence order without remasking.", "",
              "Per-seed `sum` TV (floor):", "",
              "| seed | floor | " + " | ".join(n for n in ("smc+rb", "smc-cov+rb", "smc-cov+move+rb")) + " |",
              "|---|---|---|---|---|"]
    for seed in sorted(floors):
        tvs = {r["sampler"]: r["tv"] for r in res["rows"] if r["problem"] == "sum" and r["seed"] == seed}
        lines.append(f"| {seed} | {floors[seed]:.4f} | {tvs['smc+rb']:.4f} | {tvs['smc-cov+rb']:.4f} | "
                     f"{tvs['smc-cov+move+rb']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = bench_args(__doc__, argv, quick="N=512, L=12, two seeds")
    res = run(512, 12, SEEDS[:2]) if args.quick else run(4096, 16, SEEDS)
    write_results("mdm_posterior_quick" if args.quick else "mdm_posterior", res, markdown(res), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
