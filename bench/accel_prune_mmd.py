"""Pruning and MMD few-step finetuning (issue 17, items 4 and 5)
-> bench/results/accel_prune_mmd.{json,md}.

    taskset -c 1 python bench/accel_prune_mmd.py --part prune   # digits UNet pruning (times on one core)
    taskset -c 1 python bench/accel_prune_mmd.py --part time    # re-time the pruned networks alone
    python bench/accel_prune_mmd.py --part mmd                  # MMD finetuning on mixtures and digits
    python bench/accel_prune_mmd.py --part mmd-digits --digits-features noisy-classifier   # one more digits row
    python bench/accel_prune_mmd.py --part mmd-floor            # how often exact sets meet the mixtures' goal
    python bench/accel_prune_mmd.py --quick                     # small sizes (a smoke run)

Each part rewrites its own section of the JSON; the markdown is rebuilt from the whole JSON.

Pruning (``diffinfer.accel.prune``) of the bundled ``digits`` UNet: its ResBlocks' hidden
channels, one GroupNorm group per unit (56 units). Scores: LD-Pruner's output-space
importance on 64 real digits at 4 noise levels (``ld-pruner``); masks learned through a
DPM-Solver++(2M) sampler of 10 steps with per-step checkpointing from 32 noises
(``learned-mask``); random units with the same count per block as ``ld-pruner``
(``random``: same shapes, parameters and cost). A fraction ``remove`` of the blocks'
hidden-path multiply-accumulates goes (lowest score per MAC saved first: a unit at
the 8x8 level costs 4x one at 4x4, ``prune.unit_macs``). Each pruned network is
measured as it is and after a short finetune (``--finetune-steps`` steps of the digits
recipe's denoising loss, batch 128, AdamW 2e-4, EMA 0.98): parameters, wall time of one
call on a batch of 256 (median of ``--repeats`` calls, the models interleaved), FD of
1,000 class-balanced conditional samples (10 steps of DPM-Solver++(2M), the same noise
for every model) and RMSE to the unpruned model's samples from that noise.

MMD finetuning (``diffinfer.accel.mmd``, MMD-DDM). Mixtures: ``ring2d`` and the priors of
``random_problem(1)`` (2-D, 6 components) and ``random_problem(2)`` (4-D, 4 components);
an MLP denoiser (v-prediction, VP) is trained on exact samples (``--toy-train-steps``),
then for NFE 2, 3, 4 the best grid among UniPC and DDIM is fitted to its 100-step
teacher (``grids.fit_candidates``, 256 training noises), and the model is finetuned
through that fitted sampler against fresh exact samples (MMD^2 with 5 Gaussian
bandwidths, batch 256). Scores: sliced Wasserstein to 4,000 exact samples from 4,000
held-out noises (neither used in any fit), beside the floor of two exact sets. Digits:
the bundled eps UNet, the saved fitted grid of ``bench/solvers.py`` at NFE 4 (UniPC
order 3), MMD in pixel space against real digits with their labels; FD of 1,000 samples
from held-out noise. Goal (issue 17): finetuned SW (FD) <= 0.5 x that of the untouched
model on the best fitted grid at the same NFE.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import sys
import time

import torch
from torch import nn

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import diffinfer as di  # noqa: E402
from diffinfer import grids, metrics, train  # noqa: E402
from diffinfer.accel import mmd as M  # noqa: E402
from diffinfer.accel import prune as P  # noqa: E402
from diffinfer.accel.network import count_parameters, replace_network  # noqa: E402
from diffinfer.atomic import write_text  # noqa: E402

RESULTS = ROOT / "bench" / "results"
JSON_PATH, MD_PATH = RESULTS / "accel_prune_mmd.json", RESULTS / "accel_prune_mmd.md"
SOLVER, STEPS = "dpmpp-2m", 10
GOAL = 0.5
#: mixtures: the exact reference set's seed, the second exact set's (the floor), and the first of
#: ``--part mmd-floor``'s independent exact sets (seeds EXACT_SEED, EXACT_SEED + 1, ...)
REF_SEED, FLOOR_SEED, EXACT_SEED = 99, 98, 10_000
#: what ``--part mmd-floor`` writes: on the MMD section, and on each mixture row (``exact_pass_rates``);
#: dropped by ``merge_mixture_rows`` when rows are rerun, as they judge the old rows' bars
FLOOR_KEYS = ("p_exact_meets_all", "floor_draws", "floor_seconds")
FLOOR_ROW_KEYS = ("p_exact_meets", "sw_exact_mean", "sw_exact_sd")


def log(msg: str) -> None:
    print(msg, flush=True)


# --- digits helpers -------------------------------------------------------------------
def digits_samples(den, n: int, solver: str = SOLVER, steps: int | None = STEPS, ts=None, seed: int = 0,
                   batch: int = 500, **opts) -> torch.Tensor:
    """``n`` class-balanced conditional samples (labels ``i % 10``), row ``i`` on stream ``(seed, i)``."""
    out = []
    for start in range(0, n, batch):
        rows = list(range(start, min(n, start + batch)))
        d = den.bind(label=torch.tensor(rows) % 10)
        with torch.no_grad():
            kw = {"ts": ts} if ts is not None else {"steps": steps}
            out.append(di.sample(d, shape=(len(rows), 1, 8, 8), solver=solver, seed=(seed, rows), **kw, **opts).x)
    return torch.cat(out)


def wall_times(nets: dict, batch: int, repeats: int) -> dict:
    """Median seconds of one call per network on the same input, calls interleaved."""
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(batch, 1, 8, 8, generator=g), torch.rand(batch, generator=g)
    y = torch.arange(batch) % 10
    times = {k: [] for k in nets}
    with torch.no_grad():
        for net in nets.values():
            net(x, t, label=y)  # warm-up
        for _ in range(repeats):
            for k, net in nets.items():
                t0 = time.perf_counter()
                net(x, t, label=y)
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def finetune_pruned(net: nn.Module, steps: int) -> nn.Module:
    """``steps`` steps of the digits recipe's denoising loss (label dropout 0.1) on ``net``."""
    from diffinfer.zoo.recipes import recipe_digits
    rec = recipe_digits()
    model = nn.ModuleDict({"net": net}).requires_grad_(True)
    cfg = train.TrainConfig(steps=steps, lr=2e-4, warmup=10, ema_decay=0.98, seed=5, checkpoint_every=0,
                            final_lr_fraction=0.1)
    res = train.fit(model, rec.loss_fn, cfg, progress=False)
    return res.ema_model()["net"].eval().requires_grad_(False)


