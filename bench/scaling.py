"""Inference-time scaling benchmark: reward and distance to the exact tilted target vs cost.

    python bench/scaling.py [--quick]

Cost is per-sample NFE plus verifier calls (``ScalingResult.cost``). Problems:

- ``tilted-2d``: ``diffinfer.toys.tilted.tilted_example`` (3 modes, a linear measurement);
- ``tilted-8d``: a mixture of 4 low-rank Gaussians in 8-D with a 2-row measurement;
- ``digits`` with ``class:7`` (skipped when the bundled checkpoints are missing).

Search methods (one returned sample, reward averaged over seeds) are compared with
best-of-N: the bar is a method reaching best-of-N's mean reward at its largest budget
with at least 5x less cost; on digits the passing method is rerun on 48 other seeds
(``HELD_OUT_SEEDS``) to show whether the bar holds beyond the benchmark's 16. Sampling methods (SMC, DTS) are scored by their distance to
the exact tilted target (mean, covariance, mode weights, sliced Wasserstein) against
cost, with the tolerances of ``tests/test_scaling_smc.py``.

Writes ``bench/results/scaling.{json,md}`` and ``scaling_*.png``.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from diffinfer import VP, RectifiedFlow, metrics  # noqa: E402
from diffinfer.scaling import run  # noqa: E402
from diffinfer.toys.gaussian_mixture import molrg  # noqa: E402
from diffinfer.toys.tilted import LinearGaussianReward, mode_fractions, tilt, tilted_example  # noqa: E402

F64 = torch.float64
RESULTS = pathlib.Path(__file__).parent / "results"
SEARCH = ["best-of-n", "random-search", "zero-order", "paths", "dts*", "rbf", "guided-search", "noise-opt"]
TOL = {"mean": 0.06, "cov": 0.08, "weights": 0.03}
OPTIONS = {"rbf": {"chunk": 4}}  # RBF draws its candidates four at a time


def problems():
    prior, reward, target = tilted_example(1.0)
    yield "tilted-2d", prior, reward, target
    prior = molrg(dim=8, rank=2, n_components=4, noise_var=0.02, seed=3)
    prior.means = torch.randn(4, 8, dtype=F64, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(5)
    reward = LinearGaussianReward(torch.randn(2, 8, dtype=F64, generator=g) / math.sqrt(8),
                                  torch.tensor([1.0, -1.0], dtype=F64), 0.5)
    yield "tilted-8d", prior, reward, tilt(prior, reward, 1.0)


def search_curves(name, prior, reward, budgets, seeds, steps):
    rows = []
    for method in SEARCH:
        process = RectifiedFlow() if method == "rbf" else VP()
        den = prior.denoiser(process)
        for b in budgets:
            t0 = time.perf_counter()
            rs, costs = [], []
            for s in range(seeds):
                res = run(method, den, reward, b, (prior.dim,), steps=steps, seed=1000 + s, dtype=F64,
                          **OPTIONS.get(method, {}))
                rs.append(float(res.reward.double().max()))
                costs.append(res.cost)
            rows.append({"problem": name, "method": method, "steps": steps, "budget": b, "mean_reward": sum(rs) / len(rs),
                         "mean_cost": sum(costs) / len(costs), "seconds": time.perf_counter() - t0})
    return rows


def bar(rows, problem, reference=None):
    """Cost ratio: best-of-N's cost at its largest budget over the least cost at which
    another method's mean reward reaches best-of-N's reward there. ``reference`` (a row) is
    best-of-N's strongest run at that budget when several step counts were tried."""
    bon = [r for r in rows if r["problem"] == problem and r["method"] == "best-of-n"]
    top = reference or max(bon, key=lambda r: r["budget"])
    best = {"method": None, "ratio": 0.0}
    methods = sorted({r["method"] for r in rows if r["problem"] == problem} - {"best-of-n"})
    for m in methods:
        ok = [r for r in rows if r["problem"] == problem and r["method"] == m and r["mean_reward"] >= top["mean_reward"]]
        if ok:
            first = min(ok, key=lambda r: r["mean_cost"])
            ratio = top["mean_cost"] / first["mean_cost"]
            if ratio > best["ratio"]:
                best = {"method": m, "ratio": ratio, "cost": first["mean_cost"], "budget": first["budget"]}
    return {"problem": problem, "best_of_n_reward": top["mean_reward"], "best_of_n_cost": top["mean_cost"],
            "best_of_n_steps": top.get("steps"), **best, "passes": best["ratio"] >= 5.0}


