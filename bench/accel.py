"""Time to quality on ``digits`` (issue 17, item 6), and feature caching's speed and error.

For each configuration a user could pick, the wall time to draw 2,000 samples of the bundled
class-conditional ``digits`` model (labels ``i % 10``, no guidance, the same starting noise
for every method) at a quality target:

- **RMSE target**: RMSE (per pixel) to the 500-step DPM-Solver++(3M) endpoint from the same
  noise (``bench.solvers.digits_reference``) at most ``RMSE_TARGET`` (0.02), measured on the
  first ``n_ref`` samples;
- **FD target**: ``zoo.quality.fd_digits`` of ``n_fd`` samples at most ``FD_SLACK`` times the
  FD of converged samples (50 DPM-Solver++(3M) steps) from the same noise and labels.

Per method the smallest step count reaching the target is found: for RMSE by bisection over
``STEP_LADDER`` (every count to 30, then coarser; the RMSE falls with the step count), for FD
by an upward scan of the coarser ``FD_LADDER`` (FD is not monotone in the solver error), on the
fastest ``fd_methods`` of each library only (each point costs ``n_fd`` rows). Then every found
setting is timed on ``time_rows`` rows, round-robin over the methods (so load that drifts
during the run touches every method alike), the median of ``repeats`` rounds, and scaled to
2,000 samples (every method here is per-sample: the time is linear in the rows at this batch
size). Ratios are against the fastest diffusers configuration in the same run. diffusers'
``DDIMScheduler`` clips ``x0`` to ``[-1, 1]`` by default (``clip_sample=True``), which moves
its samples off the probability-flow solution the reference follows; it is also run without.

Methods (``methods()``; a list of ``Method`` entries, so other model variants, e.g. a pruned
or MMD-finetuned network, are added as rows by appending to ``EXTRA_METHODS``):

- diffusers' schedulers run with their own timesteps and update code, at their default
  settings, and with ``timestep_spacing='trailing'`` / ``use_karras_sigmas=True``
  (``DIFFUSERS_CONFIGS``); the model gets the scheduler's timestep as ``t = (k + 1) / 1000``
  on a 1000-step table of the model's own process (``alphas_cumprod[k] = alpha((k + 1) / 1000)^2``);
- diffinfer's solvers on the log-SNR and Karras grids;
- the fitted grids (UniPC + decoupled model times, ``bench/results/grids/digits.json``, NFE 4-10);
- feature caching (``diffinfer.accel.FeatureCache``) over diffinfer's solvers.

Also measured: feature caching against the same solver uncached at 20-50 steps (seconds per
sample, RMSE to the uncached samples, and the solver's own RMSE to the reference), and
classifier-free guidance's batched call (``[x, x]`` in one forward, which
``guidance.ClassifierFreeGuidance`` already does) against two separate forwards.

    taskset -c 1 python bench/accel.py            # ~30 minutes on one shared core
    taskset -c 1 python bench/accel.py --quick    # a few minutes (smaller sets, fewer methods)

Writes ``bench/results/accel.{json,md}`` and ``bench/results/accel.png`` (``accel_quick.*``).
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import diffinfer as di  # noqa: E402
from bench import solvers as bench_solvers  # noqa: E402
from diffinfer import grids  # noqa: E402
from diffinfer.atomic import atomic_path, write_text  # noqa: E402

Tensor = torch.Tensor
RESULTS = ROOT / "bench" / "results"
N_SAMPLES = 2000          # what the time is reported for
RMSE_TARGET = 0.02
FD_SLACK = 1.10           # FD target: at most this times the converged samples' FD
CONVERGED_STEPS = 50
#: step counts searched (bisection for RMSE; an upward scan for FD): every count to 30, then coarser
STEP_LADDER = list(range(3, 31)) + [35, 40, 45, 50, 60, 70, 80, 100]
#: the FD search's coarser ladder (each point costs n_fd rows)
FD_LADDER = [3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 70, 100]
FITTED_NFES = list(range(4, 11))  # the fitted grids on file (bench/solvers.py: digits at every NFE 4-10)
TRAIN_STEPS = 1000              # the diffusers table's length
CACHE_EVERY = [2, 3, 5]         # feature-cache refresh intervals
#: the caching goal's configurations: reuse (DeepCache, order 0) at CACHE_EVERY, and forecasting
#: (TaylorSeer, order 2) with the DeepCache branch (depth 1) and the whole network (depth 0,
#: ``network_plan``);
#: order 2 was chosen on other starting noise (seed 1), where it beat orders 0, 1 and 3
CACHE_CONFIGS = ([{"every": k, "order": 0, "depth": 1} for k in CACHE_EVERY]
                 + [{"every": k, "order": 2, "depth": d} for d in (1, 0) for k in (2, 3)])
CACHE_STEPS = [20, 30, 50]      # the caching goal's step counts
#: the caching goal's solvers: DDIM (DeepCache's and TaylorSeer's setting) and DPM-Solver++(2M)
CACHE_SOLVERS = ["ddim", "dpmpp-2m"]
CACHE_GOAL = 1.8


# --- methods ------------------------------------------------------------------------------------
@dataclass
class Method:
    """One configuration: ``run(den, x_T, steps) -> (x0, nfe)`` with ``den`` the bound digits
    model (``x_T`` at ``sigma(t_max)``); ``steps`` from ``ladder``."""

    name: str
    library: str
    family: str
    run: Callable
    ladder: list = field(default_factory=lambda: list(STEP_LADDER))


def _diffusers_table(process) -> Tensor:
    """``trained_betas`` whose ``alphas_cumprod[k] = alpha((k + 1) / N)^2`` (the model's process)."""
    t = torch.arange(1, TRAIN_STEPS + 1, dtype=torch.float64) / TRAIN_STEPS
    ac = process.alpha(t) ** 2
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    return (1.0 - ac / prev).clamp(max=0.999)


def diffusers_runner(cls_name: str, **config) -> Callable:
    """diffusers' scheduler ``cls_name`` with its own timesteps and update code (defaults plus
    ``config``), ``prediction_type='epsilon'``: the loop a diffusers pipeline runs."""

    def run(den, x_T: Tensor, steps: int):
        import diffusers
        process = den.process
        sched = getattr(diffusers, cls_name)(num_train_timesteps=TRAIN_STEPS,
                                             trained_betas=_diffusers_table(process).tolist(),
                                             prediction_type="epsilon", **config)
        sched.set_timesteps(int(steps))
        z = x_T / float(process.sigma(torch.tensor(process.t_max, dtype=torch.float64)))
        x = z * sched.init_noise_sigma
        nfe = 0
        for k in sched.timesteps:
            t = min(max((float(k) + 1.0) / TRAIN_STEPS, 0.0), 1.0)
            x_in = sched.scale_model_input(x, k)
            eps = den.eps(x_in, t)
            nfe += 1
            x = sched.step(eps, k, x, return_dict=False)[0]
        return x, nfe

    return run


#: diffusers configurations: (label, scheduler class, config)
DIFFUSERS_CONFIGS = [
    ("DDIM", "DDIMScheduler", {}),
    ("PNDM", "PNDMScheduler", {}),
    ("Euler", "EulerDiscreteScheduler", {}),
    ("Heun", "HeunDiscreteScheduler", {}),
    ("LMS", "LMSDiscreteScheduler", {}),
    ("DPM++2M", "DPMSolverMultistepScheduler", {}),
    ("DPM++2S", "DPMSolverSinglestepScheduler", {}),
    ("UniPC", "UniPCMultistepScheduler", {}),
    ("DEIS", "DEISMultistepScheduler", {}),
    ("DDIM trailing", "DDIMScheduler", {"timestep_spacing": "trailing"}),
    ("DDIM trailing no-clip", "DDIMScheduler", {"timestep_spacing": "trailing", "clip_sample": False}),
    ("Euler trailing", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    ("DPM++2M trailing", "DPMSolverMultistepScheduler", {"timestep_spacing": "trailing"}),
    ("UniPC trailing", "UniPCMultistepScheduler", {"timestep_spacing": "trailing"}),
    ("Euler karras", "EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("DPM++2M karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ("DPM++3M karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "solver_order": 3}),
    ("UniPC karras", "UniPCMultistepScheduler", {"use_karras_sigmas": True}),
]
QUICK_DIFFUSERS = ["DDIM", "DPM++2M", "UniPC", "DPM++2M karras"]

#: diffinfer's solvers x grid families
OUR_SOLVERS = ["ddim", "dpmpp-2m", "dpmpp-3m", "unipc"]
OUR_GRIDS = {"logsnr": grids.logsnr, "karras": grids.karras}
QUICK_OURS = [("dpmpp-2m", "logsnr"), ("unipc", "logsnr")]


def ours_runner(solver: str, builder, cache: dict | None = None) -> Callable:
    def run(den, x_T: Tensor, steps: int):
        model = den if cache is None else di.accel.FeatureCache(den, **cache)
        res = di.sample(model, x_T, solver=solver, ts=builder(den.process, int(steps)))
        return res.x, res.nfe

    return run


def fitted_runner(grids_dir: pathlib.Path) -> Callable:
    records: dict = {}  # loaded once per step count, as a user keeps a fitted grid

    def run(den, x_T: Tensor, steps: int):
        if steps not in records:
            records[steps] = bench_solvers.digits_grid(_BASE[0], int(steps), grids_dir, False)
        rec = records[steps]
        if rec is None:
            raise RuntimeError(f"no fitted digits grid for {steps} steps in {grids_dir}")
        before = den.nfe
        x = grids.solve(rec.denoiser(den), x_T, rec.solver, rec.grid, **rec.solver_options)
        return x, den.nfe - before

    return run


_BASE: list = [None]  # the loaded digits model (the fitted-grid records are keyed on it)

#: hooks for other model variants (pruned networks, MMD-finetuned models): callables
#: ``(base_model) -> list[Method]`` appended to ``methods()``; each Method's ``run`` gets the
#: bound digits model and may replace it (e.g. ``den.net`` swapped for a pruned copy)
EXTRA_METHODS: list[Callable] = []


def methods(quick: bool, grids_dir: pathlib.Path, base) -> list[Method]:
    out = []
    for label, cls, cfg in DIFFUSERS_CONFIGS:
        if quick and label not in QUICK_DIFFUSERS:
            continue
        out.append(Method(f"diffusers {label}", "diffusers", "diffusers", diffusers_runner(cls, **cfg)))
    for solver in OUR_SOLVERS:
        for gname, builder in OUR_GRIDS.items():
            if quick and (solver, gname) not in QUICK_OURS:
                continue
            out.append(Method(f"{solver} {gname}", "diffinfer", "solver", ours_runner(solver, builder)))
    out.append(Method("unipc fitted grid", "diffinfer", "fitted grid", fitted_runner(grids_dir), list(FITTED_NFES)))
    for every in ([2] if quick else [2, 3]):
        for solver in (["dpmpp-2m"] if quick else ["dpmpp-2m", "unipc"]):
            out.append(Method(f"{solver} logsnr + cache every {every}", "diffinfer", "feature cache",
                              ours_runner(solver, grids.logsnr, {"every": every})))
    for solver in (["dpmpp-2m"] if quick else ["dpmpp-2m", "unipc"]):
        out.append(Method(f"{solver} logsnr + forecast cache every 2 (order 2, whole network)", "diffinfer",
                          "feature cache", ours_runner(solver, grids.logsnr, {"every": 2, "order": 2, "depth": 0})))
    for extra in EXTRA_METHODS:
        out += list(extra(base))
    return out


# --- measurement ---------------------------------------------------------------------------------
def rmse(a: Tensor, b: Tensor) -> float:
    return float(((a.double() - b.double()) ** 2).mean().sqrt())


def smallest_steps(ladder: list[int], ok: Callable[[int], bool], monotone: bool) -> int | None:
    """The smallest ladder entry with ``ok`` (bisection if ``monotone``, else an upward scan)."""
    if not monotone:
        return next((s for s in ladder if ok(s)), None)
    lo, hi = 0, len(ladder) - 1
    if not ok(ladder[hi]):
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(ladder[mid]):
            hi = mid
        else:
            lo = mid + 1
    return ladder[lo]


def round_robin_seconds(jobs: list[tuple[str, Callable]], repeats: int) -> dict[str, float]:
    """Median seconds of each ``job()``, timed in ``repeats`` rounds over all jobs (load that
    drifts during the run then touches every job alike)."""
    times: dict[str, list[float]] = {name: [] for name, _ in jobs}
    for _ in range(repeats):
        for name, job in jobs:
            t0 = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def run_time_to_quality(ms: list[Method], den, x_T: Tensor, x_ref: Tensor, n_ref: int, n_fd: int, fd_target: float,
                        time_rows: int, repeats: int, fd_methods: int, log, reuse: dict | None = None) -> list[dict]:
    """Search each method's smallest step count at the RMSE target (on ``n_ref`` rows) and, for
    the fastest ``fd_methods`` of each library, at the FD target (``n_fd`` rows); then time every
    found setting on ``time_rows`` rows, round-robin, scaled to ``N_SAMPLES``."""
    from diffinfer.zoo import quality
    rows, by_name = [], {m.name: m for m in ms}
    for m in ms:
        t0 = time.perf_counter()
        memo: dict = {}
        old = (reuse or {}).get(m.name)
        if old is not None:  # a previous run's search on the same rows, noise and targets
            memo.update({int(k): (v["rmse"], v["nfe"]) for k, v in old["curve"].items()})

        def rmse_at(steps: int, m=m, memo=memo) -> float:
            if steps not in memo:
                try:
                    x, nfe = m.run(den.select(torch.arange(n_ref)), x_T[:n_ref], steps)
                    memo[steps] = (rmse(x, x_ref) if bool(torch.isfinite(x).all()) else float("inf"), nfe)
                except Exception as e:  # noqa: BLE001 - e.g. a scheduler refusing a step count
                    log(f"    {m.name} at {steps} steps failed: {type(e).__name__}: {e}")
                    memo[steps] = (float("inf"), 0)
            return memo[steps][0]

        steps = smallest_steps(m.ladder, lambda s: rmse_at(s) <= RMSE_TARGET, monotone=True)
        row = {"method": m.name, "library": m.library, "family": m.family, "seconds": None,
               "rmse_steps": steps, "rmse_nfe": None if steps is None else memo[steps][1],
               "rmse": None if steps is None else memo[steps][0],
               "curve": {str(s): {"rmse": v[0], "nfe": v[1]} for s, v in sorted(memo.items())},
               "search_seconds": time.perf_counter() - t0}
        rows.append(row)
        log(f"  {m.name}: RMSE target at steps {steps} (NFE {row['rmse_nfe']}, RMSE {row['rmse']}) "
            f"[{row['search_seconds']:.0f}s]")
    # FD candidates: the fewest model calls at the RMSE target, per library (the feature cache,
    # whose calls are cheaper, and the fitted grids always)
    d_t, x_t = den.select(torch.arange(time_rows)), x_T[:time_rows]
    for lib in ("diffusers", "diffinfer"):
        found = [r for r in rows if r["library"] == lib and r["rmse_steps"] is not None]
        cands = sorted(found, key=lambda r: (r["rmse_nfe"], r["method"]))[:fd_methods]
        cands += [r for r in found if r["family"] in ("fitted grid",) and r not in cands]
        for r in cands:
            m = by_name[r["method"]]
            fds: dict = {}
            old = (reuse or {}).get(m.name, {}).get("fd_curve")
            if old:
                fds.update({int(k): (v["fd"], v["nfe"]) for k, v in old.items()})

            def fd_at(steps: int, m=m, fds=fds) -> float:
                if steps in fds:
                    return fds[steps][0]
                try:
                    x, nfe = m.run(den.select(torch.arange(n_fd)), x_T[:n_fd], steps)
                    fds[steps] = (quality.fd_digits(x) if bool(torch.isfinite(x).all()) else float("inf"), nfe)
                except Exception as e:  # noqa: BLE001
                    log(f"    {m.name} FD at {steps} steps failed: {type(e).__name__}: {e}")
                    fds[steps] = (float("inf"), 0)
                return fds[steps][0]

            steps = smallest_steps([s for s in m.ladder if s in FD_LADDER], lambda s: fd_at(s) <= fd_target,
                                   monotone=False)
            r["fd_curve"] = {str(s): {"fd": v[0], "nfe": v[1]} for s, v in sorted(fds.items())}
            r.update(fd_steps=steps, fd_nfe=None if steps is None else fds[steps][1],
                     fd=None if steps is None else fds[steps][0], fd_seconds=None)
            log(f"  {m.name}: FD target at steps {steps} (FD {r['fd']})")
    # the timing: every found setting, round-robin
    jobs = [(f"rmse|{r['method']}", (lambda m=by_name[r["method"]], s=r["rmse_steps"]: m.run(d_t, x_t, s)))
            for r in rows if r["rmse_steps"] is not None]
    jobs += [(f"fd|{r['method']}", (lambda m=by_name[r["method"]], s=r["fd_steps"]: m.run(d_t, x_t, s)))
             for r in rows if r.get("fd_steps") is not None]
    sec = round_robin_seconds(jobs, repeats)
    for r in rows:
        if f"rmse|{r['method']}" in sec:
            r["seconds_measured"] = sec[f"rmse|{r['method']}"]
            r["seconds"] = r["seconds_measured"] * N_SAMPLES / time_rows
        if f"fd|{r['method']}" in sec:
            r["fd_seconds"] = sec[f"fd|{r['method']}"] * N_SAMPLES / time_rows
        log(f"  {r['method']}: {r['seconds']} s (RMSE target), {r.get('fd_seconds')} s (FD target) / {N_SAMPLES}")
    return rows


def _cache_label(cfg: dict) -> str:
    return f"every {cfg['every']}, order {cfg['order']}, depth {cfg['depth']}"


def run_cache_goal(den, x_T: Tensor, x_ref: Tensor, n_ref: int, time_rows: int, repeats: int, solvers, log):
    """Feature caching against the same solver uncached: seconds per sample (the uncached and
    the cached runs timed round-robin, medians of ``repeats`` on ``time_rows`` rows), RMSE to the
    uncached samples and the solver's own RMSE to the reference (on ``n_ref`` rows), for each
    of ``CACHE_CONFIGS``."""
    rows = []
    d_ref, x_r = den.select(torch.arange(n_ref)), x_T[:n_ref]
    d_t, x_t = den.select(torch.arange(time_rows)), x_T[:time_rows]
    for solver in solvers:
        for steps in CACHE_STEPS:
            ts = grids.logsnr(den.process, steps)
            plain = di.sample(d_ref, x_r, solver=solver, ts=ts).x
            own = rmse(plain, x_ref)
            jobs = [("plain", lambda: di.sample(d_t, x_t, solver=solver, ts=ts))]
            jobs += [(_cache_label(c), lambda c=c: di.sample(di.accel.FeatureCache(d_t, **c), x_t, solver=solver,
                                                             ts=ts)) for c in CACHE_CONFIGS]
            sec = round_robin_seconds(jobs, repeats)
            for cfg in CACHE_CONFIGS:
                cached_den = di.accel.FeatureCache(d_ref, **cfg)
                x = di.sample(cached_den, x_r, solver=solver, ts=ts).x
                label = _cache_label(cfg)
                row = {"solver": solver, "steps": steps, **cfg, "full_calls": cached_den.stats.full,
                       "seconds_per_sample_plain": sec["plain"] / time_rows,
                       "seconds_per_sample_cached": sec[label] / time_rows,
                       "speedup": sec["plain"] / sec[label], "rmse_to_uncached": rmse(x, plain),
                       "solver_rmse": own, "cached_rmse_to_reference": rmse(x, x_ref)}
                row["met"] = bool(row["speedup"] >= CACHE_GOAL and row["rmse_to_uncached"] < own)
                rows.append(row)
                log(f"  cache {solver} {steps} steps {label}: speedup {row['speedup']:.2f}x, "
                    f"RMSE to uncached {row['rmse_to_uncached']:.4f} vs solver error {own:.4f}")
    return rows


def run_call_bound(den, x_T: Tensor, time_rows: int, repeats: int) -> dict:
    """Seconds of one full network call and of one cached call (``depth`` 1: the shallow
    branch; ``depth`` 0: nothing of the network) at ``time_rows`` rows:
    their ratio bounds caching's speed-up (refreshing never)."""
    d, x = den.select(torch.arange(time_rows)), x_T[:time_rows]
    caches = {depth: di.accel.FeatureCache(d, steps=[0], depth=depth) for depth in (1, 0)}
    for cached in caches.values():
        cached.predict(x, 0.5)  # call 0 fills the cache; later calls at lower times reuse it
    times = iter(torch.linspace(0.49, 0.01, 20 * repeats).tolist())
    sec = round_robin_seconds([("full", lambda: d.predict(x, 0.5))]
                              + [(f"depth {k}", lambda c=c: c.predict(x, next(times))) for k, c in caches.items()],
                              5 * repeats)
    out = {"rows": time_rows, "full_call_seconds": sec["full"]}
    for k in caches:
        out[f"depth_{k}_cached_call_seconds"] = sec[f"depth {k}"]
        out[f"depth_{k}_bound"] = sec["full"] / sec[f"depth {k}"]
    return out


class TwoCallCFG(di.DenoiserBase):
    """Classifier-free guidance with two separate forwards (the un-batched form), for timing only."""

    def __init__(self, den, scale: float, null_label):
        self.den, self.scale, self.null = den, float(scale), null_label
        self.process, self._counter = den.process, den._counter

    def predict(self, x, t):
        c = self.den.predict(x, t)
        u = self.den.bind(label=torch.full_like(self.den.cond["label"], self.null)).predict(x, t)
        return di.Prediction(u.x0 + self.scale * (c.x0 - u.x0), u.eps + self.scale * (c.eps - u.eps))


def run_cfg(den, x_T: Tensor, time_rows: int, repeats: int, steps: int = 10) -> dict:
    from diffinfer.guidance import ClassifierFreeGuidance
    d, x = den.select(torch.arange(time_rows)), x_T[:time_rows]
    ts = grids.logsnr(den.process, steps)
    batched, two = "batched (one forward of 2B rows)", "two forwards of B rows"
    models = {batched: ClassifierFreeGuidance(d, 2.0, 10), two: TwoCallCFG(d, 2.0, 10)}
    sec = round_robin_seconds([(k, lambda m=m: di.sample(m, x, solver="dpmpp-2m", ts=ts)) for k, m in models.items()],
                              repeats)
    out = {"steps": steps, "rows": time_rows, "scale": 2.0}
    out.update({k: v * N_SAMPLES / time_rows for k, v in sec.items()})
    out["ratio"] = out[two] / out[batched]
    return out


# --- report ----------------------------------------------------------------------------------
def summarise(rows: list[dict]) -> dict:
    def best(lib, key):
        ok = [r for r in rows if r["library"] == lib and r.get(key) is not None]
        return min(ok, key=lambda r: r[key]) if ok else None

    out = {}
    for key in ("seconds", "fd_seconds"):
        a, b = best("diffusers", key), best("diffinfer", key)
        out[key] = {"diffusers_best": a and a["method"], "diffusers_seconds": a and a[key],
                    "diffinfer_best": b and b["method"], "diffinfer_seconds": b and b[key],
                    "speedup": (a[key] / b[key]) if (a and b) else None}
        for r in rows:
            if r.get(key) is not None and a:
                r[f"{key}_ratio_vs_diffusers_best"] = a[key] / r[key]
    out["goal_3x"] = bool(out["seconds"]["speedup"] and out["seconds"]["speedup"] >= 3.0)
    return out


def _fmt(v, nd=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown(report: dict) -> str:
    s = report["summary"]
    c = report["config"]
    lines = [f"# Time to quality on digits ({'quick' if c['quick'] else 'full'})", "",
             f"Wall time for {N_SAMPLES} class-conditional samples (labels i % 10, no guidance), timed on "
             f"{c['time_rows']} rows (median of {c['repeats']}) and scaled; RMSE target {RMSE_TARGET} to the "
             f"{bench_solvers.DIGITS_REFERENCE_STEPS}-step endpoint on {c['n_ref']} rows; FD target "
             f"{report['fd_target']:.4g} (= {FD_SLACK} x the converged FD {report['fd_converged']:.4g}, "
             f"{c['n_fd']} samples). {c['machine']}.", "",
             "| method | library | steps (NFE) at RMSE target | RMSE | s / 2000 | speedup vs best diffusers | "
             "steps (NFE) at FD target | FD | s / 2000 (FD) | speedup (FD) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(report["results"], key=lambda r: (r["seconds"] is None, r["seconds"] or 0)):
        lines.append(
            f"| {r['method']} | {r['library']} | {_fmt(r['rmse_steps'])} ({_fmt(r['rmse_nfe'])}) | {_fmt(r['rmse'])} | "
            f"{_fmt(r['seconds'])} | {_fmt(r.get('seconds_ratio_vs_diffusers_best'))} | "
            f"{_fmt(r.get('fd_steps'))} ({_fmt(r.get('fd_nfe'))}) | {_fmt(r.get('fd'))} | {_fmt(r.get('fd_seconds'))} | "
            f"{_fmt(r.get('fd_seconds_ratio_vs_diffusers_best'))} |")
    sr, sf = s["seconds"], s["fd_seconds"]
    lines += ["", f"**RMSE target:** best diffusers `{sr['diffusers_best']}` {_fmt(sr['diffusers_seconds'])} s; "
              f"best diffinfer `{sr['diffinfer_best']}` {_fmt(sr['diffinfer_seconds'])} s: "
              f"**{_fmt(sr['speedup'])}x** (goal 3x: {'met' if s['goal_3x'] else 'missed'}).",
              f"**FD target:** best diffusers `{sf['diffusers_best']}` {_fmt(sf['diffusers_seconds'])} s; "
              f"best diffinfer `{sf['diffinfer_best']}` {_fmt(sf['diffinfer_seconds'])} s: **{_fmt(sf['speedup'])}x**.",
              "", "## Feature caching against the same solver uncached", "",
              f"Goal: >= {CACHE_GOAL}x fewer seconds per sample with RMSE to the uncached samples below the solver's "
              "own RMSE to the reference.", "",
              "Order 0 reuses the cached features (DeepCache); order 2 forecasts them from the last three refreshes "
              "(TaylorSeer). Depth 1 caches the deep branch (the outer level runs every call); depth 0 the whole "
              "network (`network_plan`: a cached call runs nothing of it).", "",
              "| solver | steps | every | order | depth | full calls | speedup | RMSE to uncached | solver's own RMSE "
              "| met |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["cache"]:
        lines.append(f"| {r['solver']} | {r['steps']} | {r['every']} | {r.get('order', 0)} | {r.get('depth', 1)} | "
                     f"{r['full_calls']} | {r['speedup']:.2f}x | {r['rmse_to_uncached']:.4f} | {r['solver_rmse']:.4f} | "
                     f"{'met' if r['met'] else 'missed'} |")
    b = report.get("cache_call_bound")
    if b:
        lines += ["", f"One network call on {b['rows']} rows: full {b['full_call_seconds']:.4g} s; cached at depth 1 "
                  f"(`conv_in`, `down[0]`, `up[2]`, output) {b['depth_1_cached_call_seconds']:.4g} s, at most "
                  f"{b['depth_1_bound']:.2f}x per call; at depth 0 (order 0) {b['depth_0_cached_call_seconds']:.4g} s, at most "
                  f"{b['depth_0_bound']:.2f}x (refreshing never)."]
    cfg = report.get("cfg")
    if cfg:
        lines += ["", "## Classifier-free guidance: one batched forward vs two",
                  "", f"`guidance.ClassifierFreeGuidance` already runs both branches as one forward of 2B rows. "
                  f"Guided sampling (scale {cfg['scale']}, {cfg['steps']} DPM-Solver++(2M) steps), s / {N_SAMPLES}: "
                  f"batched {cfg['batched (one forward of 2B rows)']:.3g}, two forwards "
                  f"{cfg['two forwards of B rows']:.3g} ({cfg['ratio']:.2f}x)."]
    lines += ["", f"Command: `{report['command']}`; total {report['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: pathlib.Path) -> str:
    """RMSE against estimated seconds per 2,000 samples, one curve per method (the time at other
    step counts scaled from the timed point by NFE)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = plt.get_cmap("tab20").colors
    for k, r in enumerate(report["results"]):
        if r["seconds"] is None or not r["rmse_nfe"]:
            continue
        per_nfe = r["seconds"] / r["rmse_nfe"]
        pts = sorted((v["nfe"] * per_nfe, v["rmse"]) for v in r["curve"].values()
                     if v["nfe"] and math.isfinite(v["rmse"]))
        style = "-" if r["library"] == "diffinfer" else "--"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=r["method"],
                color=colours[k % len(colours)], lw=2.5 if r["family"] == "fitted grid" else 1.2)
    ax.axhline(RMSE_TARGET, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"seconds per {N_SAMPLES} samples (timed point; others scaled by NFE)")
    ax.set_ylabel("RMSE to the 500-step endpoint")
    ax.set_title("digits: quality vs wall time (solid: diffinfer, dashed: diffusers)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run(quick: bool = False, out_dir=None, n_ref=None, n_fd=None, time_rows=None, repeats=None, reuse=None,
        log=print) -> dict:
    t_start = time.perf_counter()
    out_dir = pathlib.Path(out_dir) if out_dir else RESULTS
    n_ref = n_ref or (16 if quick else 32)
    n_fd = n_fd or (200 if quick else 400)
    time_rows = time_rows or (50 if quick else 100)
    repeats = repeats or (2 if quick else 3)
    base, reason = bench_solvers.load_digits()
    if base is None:
        raise RuntimeError(reason)
    _BASE[0] = base
    torch.set_num_threads(1)
    n = max(n_ref, n_fd, time_rows)
    den = base.bind(label=bench_solvers.digits_labels(n))
    den.check = False
    x_T = bench_solvers.starting_noise(base.process, n, tuple(base.shape), seed=0, dtype=torch.float32)
    grids_dir = RESULTS / "grids"
    with torch.no_grad():
        t0 = time.perf_counter()
        x_ref = bench_solvers.digits_reference(den.select(torch.arange(n_ref)), x_T[:n_ref])
        log(f"reference ({bench_solvers.DIGITS_REFERENCE_STEPS} steps, {n_ref} rows): {time.perf_counter() - t0:.0f}s")
        x_conv = bench_solvers.by_chunks(
            lambda d, x0: grids.teacher_endpoint(d, x0, CONVERGED_STEPS, "dpmpp-3m", t_end=base.process.t_min),
            den.select(torch.arange(n_fd)), x_T[:n_fd])
        from diffinfer.zoo import quality
        fd_conv = quality.fd_digits(x_conv)
        fd_target = FD_SLACK * fd_conv
        log(f"converged FD ({n_fd} samples): {fd_conv:.4f}; target {fd_target:.4f}")
        ms = methods(quick, grids_dir, base)
        previous = None
        if reuse:
            old = json.loads(pathlib.Path(reuse).read_text())
            same = {k: old["config"].get(k) for k in ("quick", "n_ref", "n_fd")} == {"quick": quick, "n_ref": n_ref,
                                                                                  "n_fd": n_fd}
            if not same or old.get("rmse_target") != RMSE_TARGET or abs(old.get("fd_target", 0) - fd_target) > 1e-9:
                raise ValueError(f"{reuse} was run with other sizes or targets; run without --reuse")
            previous = {r["method"]: r for r in old["results"]}
            log(f"reusing the step searches of {reuse} (timings are new)")
        rows = run_time_to_quality(ms, den, x_T, x_ref, n_ref, n_fd, fd_target, time_rows, repeats,
                                   fd_methods=1 if quick else 3, log=log, reuse=previous)
        cache_rows = run_cache_goal(den, x_T, x_ref, n_ref, time_rows, repeats + 2, CACHE_SOLVERS, log)
        bound = run_call_bound(den, x_T, time_rows, repeats)
        log(f"  one full call {bound['full_call_seconds']:.4f}s; cached, depth 1: {bound['depth_1_cached_call_seconds']:.4f}s "
            f"(bound {bound['depth_1_bound']:.2f}x), depth 0: {bound['depth_0_cached_call_seconds']:.4f}s "
            f"(bound {bound['depth_0_bound']:.2f}x)")
        cfg = run_cfg(den, x_T, time_rows, repeats + 2)
    report = {"config": {"quick": quick, "n_ref": n_ref, "n_fd": n_fd, "time_rows": time_rows, "repeats": repeats,
                         "machine": f"{platform.machine()}, torch {torch.__version__}, 1 thread"},
              "rmse_target": RMSE_TARGET, "fd_target": fd_target, "fd_converged": fd_conv,
              "results": rows, "cache": cache_rows, "cache_call_bound": bound, "cfg": cfg,
              "command": "taskset -c 1 python bench/accel.py" + (" --quick" if quick else "")
              + (f" --reuse {reuse}" if reuse else "") + (f" --repeats {repeats}" if repeats != (2 if quick else 3)
                                                          else "")}
    report["summary"] = summarise(rows)
    report["seconds"] = time.perf_counter() - t_start
    stem = "accel_quick" if quick else "accel"
    out_dir.mkdir(parents=True, exist_ok=True)
    report["plot"] = plot(report, out_dir / f"{stem}.png")
    write_text(out_dir / f"{stem}.json", json.dumps(report, indent=1, default=float))
    write_text(out_dir / f"{stem}.md", markdown(report))
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--n-ref", type=int)
    p.add_argument("--n-fd", type=int)
    p.add_argument("--time-rows", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--out", help="output directory (default bench/results)")
    p.add_argument("--reuse", help="a previous accel.json: reuse its step searches (same sizes; only the timing "
                                   "is redone)")
    a = p.parse_args(argv)
    report = run(a.quick, a.out, a.n_ref, a.n_fd, a.time_rows, a.repeats, a.reuse)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