def run_prune(args) -> dict:
    from diffinfer.zoo import quality
    from diffinfer.zoo.data import digits
    t_start = time.perf_counter()
    den = di.zoo.load("digits")
    sites = P.find_sites(den.net)
    x, y = digits()
    g = torch.Generator().manual_seed(0)
    calib = torch.randperm(x.shape[0], generator=g)[:args.calib]
    t0 = time.perf_counter()
    ld_scores = P.importance(den.bind(label=y[calib]), x[calib], sites, times=4, seed=0)
    t_ld = time.perf_counter() - t0
    log(f"  ld-pruner importance of {P.n_units(sites)} units in {t_ld:.1f}s")
    x_T = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(11)) * float(den.process.sigma(1.0))
    mask_den = den.bind(label=torch.arange(32) % 10)
    macs = P.unit_macs(den.net, sites, torch.zeros(1, 1, 8, 8), torch.ones(1), label=torch.zeros(1, dtype=torch.long))
    n_full = count_parameters(den.net)
    site_params = sum(s.unit_params * s.n_units for s in sites)
    base_x = digits_samples(den, args.n_fd)
    base = {"method": "unpruned", "remove": 0.0, "finetuned": False, "params": n_full, "site_macs_removed": 0.0,
            "fd": quality.fd_digits(base_x), "rmse_to_unpruned": 0.0}
    log(f"  unpruned: {n_full} parameters, FD {base['fd']:.4g}")
    rows, nets = [base], {"unpruned": den.net}
    for remove in args.remove:
        t0 = time.perf_counter()
        fit = P.learn_masks(mask_den, x_T, keep=1 - remove, sites=sites, solver=SOLVER, steps=STEPS,
                            iterations=args.mask_iterations, lr=0.3, costs=macs)
        log(f"  learned masks (keep {1 - remove:.2f}) in {time.perf_counter() - t0:.1f}s, soft kept {fit.kept:.3f}")
        keep_ld = P.select(ld_scores, sites, remove, costs=macs)
        keeps = {"ld-pruner": keep_ld, "learned-mask": P.select(fit.logits, sites, remove, costs=macs),
                 "random": P.random_like(keep_ld, sites, seed=1)}
        for method, keep in keeps.items():
            pruned = P.prune(den.net, keep, sites)
            variants = [(False, pruned)]
            if args.finetune_steps and method in args.finetune:
                t0 = time.perf_counter()
                variants.append((True, finetune_pruned(pruned, args.finetune_steps)))
                log(f"  finetuned {method} ({remove}) in {time.perf_counter() - t0:.1f}s")
            for tuned, net in variants:
                xs = digits_samples(replace_network(den, net), args.n_fd)
                key = f"{method}/{remove}" + ("/ft" if tuned else "")
                nets[key] = net
                rows.append({"method": method, "remove": remove, "finetuned": tuned,
                             "params": count_parameters(net),
                             "units_kept": [int(s.units(keep).sum()) for s in sites],
                             "site_macs_removed": float(macs[~keep].sum() / macs.sum()),
                             "fd": quality.fd_digits(xs),
                             "rmse_to_unpruned": float((xs - base_x).pow(2).mean().sqrt())})
                log(f"  {key}: {rows[-1]['params']} parameters, FD {rows[-1]['fd']:.4g}, "
                    f"RMSE {rows[-1]['rmse_to_unpruned']:.4g}")
    times = wall_times(nets, args.time_batch, args.repeats)
    for r in rows:
        key = "unpruned" if r["method"] == "unpruned" else f"{r['method']}/{r['remove']}" + ("/ft" if r["finetuned"] else "")
        r["seconds_per_call"] = times[key]
        r["speedup"] = times["unpruned"] / times[key]
        r["params_fraction"] = r["params"] / n_full
    return {"setup": {"model": "digits", "solver": SOLVER, "steps": STEPS, "n_fd": args.n_fd,
                      "fd_floor_halves": quality.fd_digits_floor(0), "units": P.n_units(sites),
                      "sites": [s.name for s in sites], "site_params": site_params,
                      "site_macs_per_sample": float(macs.sum()), "calib_rows": args.calib,
                      "importance_seconds": t_ld, "mask_iterations": args.mask_iterations,
                      "finetune_steps": args.finetune_steps, "time_batch": args.time_batch,
                      "repeats": args.repeats, "torch_threads": torch.get_num_threads()},
            "rows": rows, "seconds": time.perf_counter() - t_start}