def target_errors(x, target):
    return {"mean": float((x.mean(0) - target.mean()).abs().max()),
            "cov": float((torch.cov(x.T) - target.covariance()).abs().max()),
            "weights": float((mode_fractions(target, x) - target.weights).abs().max()),
            "sliced_w2": metrics.sliced_wasserstein(x, target.sample(x.shape[0], seed=99))}


def smc_samples(den, reward, n: int, seed: int):
    """SMC with ``n`` particles and 100 DDPM steps on the 2-D tilted problem."""
    return run("smc", den, reward, 2 * n * 100, (2,), steps=100, seed=seed, dtype=F64)


def sampling_curves(prior, reward, target, particles, rollouts, seeds):
    """Rows of target errors per SMC size and DTS rollouts, and the SMC samples by ``(n, seed)``."""
    den = prior.denoiser(VP())
    rows, samples = [], {}
    for n in particles:
        for s in range(seeds):
            res = smc_samples(den, reward, n, s)
            samples[(n, s)] = res.x
            rows.append({"method": "smc (ddpm, 100 steps)", "size": n, "seed": s, "cost": res.cost,
                         **target_errors(res.x, target)})
    from diffinfer.scaling.tree import DiffusionTree
    for s in range(seeds):
        tree = DiffusionTree(den, reward, (2,), lam=1.0, steps=100, stride=25, seed=s, dtype=F64)
        for r in rollouts:
            tree.grow(r - len(tree.leaves), batch=128)
            rows.append({"method": "dts (ddpm, 100 steps)", "size": r, "seed": s,
                         "cost": tree.nfe + tree.verifier_calls, **target_errors(tree.sample(4000), target)})
    return rows, samples


def summarise(rows):
    out = {}
    for r in rows:
        key = (r["method"], r["size"])
        out.setdefault(key, []).append(r)
    summary = []
    for (m, size), rs in out.items():
        worst = {k: max(x[k] for x in rs) for k in ("mean", "cov", "weights", "sliced_w2")}
        summary.append({"method": m, "size": size, "mean_cost": sum(x["cost"] for x in rs) / len(rs), **worst,
                        "within_tolerance": all(worst[k] < TOL[k] for k in TOL)})
    return summary


# Digits search methods: (label, method, sampler steps, options). Every cost counts each model
# call and each verifier call. "paths" is Ma et al.'s setting; the tuned row searches the
# 8-step grid from its 4th level (t = 0.44, where the digit's class is settled), keeps the best
# 2 of the candidates each round, and refines the best clean sample at the end. "guided-search"
# proposes samples with reward-gradient guidance at t >= 0.4 (a guided step costs 3 NFE and 3
# verifier calls) and refines the best 2 by path search (``scaling.search.guided_search``); its
# settings were picked on seeds 200-231, none of the benchmark's (the normalised step's scale
# 1.0: mean reward -4.711e-05 at budget 330 there, against -5.643e-05 at 0.5, -8.336e-05 at 2
# and -4.973e-05 at 3; the library default 0.3 reaches -0.1953 at budget 350).
DIGITS_METHODS = [
    ("best-of-n", "best-of-n", 10, {}),
    ("zero-order", "zero-order", 10, {}),
    ("paths", "paths", 10, {}),
    ("paths-refine (8 steps)", "paths", 8, {"start": 3, "forward": 1, "backward": 2, "branch": 4, "keep": 2,
                                            "refine": 5, "refine_forward": 3}),
    ("smc", "smc", 10, {}),
    ("guided-search (8 steps)", "guided-search", 8, {"scale": 1.0}),
    ("random-search", "random-search", 10, {}),
    ("dts*", "dts*", 10, {}),
    ("rbf", "rbf", 10, {"chunk": 4}),
    ("noise-opt", "noise-opt", 10, {}),
]
# guided-search meets the bar below 350 (larger budgets cost ~50 s); the methods added for
# coverage run up to 440 to keep the bench within 10 minutes
DIGITS_MAX_BUDGET = {"guided-search (8 steps)": 350, "random-search": 440, "dts*": 440, "rbf": 440, "noise-opt": 440}
BON_STEPS = (5, 8)  # best-of-N is also run with these step counts at its largest budget