def run_timing(args, prune_result: dict) -> dict:
    """Re-time the pruned networks of ``prune_result`` alone (``--part time``): a call's
    cost depends only on each block's width, so each row's network is rebuilt with its
    units-kept counts per block (``random_like`` positions) and rows of equal shapes share
    one measurement (``--time-repeats`` interleaved calls on a batch of ``--time-batch``)."""
    den = di.zoo.load("digits")
    sites = P.find_sites(den.net)
    shapes, nets = {}, {}
    for r in prune_result["rows"]:
        counts = tuple(r.get("units_kept", [s.n_units for s in sites]))
        shapes[id(r)] = counts
        if counts not in nets:
            keep = torch.ones(P.n_units(sites), dtype=torch.bool)
            for s, c in zip(sites, counts):
                keep[s.offset + c:s.offset + s.n_units] = False
            nets[counts] = P.prune(den.net, P.random_like(keep, sites, seed=2), sites)
            assert count_parameters(nets[counts]) == r["params"]
    keys = {counts: str(i) for i, counts in enumerate(nets)}
    times = wall_times({keys[c]: n for c, n in nets.items()}, args.time_batch, args.time_repeats)
    full = times[keys[tuple(s.n_units for s in sites)]]
    for r in prune_result["rows"]:
        t = times[keys[shapes[id(r)]]]
        r["seconds_per_call"], r["speedup"] = t, full / t
    prune_result["setup"].update({"time_batch": args.time_batch, "repeats": args.time_repeats,
                                  "timing": "re-timed alone (--part time), equal shapes share one measurement"})
    return prune_result


# --- MMD: mixtures ---------------------------------------------------------------------
def mixture(name: str):
    from diffinfer import toys
    from diffinfer.toys.random_problem import random_problem
    if name == "ring2d":
        return toys.preset("ring2d")
    if name.startswith("rp"):
        return random_problem(int(name[2:])).prior
    raise ValueError(f"unknown mixture {name!r}; valid: ring2d, rp<seed>")


def train_mixture_model(toy, steps: int, seed: int = 0):
    from diffinfer.nets import MLPDenoiser
    process = di.VP()
    pool = toy.sample(50_000, seed=1000 + seed).float()
    net = MLPDenoiser(toy.dim, hidden=128, depth=3)

    def loss_fn(model, gen):
        idx = torch.randint(0, pool.shape[0], (512,), generator=gen)
        return train.denoising_loss(di.Denoiser(model, process, "v", check=False), pool[idx], generator=gen)

    res = train.fit(net, loss_fn, train.TrainConfig(steps=steps, lr=2e-3, warmup=50, ema_decay=0.99, seed=seed,
                                                    checkpoint_every=0), progress=False)
    return di.Denoiser(res.ema_model().eval().requires_grad_(False), process, "v"), sum(res.losses[-100:]) / 100


def solve(den, x_T, solver, ts, **opts):
    with torch.no_grad():
        return di.sample(den, x_T, solver=solver, ts=ts, **opts).x


def run_mmd_mixtures(args) -> list[dict]:
    rows = []
    for name in args.mixtures:
        toy = mixture(name)
        t0 = time.perf_counter()
        den, loss = train_mixture_model(toy, args.toy_train_steps)
        log(f"  {name}: MLP trained in {time.perf_counter() - t0:.1f}s (loss {loss:.4f})")
        ref = toy.sample(args.n_eval, seed=REF_SEED)
        floor = exact_sw(toy, args.n_eval, FLOOR_SEED, ref)
        z = torch.randn(args.n_eval, toy.dim, generator=torch.Generator().manual_seed(5))
        sigma_T = float(den.process.sigma(den.process.t_max))

        def sw(x):
            return metrics.sliced_wasserstein(x, ref)

        x50 = solve(den, z * sigma_T, "dpmpp-2m", grids.resolve(den.process, 50, None))
        for nfe in args.nfes:
            t0 = time.perf_counter()
            fits = grids.fit_candidates(den, [("unipc", {}), ("ddim", {})], nfe, shape=(toy.dim,), n_train=256,
                                        max_evals=args.evals_per_step * nfe, teacher_steps=100, dtype=torch.float32,
                                        seed=777)
            best = fits[0]
            t_fit = time.perf_counter() - t0
            default_ts = grids.resolve(den.process, nfe, None)
            sw_default = min(sw(solve(den, z * sigma_T, s, default_ts)) for s in ("unipc", "ddim"))
            sw_fit = sw(solve(den, z * sigma_T, best.solver, best.grid, **best.solver_options))

            def data(n, gen):
                return toy.sample(n, seed=int(torch.randint(0, 2 ** 31, (), generator=gen))).float()

            t0 = time.perf_counter()
            res = M.mmd_finetune(den, data, (toy.dim,), solver=di.solvers.get(best.solver, **best.solver_options),
                                 ts=best.grid, iterations=args.mmd_iterations, batch=256, lr=args.toy_lr, seed=nfe)
            sw_mmd = sw(solve(res.den, z * sigma_T, best.solver, best.grid, **best.solver_options))
            rows.append({"mixture": name, "dim": toy.dim, "nfe": nfe, "fitted": best.key, "sw_floor": floor,
                         "sw_model_50": sw(x50), "sw_untouched_default": sw_default, "sw_untouched_fitted": sw_fit,
                         "sw_mmd_fitted": sw_mmd, "ratio": sw_mmd / sw_fit, "goal_met": sw_mmd <= GOAL * sw_fit,
                         "fit_seconds": t_fit, "mmd_seconds": res.seconds, "mmd_first": res.losses[0],
                         "mmd_last_mean": sum(res.losses[-20:]) / 20, "train_loss": loss,
                         "iterations": args.mmd_iterations, "lr": args.toy_lr})
            log(f"  {name} NFE {nfe}: SW default {sw_default:.4f}, fitted {best.key} {sw_fit:.4f}, "
                f"MMD-finetuned {sw_mmd:.4f} (ratio {sw_mmd / sw_fit:.3f}); floor {floor:.4f}, 50-step model {sw(x50):.4f}")
    return rows