def digits_problem():
    from diffinfer.zoo.tasks import load_problem
    den, reward, shape, _, _ = load_problem("digits", "class:7", 1.0)
    return den, reward, shape


def digits_row(den, reward, shape, label, method, steps, options, budget, seeds, seed_list=None):
    """One row over seeds ``0 .. seeds - 1`` (or ``seed_list``)."""
    t0 = time.perf_counter()
    rs, costs = [], []
    for s in (seed_list if seed_list is not None else range(seeds)):
        res = run(method, den, reward, budget, shape, steps=steps, seed=s, **options)
        # search methods return their best sample; SMC's particles are a sample of the tilted law
        rs.append(float(res.reward.double().max()) if method != "smc" else float(res.reward.double().mean()))
        costs.append(res.cost)
    return {"problem": "digits class:7", "method": label, "budget": budget, "steps": steps,
            "mean_reward": sum(rs) / len(rs), "mean_cost": sum(costs) / len(costs),
            "median_reward": float(torch.tensor(rs).median()), "worst_reward": min(rs),
            "seconds": time.perf_counter() - t0}


def digits_rows(budgets, seeds):
    """Reward against cost on digits, and best-of-N at its largest budget with other step
    counts: the bar uses the strongest of them."""
    try:
        den, reward, shape = digits_problem()
    except ValueError as e:
        return [], None, str(e)
    rows = []
    with torch.no_grad():
        for label, method, steps, options in DIGITS_METHODS:
            for b in (b for b in budgets if b <= DIGITS_MAX_BUDGET.get(label, b)):
                rows.append(digits_row(den, reward, shape, label, method, steps, options, b, seeds))
        extra = [digits_row(den, reward, shape, "best-of-n", "best-of-n", st, {}, max(budgets), seeds)
                 for st in BON_STEPS]
    _DIGITS_ROWS[:] = rows
    tops = [r for r in rows if r["method"] == "best-of-n" and r["budget"] == max(budgets)] + extra
    return rows, {"reference": max(tops, key=lambda r: r["mean_reward"]), "best_of_n_steps": tops}, None


HELD_OUT_SEEDS = range(100, 148)  # digits seeds apart from the benchmark's, for the robustness check


def digits_held_out(bar_row, seeds=HELD_OUT_SEEDS):
    """Does the bar hold on other seeds? Rerun the bar's method on ``seeds`` (the benchmark's
    16 are one draw; a seed that finds no 7 dominates a mean) from its passing budget up the
    budgets it ran, until its mean reward reaches best-of-N's again. Returns that row (with its
    cost ratio) or ``None``."""
    label = bar_row.get("method")
    spec = next((m for m in DIGITS_METHODS if m[0] == label), None)
    if spec is None:
        return None
    den, reward, shape = digits_problem()
    _, method, steps, options = spec
    budgets = sorted(b for b in {r["budget"] for r in _DIGITS_ROWS if r["method"] == label} if b >= bar_row["budget"])
    with torch.no_grad():
        for b in budgets:
            row = digits_row(den, reward, shape, label, method, steps, options, b, 0, seeds)
            if row["mean_reward"] >= bar_row["best_of_n_reward"]:
                return {**row, "ratio": bar_row["best_of_n_cost"] / row["mean_cost"],
                        "seeds": f"{seeds.start}-{seeds.stop - 1}"}
    return None


_DIGITS_ROWS: list = []  # the digits rows of this run (digits_held_out reruns their budgets)