def merge_mixture_rows(mmd: dict, rows: list[dict]) -> dict:
    """``mmd`` with its rows of ``rows``' mixtures replaced by ``rows`` (the other mixtures' and
    the digits rows kept, the mixtures in their first order); the exact-set figures, which judge
    the old rows' bars, are dropped until ``--part mmd-floor`` runs again."""
    ran = {r["mixture"] for r in rows}
    old = mmd.get("mixtures", [])
    order = list(dict.fromkeys([r["mixture"] for r in old] + [r["mixture"] for r in rows]))
    kept = [r for r in old if r["mixture"] not in ran] + rows
    out = {k: v for k, v in mmd.items() if k not in FLOOR_KEYS}
    out["mixtures_rerun"] = sorted(set(out.get("mixtures_rerun", [])) | ran)
    out["mixtures"] = sorted(({k: v for k, v in r.items() if k not in FLOOR_ROW_KEYS}
                              for r in kept), key=lambda r: (order.index(r["mixture"]), r["nfe"]))
    return out


def exact_sw(toy, n: int, seed: int, ref: torch.Tensor) -> float:
    """The sliced Wasserstein distance of an exact set of ``n`` rows (``seed``) to ``ref``: an
    exact sampler's score (with ``FLOOR_SEED``, the floor each mixture row reports)."""
    return metrics.sliced_wasserstein(toy.sample(n, seed=seed), ref)


def exact_sw_draws(toy, n: int, draws: int) -> torch.Tensor:
    """``[draws]`` sliced Wasserstein distances from independent exact sets of ``n`` rows (seeds
    ``EXACT_SEED + i``) to the mixtures' reference set: the law of the score an exact sampler
    gets, against which a bar on the score is judged."""
    if int(draws) < 2:
        raise ValueError(f"need at least 2 exact sets to measure their spread, got {draws}")
    ref = toy.sample(n, seed=REF_SEED)
    return torch.tensor([exact_sw(toy, n, EXACT_SEED + i, ref) for i in range(draws)])


def exact_pass_rates(rows: list[dict], sws: dict) -> float:
    """Annotate each mixture row with how often an exact sampler meets its goal (SW at most
    ``GOAL`` x the untouched model's on the fitted grid; ``sws[mixture]``: ``exact_sw_draws``)
    and the draws' mean and sd; return the probability that an exact sampler, drawn afresh for
    each row, meets every row's goal at once."""
    every = 1.0
    for r in rows:
        d = sws[r["mixture"]]
        r["p_exact_meets"] = float((d <= GOAL * r["sw_untouched_fitted"]).double().mean())
        r["sw_exact_mean"], r["sw_exact_sd"] = float(d.mean()), float(d.std())
        every *= r["p_exact_meets"]
    return every


def run_mmd_floor(args, mmd: dict) -> dict:
    """The mixture rows of ``mmd`` with ``exact_pass_rates`` from ``--floor-draws`` exact sets."""
    t0 = time.perf_counter()
    sws = {name: exact_sw_draws(mixture(name), args.n_eval, args.floor_draws)
           for name in dict.fromkeys(r["mixture"] for r in mmd["mixtures"])}
    mmd["p_exact_meets_all"] = exact_pass_rates(mmd["mixtures"], sws)
    mmd["floor_draws"], mmd["floor_seconds"] = args.floor_draws, time.perf_counter() - t0
    return mmd


def run_mmd_digits(args) -> list[dict]:
    from diffinfer.zoo import quality
    from diffinfer.zoo.data import digits
    den = di.zoo.load("digits")
    saved = grids.load(RESULTS / "grids" / "digits.json")
    rows = []
    x_data, y_data = digits()
    for nfe in args.digits_nfes:
        rec = grids.best(saved, nfe, [("unipc", {}), ("unipc", {"order": 3})])
        solver = di.solvers.get(rec.solver, **rec.solver_options)
        fd_default = quality.fd_digits(digits_samples(den, args.n_fd, "unipc", nfe, seed=3))
        fd_fit = quality.fd_digits(digits_samples(den, args.n_fd, rec.solver, ts=rec.grid, seed=3, **rec.solver_options))

        def data(n, gen):
            idx = torch.randint(0, x_data.shape[0], (n,), generator=gen)
            return x_data[idx], {"label": y_data[idx]}

        features = None
        if args.digits_features == "noisy-classifier":
            noisy = di.zoo.load("digits-classifier").noisy  # not the clean classifier FD is measured with

            def features(x):
                return noisy.features(x, torch.full((x.shape[0],), float(den.process.t_min)))

        res = M.mmd_finetune(den, data, (1, 8, 8), solver=solver, ts=rec.grid, iterations=args.digits_iterations,
                             batch=args.digits_batch, lr=args.digits_lr, seed=0, log=log, log_every=20,
                             features=features)
        fd_mmd = quality.fd_digits(digits_samples(res.den, args.n_fd, rec.solver, ts=rec.grid, seed=3,
                                                  **rec.solver_options))
        rows.append({"model": "digits", "nfe": nfe, "fitted": rec.key, "fd_untouched_default": fd_default,
                     "fd_untouched_fitted": fd_fit, "fd_mmd_fitted": fd_mmd, "ratio": fd_mmd / fd_fit,
                     "goal_met": fd_mmd <= GOAL * fd_fit, "mmd_seconds": res.seconds, "mmd_first": res.losses[0],
                     "mmd_last_mean": sum(res.losses[-10:]) / 10, "iterations": args.digits_iterations,
                     "batch": args.digits_batch, "lr": args.digits_lr, "features": args.digits_features})
        log(f"  digits NFE {nfe}: FD default {fd_default:.4g}, fitted {rec.key} {fd_fit:.4g}, "
            f"MMD-finetuned {fd_mmd:.4g} (ratio {fd_mmd / fd_fit:.3f}) in {res.seconds:.0f}s")
    return rows