def plot(search_rows, sampling_summary, smc_x, target, path_prefix):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    problems_ = sorted({r["problem"] for r in search_rows})
    fig, axes = plt.subplots(1, len(problems_), figsize=(5 * len(problems_), 4), squeeze=False)
    for ax, p in zip(axes[0], problems_):
        for m in sorted({r["method"] for r in search_rows if r["problem"] == p}):
            rs = sorted([r for r in search_rows if r["problem"] == p and r["method"] == m], key=lambda r: r["mean_cost"])
            ax.plot([r["mean_cost"] for r in rs], [r["mean_reward"] for r in rs], marker="o", label=m)
        ax.set_xscale("log")
        ax.set_xlabel("cost (per-sample NFE + verifier calls)")
        ax.set_ylabel("mean reward of the returned sample")
        ax.set_title(p)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{path_prefix}_reward.png", dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for m in sorted({r["method"] for r in sampling_summary}):
        rs = sorted([r for r in sampling_summary if r["method"] == m], key=lambda r: r["mean_cost"])
        axes[0].plot([r["mean_cost"] for r in rs], [r["weights"] for r in rs], marker="o", label=m)
        axes[1].plot([r["mean_cost"] for r in rs], [r["sliced_w2"] for r in rs], marker="o", label=m)
    axes[0].axhline(TOL["weights"], color="grey", ls="--", lw=0.8)
    for ax, lab in zip(axes, ["worst mode-weight error", "worst sliced W2 to exact samples"]):
        ax.set_xscale("log")
        ax.set_xlabel("cost")
        ax.set_ylabel(lab)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{path_prefix}_target.png", dpi=120)
    plt.close(fig)
    from diffinfer.viz import scatter_plot
    scatter_plot(f"{path_prefix}_smc_samples.png", target, VP(), smc_x, "SMC samples over the exact tilted target")