# --- output ---------------------------------------------------------------------------
def fmt(v, digits=4):
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def markdown(res: dict) -> str:
    lines = ["# Pruning and MMD few-step finetuning (`bench/accel_prune_mmd.py`)", ""]
    if "prune" in res:
        p = res["prune"]
        s = p["setup"]
        lines += ["## Pruning the digits UNet", "",
                  f"{s['units']} units (GroupNorm groups of the ResBlocks' hidden channels, {s['site_params']:,} "
                  f"parameters); FD of {s['n_fd']} class-balanced samples, {s['steps']} steps of {s['solver']} "
                  f"(FD of two real halves: {s['fd_floor_halves']:.3g}); wall time: one call on a batch of "
                  f"{s['time_batch']}, median of {s['repeats']}, {s['torch_threads']} thread(s); finetune: "
                  f"{s['finetune_steps']} steps of the denoising loss. Part took {p['seconds']:.0f} s."
                  + (f" Times {s['timing']}." if s.get("timing") else ""), "",
                  "| method | remove (MACs) | finetuned | parameters | fraction | s / call | speed-up | FD | RMSE to unpruned |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in p["rows"]:
            lines.append(f"| {r['method']} | {r['site_macs_removed']:.3f} | {'yes' if r['finetuned'] else 'no'} | {r['params']:,} | "
                         f"{r['params_fraction']:.3f} | {r['seconds_per_call']:.4f} | {r['speedup']:.2f}x | "
                         f"{fmt(r['fd'])} | {fmt(r['rmse_to_unpruned'])} |")
        lines.append("")
    if "mmd" in res:
        m = res["mmd"]
        lines += ["## MMD few-step finetuning", "",
                  "Mixtures: sliced Wasserstein to exact samples from held-out noise (goal: MMD-finetuned <= "
                  f"{GOAL} x untouched on the best fitted grid).", "",
                  "| mixture | NFE | fitted grid | untouched, default grid | untouched, fitted grid | MMD-finetuned, "
                  "fitted grid | ratio | goal met | floor | model at 50 steps | exact sets: mean SW (sd) | "
                  "exact sets meeting the goal | finetune |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in m.get("mixtures", []):
            exact = (f"{fmt(r['sw_exact_mean'])} ({fmt(r['sw_exact_sd'], 2)}) | {r['p_exact_meets']:.2f}"
                     if "p_exact_meets" in r else "- | -")
            lines.append(f"| {r['mixture']} ({r['dim']}-D) | {r['nfe']} | {r['fitted']} | {fmt(r['sw_untouched_default'])} | "
                         f"{fmt(r['sw_untouched_fitted'])} | {fmt(r['sw_mmd_fitted'])} | {r['ratio']:.3f} | "
                         f"{fmt(r['goal_met'])} | {fmt(r['sw_floor'])} | {fmt(r['sw_model_50'])} | {exact} | "
                         + (f"{r['iterations']} it, lr {r['lr']:g}, {r['mmd_seconds']:.0f} s |" if "iterations" in r
                            else f"{r['mmd_seconds']:.0f} s |"))
        if "p_exact_meets_all" in m:
            lines += ["", f"Exact sets: {m['floor_draws']} independent exact sets per mixture (`--part mmd-floor`, "
                      f"{m['floor_seconds']:.0f} s), each scored as the samplers are; the last column is the fraction "
                      "whose SW meets the row's goal. An exact sampler, drawn afresh per row, meets every row's goal "
                      f"with probability {m['p_exact_meets_all']:.2f}."]
        if m.get("digits"):
            lines += ["", "Digits: FD of class-balanced samples from held-out noise.", "",
                      "| NFE | MMD features | fitted grid | untouched, default grid | untouched, fitted grid | "
                      "MMD-finetuned, fitted grid | ratio | goal met | finetune |", "|---|---|---|---|---|---|---|---|---|"]
            for r in m["digits"]:
                lines.append(f"| {r['nfe']} | {r.get('features', 'pixels')} | {r['fitted']} | {fmt(r['fd_untouched_default'])} | "
                             f"{fmt(r['fd_untouched_fitted'])} | {fmt(r['fd_mmd_fitted'])} | {r['ratio']:.3f} | "
                             f"{fmt(r['goal_met'])} | {r['iterations']} it x {r['batch']}, {r['mmd_seconds']:.0f} s |")
        lines += ["", f"Part took {m['seconds']:.0f} s."
                  + (f" The rows of {', '.join(m['mixtures_rerun'])} were rerun since by `--part mmd-mixtures` (their "
                     "finetune times are in the table)." if m.get("mixtures_rerun") else "")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["prune", "mmd", "mmd-mixtures", "mmd-digits", "mmd-floor", "time", "all"],
                    default="all")
    ap.add_argument("--floor-draws", type=int, default=100, help="exact sets per mixture (--part mmd-floor)")
    ap.add_argument("--time-repeats", type=int, default=40)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--remove", type=float, nargs="+", default=[0.15, 0.3])
    ap.add_argument("--n-fd", type=int, default=1000)
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--mask-iterations", type=int, default=30)
    ap.add_argument("--finetune-steps", type=int, default=150)
    ap.add_argument("--finetune", nargs="+", default=["ld-pruner", "random"])
    ap.add_argument("--time-batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--mixtures", nargs="+", default=["ring2d", "rp1", "rp2"])
    ap.add_argument("--nfes", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--n-eval", type=int, default=4000)
    ap.add_argument("--toy-train-steps", type=int, default=2000)
    ap.add_argument("--evals-per-step", type=int, default=40)
    # mixtures' MMD finetune: 1200 Adam steps at 3e-4 (was 300 at 1e-4), chosen on the tuning mixtures
    # rp5 and rp6 (NFE 3, 4; never the bench's ring2d / rp1 / rp2): SW ratios 0.26 / 0.31 / 0.41 / 0.58
    # at 300 x 1e-4, 0.18 / 0.25 / 0.29 / 0.44 at 1200 x 1e-4, 0.18 / 0.24 / 0.25 / 0.43 at 1200 x 3e-4
    ap.add_argument("--mmd-iterations", type=int, default=1200)
    ap.add_argument("--toy-lr", type=float, default=3e-4)
    ap.add_argument("--digits-nfes", type=int, nargs="*", default=[4])
    ap.add_argument("--digits-iterations", type=int, default=80)
    ap.add_argument("--digits-batch", type=int, default=48)
    ap.add_argument("--digits-lr", type=float, default=1e-5)
    ap.add_argument("--digits-features", choices=["pixels", "noisy-classifier"], default="pixels")
    args = ap.parse_args(argv)
    if args.quick:
        args.remove, args.n_fd, args.calib, args.mask_iterations = [0.5], 200, 16, 3
        args.finetune_steps, args.repeats, args.time_batch = 5, 3, 64
        args.mixtures, args.nfes, args.n_eval, args.toy_train_steps = ["ring2d"], [2], 500, 100
        args.evals_per_step, args.mmd_iterations, args.digits_iterations, args.digits_batch = 5, 5, 2, 8
    torch.set_num_threads(1)
    new = {}
    if args.part in ("prune", "all"):
        log("pruning the digits UNet")
        new["prune"] = run_prune(args)
    if args.part == "time":
        log("re-timing the pruned networks")
        new["prune"] = run_timing(args, json.loads(JSON_PATH.read_text())["prune"])
    if args.part == "mmd-digits":  # one more digits row (another feature space / setting)
        log("MMD finetuning on digits")
        prev = json.loads(JSON_PATH.read_text())["mmd"]
        prev["digits"] = [r for r in prev.get("digits", []) if r.get("features", "pixels") != args.digits_features
                          or r["nfe"] not in args.digits_nfes] + run_mmd_digits(args)
        new["mmd"] = prev
    if args.part == "mmd-mixtures":  # the mixture rows of --mixtures again; the rest kept (merged at the end)
        log("MMD finetuning on mixtures")
        new_rows = run_mmd_mixtures(args)
    if args.part == "mmd-floor":  # how often an exact sampler meets each mixture row's goal
        log("exact sets against the MMD goal")
        new["mmd"] = run_mmd_floor(args, json.loads(JSON_PATH.read_text())["mmd"])
    if args.part in ("mmd", "all"):
        log("MMD finetuning")
        t0 = time.perf_counter()
        new["mmd"] = {"mixtures": run_mmd_mixtures(args), "digits": run_mmd_digits(args)}
        new["mmd"]["seconds"] = time.perf_counter() - t0
    out_json = JSON_PATH if not args.quick else RESULTS / "accel_prune_mmd_quick.json"
    out_md = MD_PATH if not args.quick else RESULTS / "accel_prune_mmd_quick.md"
    # read the other part's section only now: the two parts may run at the same time
    res = json.loads(out_json.read_text()) if out_json.exists() else {}
    res.update(new)
    if args.part == "mmd-mixtures":
        res["mmd"] = merge_mixture_rows(res.get("mmd", {}), new_rows)
    write_text(out_json, json.dumps(res, indent=1, default=float))
    write_text(out_md, markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