def markdown(search_rows, bars, sampling_summary, digits_note, seconds):
    lines = ["# Inference-time scaling", "",
             "Cost = per-sample NFE + verifier calls. Rewards: Gaussian log-likelihood of a linear measurement "
             "(0 is the best possible). Search methods return one sample; the reward is averaged over seeds.", "",
             "## Reward against cost", "", "| problem | method | steps | budget | mean cost | mean reward |",
             "|---|---|---|---|---|---|"]
    for r in search_rows:
        lines.append(f"| {r['problem']} | {r['method']} | {r.get('steps', '')} | {r['budget']} | {r['mean_cost']:.0f} | "
                     f"{r['mean_reward']:.4g} |")
    lines += ["", "## The bar: best-of-N's reward at its largest budget with at least 5x less cost", "",
              "| problem | best-of-N reward | best-of-N steps | best-of-N cost | fastest method | its cost | ratio | passes |",
              "|---|---|---|---|---|---|---|---|"]
    for b in bars:
        lines.append(f"| {b['problem']} | {b['best_of_n_reward']:.4g} | {b['best_of_n_steps']} | {b['best_of_n_cost']:.0f} | {b['method']} | "
                     f"{b.get('cost', float('nan')):.0f} | {b['ratio']:.1f}x | {'yes' if b['passes'] else 'no'} |")
    lines += ["", "## Distance to the exact tilted target (tilted-2d; worst over seeds)", "",
              f"Tolerances (as the tests): mean {TOL['mean']}, covariance {TOL['cov']}, mode weights {TOL['weights']}.", "",
              "| method | particles / rollouts | mean cost | mean err | cov err | weight err | sliced W2 | within tolerance |",
              "|---|---|---|---|---|---|---|---|"]
    for r in sampling_summary:
        lines.append(f"| {r['method']} | {r['size']} | {r['mean_cost']:.0f} | {r['mean']:.3f} | {r['cov']:.3f} | "
                     f"{r['weights']:.3f} | {r['sliced_w2']:.3f} | {'yes' if r['within_tolerance'] else 'no'} |")
    digits = [r for r in search_rows if "median_reward" in r]
    if digits:
        lines += ["", "## Digits: spread over seeds (a seed that finds no 7 scores about -5 and dominates the mean)", "",
                  "| method | steps | budget | mean cost | mean reward | median reward | worst seed |", "|---|---|---|---|---|---|---|"]
        for r in digits:
            lines.append(f"| {r['method']} | {r['steps']} | {r['budget']} | {r['mean_cost']:.0f} | {r['mean_reward']:.4g} | "
                         f"{r['median_reward']:.4g} | {r['worst_reward']:.4g} |")
    lines += ["", f"Digits: {digits_note}", "", f"Total time {seconds:.0f} s.",
              "", "![reward](scaling_reward.png) ![target](scaling_target.png) ![smc](scaling_smc_samples.png)", ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small budgets and fewer seeds (under a minute)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    budgets = [100, 400, 1600] if args.quick else [100, 150, 200, 300, 400, 450, 500, 600, 800, 1600, 3200]
    seeds = 3 if args.quick else 16
    search_rows, bars = [], []
    for name, prior, reward, target in problems():
        search_rows += search_curves(name, prior, reward, budgets, seeds, steps=10 if args.quick else 20)
        bars.append(bar(search_rows, name))
    prior, reward, target = tilted_example(1.0)
    particles = [250, 1000] if args.quick else [250, 500, 1000, 2000]
    rollouts = [256, 1024] if args.quick else [256, 1024, 2048]
    sampling_rows, smc_runs = sampling_curves(prior, reward, target, particles, rollouts, 2 if args.quick else 3)
    sampling_summary = summarise(sampling_rows)
    smc_x = smc_runs.get((2000, 0))  # the plotted run; quick mode has no 2,000-particle run
    if smc_x is None:
        smc_x = smc_samples(prior.denoiser(VP()), reward, 2000, 0).x
    d_budgets = [110, 220, 440, 1760] if args.quick else [110, 165, 220, 275, 330, 350, 440, 880, 1760]
    d_rows, d_ref, d_err = digits_rows(d_budgets, 4 if args.quick else 16)
    search_rows += d_rows
    digits_note = "skipped: " + d_err if d_err else "included in the tables above (problem 'digits class:7')."
    if d_rows:
        bars.append(bar(search_rows, "digits class:7", d_ref["reference"]))
        if bars[-1]["passes"] and not args.quick:
            held = digits_held_out(bars[-1])
            digits_note += (f" Held-out check ({len(HELD_OUT_SEEDS)} other seeds): " + (
                f"{held['method']} reaches best-of-N's reward on seeds {held['seeds']} at budget {held['budget']} "
                f"(mean cost {held['mean_cost']:.0f}, {held['ratio']:.1f}x; mean {held['mean_reward']:.4g}, median "
                f"{held['median_reward']:.4g}, worst {held['worst_reward']:.4g})." if held else
                f"{bars[-1]['method']} does not reach it at any budget it ran."))
        digits_note += " Best-of-N at its largest budget by sampler steps: " + ", ".join(
            f"{r['steps']} steps {r['mean_reward']:.4g}" for r in d_ref["best_of_n_steps"]) + \
            "; the bar uses the strongest."
    seconds = time.perf_counter() - start
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(search_rows, sampling_summary, smc_x, target, str(RESULTS / "scaling"))
    (RESULTS / "scaling.json").write_text(json.dumps({"search": search_rows, "bar": bars, "sampling": sampling_summary,
                                                      "sampling_runs": sampling_rows, "digits": digits_note,
                                                      "digits_best_of_n": d_ref,
                                                      "quick": args.quick, "seconds": seconds}, indent=1))
    (RESULTS / "scaling.md").write_text(markdown(search_rows, bars, sampling_summary, digits_note, seconds))
    for b in bars:
        print(f"{b['problem']}: best-of-N reward {b['best_of_n_reward']:.4g} at cost {b['best_of_n_cost']:.0f}; "
              f"{b['method']} reaches it {b['ratio']:.1f}x cheaper -> {'PASS' if b['passes'] else 'FAIL'}")
    for r in sampling_summary:
        print(f"{r['method']} size {r['size']}: cost {r['mean_cost']:.0f} within tolerance: {r['within_tolerance']}")
    print(f"wrote {RESULTS / 'scaling.md'} in {seconds:.0f} s")


if __name__ == "__main__":
    main()
