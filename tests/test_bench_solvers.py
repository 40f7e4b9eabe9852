"""The solver benchmark: anchors agree with diffinfer where they run the same algorithm,
and the ``--quick`` path writes the promised JSON, markdown and plots with sane values."""
import json
import math
import pathlib
import sys

import pytest
import torch

import diffinfer as di
from diffinfer import grids
from diffinfer.toys import ring2d

pytest.importorskip("diffusers")
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import anchors  # noqa: E402

F64 = torch.float64


def _compare(process, names, ts, tol):
    den = ring2d().denoiser(process)
    x_T = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(3)) * float(process.sigma(ts[0]))
    checked = []
    for name in names:
        if anchors.unavailable_reason(name, process):
            continue
        solver, opts = anchors.ANCHORS[name].equivalent
        theirs = anchors.run(name, den, x_T, ts)
        ours = di.sample(den, x_T, solver=solver, ts=ts, **opts).x
        assert theirs.shape == ours.shape
        err = float((theirs - ours).abs().max())
        assert err < tol, f"{name} vs diffinfer {solver} {opts}: max difference {err:.3g}"
        checked.append(name)
    return checked


@pytest.mark.parametrize("grid", ["logsnr", "karras"])
def test_vp_anchors_agree_with_the_same_diffinfer_algorithm(grid):
    """diffusers upcasts part of its arithmetic to float32 (DPM-Solver, Euler), hence 1e-6."""
    process = di.VP("linear")
    ts = grids.get(grid, process, 7)
    names = [n for n in anchors.ANCHORS if "vp" in anchors.ANCHORS[n].kinds]
    checked = _compare(process, names, ts, tol=1e-6)
    assert {"diffusers-ddim", "diffusers-euler", "diffusers-dpmpp-2m", "diffusers-dpmpp-3m",
            "diffusers-unipc"} <= set(checked)


def test_flow_anchors_agree_with_the_same_diffinfer_algorithm():
    process = di.RectifiedFlow()
    checked = _compare(process, ["diffusers-flow-euler", "diffusers-dpmpp-2m"], grids.uniform(process, 7), tol=1e-6)
    assert len(checked) == 2
    # from alpha = 0 (t = 1) the two libraries differ by design: diffinfer drops the history
    # point at lambda = -inf and lowers the order (3M) or takes the exact h -> inf limit of the
    # corrector (UniPC), where diffusers runs its formulas on inf; from t < 1 they agree
    checked = _compare(process, ["diffusers-dpmpp-3m", "diffusers-unipc"], grids.uniform(process, 7, t_max=0.98),
                       tol=1e-6)
    assert len(checked) == 2


def test_k_diffusion_anchors_agree_or_skip():
    module, reason = anchors.load_k_diffusion()
    if module is None:
        pytest.skip(reason)
    process = di.VP("linear")
    checked = _compare(process, ["kdiff-euler", "kdiff-heun", "kdiff-dpmpp-2m"], grids.logsnr(process, 6), tol=1e-9)
    assert len(checked) == 3


def test_unknown_anchor_lists_valid_names():
    with pytest.raises(ValueError, match="valid: .*diffusers-unipc"):
        anchors.unavailable_reason("nope")


def test_quick_benchmark_writes_promised_fields(tmp_path):
    from diffinfer.cli import main
    assert main(["bench", "solvers", "--quick", "--no-fit-grids", "--n-eval", "32", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "solvers_quick.json").read_text())
    assert {"meta", "metric_of", "results", "summary", "overhead", "notes", "plots"} <= set(report)
    assert report["meta"]["quick"] is True and report["meta"]["seconds"] < 120
    rows = report["results"]
    assert {r["model"] for r in rows} == {"molrg-vp", "molrg-rf"}
    for r in rows:
        assert {"method", "library", "grid", "budget", "nfe", "steps", "rmse", "sw", "logp"} <= set(r)
        assert 1 <= r["nfe"] <= r["budget"]
        if r["method"] != "heun":  # a 2-step Heun is far off at NFE 4; everything else finite
            assert math.isfinite(r["rmse"]) and r["rmse"] >= 0 and r["sw"] >= 0
    libraries = {r["library"] for r in rows}
    assert {"diffinfer", "diffusers"} <= libraries
    # the same algorithm on the same grid and noise gives the same numbers in the report
    by = {(r["model"], r["method"], r["grid"], r["budget"]): r["rmse"] for r in rows}
    for (model, method, grid, budget), value in by.items():
        if method == "diffusers-dpmpp-2m":
            assert value == pytest.approx(by[(model, "dpmpp-2m", grid, budget)], rel=1e-5)
    # errors fall with NFE for a second-order method
    for model in ("molrg-vp", "molrg-rf"):
        assert by[(model, "unipc", "logsnr" if model.endswith("vp") else "uniform", 10)] < \
            by[(model, "unipc", "logsnr" if model.endswith("vp") else "uniform", 4)]
    for s in report["summary"]:
        assert s["ratio"] == pytest.approx(s["diffinfer"] / s["anchor"])
        assert s["goal_met"] == (s["ratio"] <= 0.5)
    over = {o["solver"]: o for o in report["overhead"]}
    # every registered solver has a row; heun and the SDE solvers against their diffusers scheduler
    assert set(over) == set(di.solvers.names())
    for solver, anchor in [("ddim", "diffusers-ddim"), ("euler", "diffusers-euler"), ("dpmpp-2m", "diffusers-dpmpp-2m"),
                           ("dpmpp-3m", "diffusers-dpmpp-3m"), ("unipc", "diffusers-unipc"),
                           ("heun", "diffusers-heun"), ("ddpm", "diffusers-ddpm"),
                           ("dpmpp-2m-sde", "diffusers-dpmpp-2m-sde"), ("euler-maruyama", "diffusers-score-sde-vp"),
                           ("pc", "diffusers-score-sde-ve")]:
        assert over[solver]["anchor"] == anchor and over[solver]["equivalent"] is True
    for solver in ("evodiff", "adaptive"):
        assert over[solver]["equivalent"] is False and "diffusers-dpmpp-2m" in over[solver]["anchor"]
    for o in report["overhead"]:
        for key in ("ratio", "ours_us_per_step", "diffusers_us_per_step", "steps_only_us_per_step",
                    "steps_only_ratio"):
            assert math.isfinite(o[key]) and o[key] > 0, (o["solver"], key, o[key])
        assert o["steps_only_ratio"] == pytest.approx(o["steps_only_us_per_step"] / o["diffusers_us_per_step"])
        assert o["nfe"] >= o["steps"]
    assert over["heun"]["nfe"] == 2 * over["heun"]["steps"] - 1 and over["pc"]["nfe"] == 2 * over["pc"]["steps"]
    for p in report["plots"]:
        path = pathlib.Path(p) if pathlib.Path(p).is_absolute() else ROOT / p
        assert path.read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "solvers_quick.md").read_text()
    assert "| molrg-vp | 4 |" in md and "Per-step overhead" in md and "steps only" in md
    for solver in ("heun", "ddpm", "dpmpp-2m-sde", "euler-maruyama", "pc", "evodiff", "adaptive"):
        assert f"| {solver} | " in md


def test_overhead_only_writes_both_timings_and_keeps_the_thread_count(tmp_path):
    from bench import solvers as bench
    threads = torch.get_num_threads()
    assert bench.overhead_only(tmp_path, repeats=1) == 0
    assert torch.get_num_threads() == threads
    report = json.loads((tmp_path / "overhead.json").read_text())
    assert {o["solver"] for o in report["overhead"]} == set(di.solvers.names())
    assert report["meta"]["command"] == "python bench/solvers.py --overhead --repeats 1"
    md = (tmp_path / "overhead.md").read_text()
    for o in report["overhead"]:
        assert f"| {o['solver']} | " in md and f"| {o['steps_only_ratio']:.2f} |" in md


def test_summary_per_goal_metric_and_digits_helpers():
    """A model judged on two metrics gets one goal row per metric and NFE, each comparing
    the best diffinfer row with the best anchor row by that metric alone."""
    from bench import solvers as bench
    rows = [{"model": "digits", "budget": 4, "library": "diffinfer", "method": "a+opt-grid", "grid": "optimized",
             "fd_digits": 0.3, "rmse": 0.2},
            {"model": "digits", "budget": 4, "library": "diffusers", "method": "x", "grid": "logsnr",
             "fd_digits": 1.0, "rmse": 0.3},
            {"model": "digits", "budget": 4, "library": "diffusers", "method": "y", "grid": "karras",
             "fd_digits": 0.5, "rmse": 0.9}]
    summary = bench.summarise(rows, {"digits": ["fd_digits", "rmse"]})
    by = {s["metric"]: s for s in summary}
    assert set(by) == {"fd_digits", "rmse"}
    assert by["fd_digits"]["best_anchor"] == "y @ karras" and by["fd_digits"]["ratio"] == pytest.approx(0.6)
    assert by["fd_digits"]["goal_met"] is False
    assert by["rmse"]["best_anchor"] == "x @ logsnr" and by["rmse"]["ratio"] == pytest.approx(0.2 / 0.3)
    labels = bench.digits_labels(25)
    assert labels.dtype == torch.int64 and torch.equal(torch.bincount(labels[:20]), torch.full((10,), 2))
    assert bench.method_label("unipc", {}) == "unipc+opt-grid"
    assert bench.method_label("unipc", {"order": 3}) == "unipc[order=3]+opt-grid"


def test_optimized_grid_refits_the_best_candidate_with_model_times(tmp_path):
    """``optimized_grid(model_times=...)``: the plain candidates are fitted and saved, the best
    one is refitted with decoupled model times from its grid on the same training set (so its
    loss starts at the plain loss and ends no higher), saved beside it, and read back."""
    from bench import solvers as bench
    from diffinfer.toys import gaussian_mixture
    den = gaussian_mixture.preset("ring2d").denoiser(di.VP("linear"))
    kw = dict(candidates=[("ddim", {}), ("unipc", {})], n_train=8, evals_per_step=4, teacher_steps=20)
    rec = bench.optimized_grid("ring2d-vp", den, (2,), 3, tmp_path, True, model_times={"evals_per_step": 4}, **kw)
    saved = grids.load(tmp_path / "ring2d-vp.json")
    plain = grids.best(saved, 3, kw["candidates"])
    assert rec.model_ts is not None and rec.key == plain.key.replace("/3", "+model-times/3")
    assert rec.initial_loss == plain.loss and rec.loss <= plain.loss
    again = bench.optimized_grid("ring2d-vp", den, (2,), 3, tmp_path, False, model_times={"evals_per_step": 4}, **kw)
    assert again.key == rec.key and again.ts == rec.ts and again.model_ts == rec.model_ts
    assert bench.optimized_grid("ring2d-vp", den, (2,), 3, tmp_path, False, **kw).key == plain.key
    assert bench.record_label(rec) == bench.method_label(rec.solver, rec.solver_options, True)
    assert bench.method_label("unipc", {}, True) == "unipc+model-times+opt-grid"


def test_optimized_grid_keeps_the_model_times_setting_with_the_lowest_held_out_loss(tmp_path):
    """With a list of fit settings each is fitted and the record with the lowest held-out loss
    is the one saved and returned (a choice made on held-out training noise only)."""
    from bench import solvers as bench
    from diffinfer.toys import gaussian_mixture
    den = gaussian_mixture.preset("ring2d").denoiser(di.VP("linear"))
    kw = dict(candidates=[("unipc", {})], n_train=8, evals_per_step=4, teacher_steps=20)
    settings = [{"evals_per_step": 1}, {"evals_per_step": 6, "restarts": 1}]
    fits = [bench.optimized_grid("ring2d-vp", den, (2,), 3, tmp_path / str(i), True, model_times=s, **kw)
            for i, s in enumerate(settings)]
    rec = bench.optimized_grid("ring2d-vp", den, (2,), 3, tmp_path / "both", True, model_times=settings, **kw)
    assert fits[0].holdout_loss != fits[1].holdout_loss  # so the choice is a real one
    best = min(fits, key=lambda f: f.holdout_loss)
    assert rec.holdout_loss == best.holdout_loss and rec.model_ts == best.model_ts
    assert grids.best(grids.load(tmp_path / "both" / "ring2d-vp.json"), 3, [("unipc", {}, True)]).ts == rec.ts


def test_optimized_grid_refits_model_times_on_the_given_rows_with_their_own_conditioning(tmp_path):
    """``optimized_grid(model_times_data=...)`` (digits: ``digits_stratified``): the model-times
    refit starts from the plain fit's grid but trains on the given weighted rows under their
    own labels, and scores the held-out rows under theirs (``holdout_den``)."""
    from bench import solvers as bench
    from diffinfer.toys import gaussian_mixture
    ring = gaussian_mixture.preset("ring2d").denoiser(di.VP("linear"))
    base = di.Denoiser(lambda x, t, label: ring.x0(x, t) + 0.05 * label.to(x.dtype)[:, None], ring.process, "x0")
    n = 10
    den, den_h = base.bind(label=torch.arange(n) % 4), base.bind(label=(torch.arange(n) + 1) % 4)
    x_T, teacher = grids.training_set(den, n_train=n, shape=(2,), seed=3, teacher_steps=20)
    x_h, teacher_h = grids.training_set(den_h, n_train=n, shape=(2,), seed=4, teacher_steps=20)
    w, w_h = torch.linspace(0.5, 1.5, n, dtype=torch.float64), torch.linspace(1.5, 0.5, n, dtype=torch.float64)
    kw = dict(candidates=[("unipc", {})], n_train=8, evals_per_step=3, teacher_steps=20)
    rec = bench.optimized_grid("ring-labels", base.bind(label=torch.arange(8) % 4), (2,), 3, tmp_path, True,
                               model_times={"evals_per_step": 3},
                               model_times_data=lambda: ((den, x_T, teacher, w), (den_h, x_h, teacher_h, w_h)), **kw)
    plain = grids.best(grids.load(tmp_path / "ring-labels.json"), 3, kw["candidates"])
    assert rec.model_ts is not None and rec.n_train == n and rec.n_holdout == n
    assert rec.initial_loss == pytest.approx(grids.Objective(den, "unipc", {}, x_T, teacher, weights=w)(plain.grid),
                                             rel=1e-12)
    obj = grids.Objective(den, "unipc", {}, x_T, teacher)
    held = obj.mse(rec.grid, torch.tensor(rec.model_ts, dtype=torch.float64), x_h, teacher_h, w_h, den=den_h)
    assert rec.holdout_mse == pytest.approx(held, rel=1e-12)


def test_suite_quick_writes_seeds_ratios_and_quantiles(tmp_path):
    from diffinfer.cli import main
    from bench import suite
    assert main(["bench", "solvers", "--suite", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "suite_quick.json").read_text())
    meta = report["meta"]
    assert meta["seeds"] == suite.QUICK_SEEDS and not set(meta["seeds"]) & set(suite.SUITE_SEEDS)
    assert meta["rule"]["label"] == suite.RULE[0] and meta["nfes"] == suite.QUICK_NFES
    assert len(report["problems"]) == len(meta["seeds"])
    for p in report["problems"]:
        assert p["problem"]["seed"] in meta["seeds"]
        assert [q["nfe"] for q in p["per_nfe"]] == meta["nfes"]
        for q in p["per_nfe"]:
            assert math.isfinite(q["ratio"]) and q["ratio"] > 0
            for side in ("rule", "anchor"):
                r = q[side]
                assert 0 < r["median"] <= r["p90"] and r["rmse"] > 0
                assert 0 <= r["flips"] <= meta["n_eval"]
            assert q["anchor"]["library"] == "diffusers"
            iv = q["interval"]
            assert 0 < iv["lo"] <= iv["hi"] and 0.0 <= iv["p_above_goal"] <= 1.0
            assert (iv["p_above_goal"] == 0.0) == (iv["hi"] <= suite.GOAL_RATIO) or iv["lo"] < suite.GOAL_RATIO < iv["hi"]
        for f in p["fits"]:
            assert math.isfinite(f["train_mse"]) and math.isfinite(f["holdout_mse"])
    assert {s["nfe"] for s in report["summary"]} == set(meta["nfes"])
    for s in report["summary"]:
        assert 0.0 <= s["fraction_at_most_half"] <= 1.0 and s["median_ratio"] <= s["worst_ratio"]
        if s["goal_met"] is not None:
            assert s["fraction_surely_at_most_half"] <= s["fraction_possibly_at_most_half"]
    md = (tmp_path / "suite_quick.md").read_text()
    assert "fraction <= 0.5x" in md and str(meta["seeds"][0]) in md and "paired bootstrap" in md


def test_suite_ratio_interval_is_paired_and_covers_the_true_ratio():
    """``ratio_interval``: resampling the same rows for both, a rule whose every per-sample error
    is c^2 times the anchor's has the interval [c, c] however heavy the tail; on independent
    exponential errors of known means (true ratio sqrt(a / b)) the 90% interval covers the truth
    in 85-95% of 400 seeded replications (binomial sd 1.5%; an 80% interval there covers 78%);
    bad shapes are refused."""
    from bench import suite
    g = torch.Generator().manual_seed(11)
    anchor = 1e-4 * torch.rand(500, generator=g, dtype=torch.float64) ** (-1 / 1.2)  # Pareto: a few rows decide
    for c in (0.4, 0.6):
        iv = suite.ratio_interval(c ** 2 * anchor, anchor, draws=300)
        assert iv["lo"] == pytest.approx(c, rel=1e-12) and iv["hi"] == pytest.approx(c, rel=1e-12)
        assert iv["p_above_goal"] == (1.0 if c > suite.GOAL_RATIO else 0.0)
    a, b, covered, reps = 0.3, 1.0, 0, 400
    for rep in range(reps):
        rule = -a * torch.log(torch.rand(400, generator=g, dtype=torch.float64))
        anc = -b * torch.log(torch.rand(400, generator=g, dtype=torch.float64))
        iv = suite.ratio_interval(rule, anc, draws=400, seed=rep)
        covered += iv["lo"] <= (a / b) ** 0.5 <= iv["hi"]
    assert 0.85 <= covered / reps <= 0.95
    broken = suite.ratio_interval(torch.full((500,), math.inf, dtype=torch.float64), anchor, draws=50)
    assert broken["lo"] == broken["hi"] == math.inf and broken["p_above_goal"] == 1.0  # a NaN rule never passes
    with pytest.raises(ValueError, match="two \\[N\\] tensors"):
        suite.ratio_interval(anchor, anchor[:-1])


def test_suite_scores_count_flips_by_most_likely_component():
    """A flip is a sample whose most likely mixture component differs from its exact
    endpoint's: moving one row across to the other mode counts one, a small error none,
    and a non-finite result counts every row."""
    import torch
    from bench import suite
    import diffinfer as di
    from diffinfer.toys import GaussianMixture
    f64 = torch.float64
    mix = GaussianMixture(torch.tensor([[-4.0, 0.0], [4.0, 0.0]], dtype=f64), torch.eye(2, dtype=f64).expand(2, 2, 2) * 0.1,
                          torch.tensor([0.5, 0.5], dtype=f64))
    process = di.VP("linear")
    component = lambda x: mix.responsibilities(x, process, suite.T_REF).argmax(1)  # noqa: E731
    x_ref = torch.tensor([[-4.0, 0.1], [4.1, 0.0], [-3.9, -0.2]], dtype=f64)
    ref = component(x_ref)
    assert suite.scores(x_ref + 0.05, x_ref, component, ref)["flips"] == 0
    moved = x_ref.clone()
    moved[2, 0] = 4.0
    out = suite.scores(moved, x_ref, component, ref)
    assert out["flips"] == 1 and out["rmse"] > 1.0
    bad = x_ref.clone()
    bad[0, 0] = float("nan")
    assert suite.scores(bad, x_ref, component, ref)["flips"] == 3
    assert "flips" not in suite.scores(x_ref, x_ref)


def test_suite_shrunk_start_drops_the_redundant_point_of_the_larger_grid():
    """Of the one-point-removed grids of a grid with a planted near-duplicate point, the one
    with the lowest training loss drops one of the pair (any other removal loses a real step)."""
    from bench import suite
    spec = suite.problem(suite.QUICK_SEEDS[0])
    mix, process = spec["mixture"], suite.make_process(spec["process"])
    den = mix.denoiser(process)
    larger = torch.tensor([1.0, 0.8, 0.6, 0.5999, 0.35, 0.15, 0.05, 0.0], dtype=torch.float64)
    train, _ = suite.rule_data(den, spec["dim"], suite.QUICK_SEEDS[0], n_train=64, n_holdout=1)
    start = suite.shrunk_start(den, larger, train)
    assert start.numel() == larger.numel() - 1
    assert set(larger.tolist()) - set(start.tolist()) in ({0.6}, {0.5999})


def test_suite_fits_from_the_largest_nfe_down_and_hands_each_grid_to_the_next(monkeypatch):
    """run_problem fits NFE 5 before 4 and hands NFE 5's spline grid to NFE 4's fit (SHRINK_CHAIN)."""
    from bench import suite
    calls = []
    real = suite.fit_rule

    def spy(den, nfe, data, max_evals, larger=None, extra_starts=()):
        rec, grid = real(den, nfe, data, max_evals, larger, extra_starts)
        calls.append((nfe, None if larger is None else larger.tolist(), grid.tolist()))
        return rec, grid
    repairs = []
    real_repair = suite.grow_repair

    def spy_repair(den, nfe, data, max_evals, fitted, smaller):
        repairs.append((nfe, smaller.tolist()))
        return real_repair(den, nfe, data, max_evals, fitted, smaller)
    monkeypatch.setattr(suite, "fit_rule", spy)
    monkeypatch.setattr(suite, "grow_repair", spy_repair)
    out = suite.run_problem(suite.QUICK_SEEDS[0], [4, 5], n_eval=16, n_train=16, n_holdout=16, max_evals=6,
                            log=lambda *a: None)
    assert [c[0] for c in calls[:2]] == [5, 4] and calls[0][1] is None
    assert calls[1][1] == calls[0][2] and len(calls[1][1]) == 6  # a 5-step grid
    assert repairs == [(5, calls[1][2])]  # then up (GROW_CHAIN): NFE 4's final grid checked against NFE 5's fit
    assert [c[0] for c in calls[2:]] in ([], [5])
    assert [f["nfe"] for f in out["fits"]] == [4, 5] and [q["nfe"] for q in out["per_nfe"]] == [4, 5]


def _quick_problem():
    from bench import suite
    spec = suite.problem(suite.QUICK_SEEDS[0])
    den = spec["mixture"].denoiser(suite.make_process(spec["process"]))
    return suite, den, suite.rule_data(den, spec["dim"], suite.QUICK_SEEDS[0], n_train=64, n_holdout=64)


def test_suite_grow_repair_refits_only_a_fit_worse_than_the_shorter_grid_grown(monkeypatch):
    """``grow_repair`` leaves a fit alone when its spline grid beats every one-point insertion
    of the shorter grid (no refit), and otherwise refits with the best insertion as one more
    start and keeps whichever record has the lower held-out MSE."""
    from types import SimpleNamespace
    from diffinfer import grids
    suite, den, data = _quick_problem()
    F64 = torch.float64
    smaller = grids.uniform(den.process, 4)  # [5]
    bad_grid = torch.tensor([1.0, 0.9999, 0.9998, 0.9997, 0.9996, 0.0], dtype=F64)  # one real step
    x_T, teacher, weights = data[0]
    loss = grids.Objective(den, suite.RULE[1], suite.RULE[2], x_T, teacher, weights=weights)
    start, start_loss = suite.grown_start(den, smaller, data[0])
    assert start.numel() == 6 and set(smaller.tolist()) < set(start.tolist())
    assert start_loss == min(loss(g, None) for g in grids.insertions(smaller))
    assert start_loss < loss(bad_grid, None)  # the planted grid is what it says
    good = (SimpleNamespace(holdout_mse=1e-9), start.clone())  # a fit as good as the best insertion: kept
    refits = []

    def fake_fit(den_, nfe, data_, max_evals, larger=None, extra_starts=()):
        refits.append((nfe, [g.tolist() for g in extra_starts]))
        return SimpleNamespace(holdout_mse=1e-3), extra_starts[0]
    monkeypatch.setattr(suite, "fit_rule", fake_fit)
    assert suite.grow_repair(den, 5, data, 6, good, smaller) is good and refits == []
    worse = (SimpleNamespace(holdout_mse=1.0), bad_grid)
    rec, grid = suite.grow_repair(den, 5, data, 6, worse, smaller)
    assert refits == [(5, [start.tolist()])] and rec.holdout_mse == 1e-3 and torch.equal(grid, start)
    lucky = (SimpleNamespace(holdout_mse=1e-6), bad_grid)  # the held-out MSE decides between the two
    assert suite.grow_repair(den, 5, data, 6, lucky, smaller) is lucky and len(refits) == 2


def test_suite_rule_data_is_stratified_and_the_rule_fits_with_its_weights():
    """With ``STRATIFIED`` the rule's training and held-out noise come from
    ``grids.stratified_training_set`` (the hard rows added to ``n_train`` bulk rows, weights of
    mean 1), and the fit's recorded MSEs are the weighted ones."""
    from bench import suite
    from diffinfer.grids.fit_objective import weighted_mse
    assert suite.STRATIFIED
    seed = suite.QUICK_SEEDS[0]
    spec = suite.problem(seed)
    mix, process = spec["mixture"], suite.make_process(spec["process"])
    den = mix.denoiser(process)
    train, holdout = suite.rule_data(den, spec["dim"], seed, n_train=32, n_holdout=16)
    for (x, t, w), n in ((train, 32), (holdout, 16)):
        n_hard = int(suite.HARD_FRACTION * n)
        assert x.shape == t.shape == (n + n_hard, spec["dim"]) and w.shape == (n + n_hard,)
        assert float(w.mean()) == pytest.approx(1.0) and float(w[-1] / w[0]) == pytest.approx(
            (suite.POOL_FACTOR * n - n_hard) / n)
    assert not torch.equal(train[0][:16], holdout[0][:16])
    rec, _ = suite.fit_rule(den, 4, (train, holdout), max_evals=4)
    ts = torch.tensor(rec.ts, dtype=torch.float64)
    model = rec.denoiser(den)
    out = grids.solve(model, train[0], rec.solver, ts, **rec.solver_options)
    assert rec.train_mse == pytest.approx(weighted_mse(out, train[1], train[2]), rel=1e-10)
    assert rec.train_mse != pytest.approx(weighted_mse(out, train[1]), rel=1e-6)


def test_suite_fit_rule_hands_the_model_times_stage_its_budget_and_restarts(monkeypatch):
    """``fit_rule``: the spline fits get ``max_evals`` and the spline parameterisation; the
    model-times stage starts from the spline fit with the lower held-out MSE and gets
    ``min(MODEL_TIMES_EVALS_PER_STEP * nfe, MODEL_TIMES_MAX_EVALS)`` solves and
    ``MODEL_TIMES_RESTARTS`` restarts (the rule's constants as the suite reports them)."""
    from types import SimpleNamespace
    from bench import suite
    calls, made = [], []

    def fake_optimize(den, solver, nfe, **kw):
        calls.append(kw)
        made.append(SimpleNamespace(grid=kw["init"][0].clone(), holdout_mse=1.0 if len(calls) == 1 else 2.0))
        return made[-1]  # the first spline fit holds out best
    monkeypatch.setattr(suite.grids, "optimize", fake_optimize)
    monkeypatch.setattr(suite, "MODEL_TIMES_RESTARTS", 3)
    monkeypatch.setattr(suite, "MODEL_TIMES_EVALS_PER_STEP", 7)
    spec = suite.problem(suite.QUICK_SEEDS[0])
    den = spec["mixture"].denoiser(suite.make_process(spec["process"]))
    data = ((None, None, None), (None, None, None))
    for nfe, budget in ((8, 56), (40, suite.MODEL_TIMES_MAX_EVALS)):  # 7 per step, or the cap
        calls.clear()
        made.clear()
        rec, spline = suite.fit_rule(den, nfe, data, max_evals=11)
        *fits, last = calls
        assert len(fits) == 2 and all(c["parameterization"] == "spline" and c["max_evals"] == 11 and "restarts" not in c
                            for c in fits)
        assert last["model_times"] is True and "parameterization" not in last
        assert last["max_evals"] == budget and last["restarts"] == 3
        assert last["init"] == [made[0].grid] and spline is made[0].grid and rec is made[-1]
    assert suite.rule_meta()["model_times_restarts"] == 3


class _LabelledRing:
    """A conditional ring2d model shaped like ``zoo.load("digits")`` (``process``, ``shape``,
    ``bind``), hashable as ``digits_stratified``'s cache needs."""

    def __init__(self):
        from diffinfer.toys import gaussian_mixture
        ring = gaussian_mixture.preset("ring2d").denoiser(di.VP("linear"))
        self.process, self.shape = ring.process, (2,)
        self._den = di.Denoiser(lambda x, t, label: ring.x0(x, t) + 0.05 * label.to(x.dtype)[:, None],
                                ring.process, "x0")

    def bind(self, **kw):
        return self._den.bind(**kw)


def test_digits_rule_stage_keeps_the_lower_heldout_record_and_reads_it_back(tmp_path, monkeypatch):
    """``digits_rule_grid``: the suite's rule fitted on ``digits_stratified(base, DIGITS_RULE_ROWS)``
    rows, compared with the model-times refit by ``heldout_mse`` on the same held-out rows (the
    figure ``optimize`` reports as ``holdout_mse``); the lower one is kept, the choice and both
    MSEs saved in the grids file's meta, and a later call (no compute) returns that record
    without fitting."""
    from bench import solvers as bench, suite
    base = _LabelledRing()
    monkeypatch.setattr(bench, "DIGITS_RULE_ROWS", 8)
    monkeypatch.setattr(bench, "DIGITS_REFERENCE_STEPS", 40)
    monkeypatch.setattr(suite, "EVALS_PER_FIT", 6)
    monkeypatch.setattr(suite, "MODEL_TIMES_MAX_EVALS", 6)
    path = tmp_path / "digits.json"
    train, held = bench.digits_stratified(base, 8)
    assert train[1].shape == held[1].shape == (12, 2)  # 8 bulk rows and 4 hard ones each
    x_T, teacher, w = train[1:]
    plain = grids.optimize(train[0], "unipc", 3, x_T=x_T, teacher=teacher, weights=w, max_evals=4, t_lo=1e-3)
    assert bench.heldout_mse(plain, held) == pytest.approx(
        grids.optimize(train[0], "unipc", 3, x_T=x_T, teacher=teacher, weights=w, max_evals=4, t_lo=1e-3,
                       holdout=tuple(held[1:]), holdout_den=held[0]).holdout_mse, rel=1e-12)
    grids.save(path, plain)
    bad = grids.OptimizedGrid(ts=[1.0, 0.9999, 0.9998, 0.0], solver="unipc", steps=3, model_ts=[1.0, 0.9999, 0.9998])
    real_fit, seen = suite.fit_rule, []

    def spy(*a, **k):
        seen.append(([g.tolist() for g in k["extra_starts"]], k["t_lo"]))
        return real_fit(*a, **k)
    monkeypatch.setattr(suite, "fit_rule", spy)
    kept = bench.digits_rule_grid(base, 3, path, bad, compute=True)  # a one-real-step refit loses
    assert seen == [([plain.grid.tolist()], base.process.t_min)]  # every saved 3-step record a start
    stage = json.loads(path.read_text())["meta"]["rule_stage"]["3"]
    assert stage["kept"] == "rule" and stage["heldout_mse"]["rule"] < stage["heldout_mse"]["refit"]
    assert stage["model_times_budget"] == [suite.MODEL_TIMES_EVALS_PER_STEP, 6]  # the budget it ran with
    assert stage["model_times_restarts"] == suite.MODEL_TIMES_RESTARTS
    assert stage["heldout_mse"]["rule"] == pytest.approx(bench.heldout_mse(kept, held), rel=1e-12)
    assert stage["heldout_mse"]["refit"] == pytest.approx(bench.heldout_mse(bad, held), rel=1e-12)
    assert grids.load(path)[stage["key"]].ts == kept.ts and kept.model_ts is not None

    def no_fit(*a, **k):
        raise AssertionError("the saved choice must be read back, not refitted")
    monkeypatch.setattr(suite, "fit_rule", no_fit)
    assert bench.digits_rule_grid(base, 3, path, bad, compute=True).ts == kept.ts
    # the refit kept where it is the better one: nothing saved under the rule's key
    good = bench.save_rule_stage(path, 4, kept, plain, {"rule": 2.0, "refit": 1.0})
    assert good is plain and json.loads(path.read_text())["meta"]["rule_stage"]["4"]["kept"] == "refit"
    assert "3" in json.loads(path.read_text())["meta"]["rule_stage"]  # earlier choices kept


def test_the_shipped_suite_results_are_the_current_rule_s_and_the_readme_quotes_them():
    """``bench/results/suite.json`` was made with the rule as it stands (``rule_meta``), its
    summary and ``suite.md`` are what ``summarise`` / ``markdown`` make of its problems, and the
    README's suite table quotes its fractions and medians."""
    import pathlib
    from bench import suite
    root = pathlib.Path(__file__).resolve().parents[1]
    report = json.loads((root / "bench" / "results" / "suite.json").read_text())
    assert report["meta"]["rule"] == suite.rule_meta() and report["meta"]["seeds"] == suite.SUITE_SEEDS
    assert report["summary"] == suite.summarise(report["problems"], report["meta"]["nfes"])
    assert (root / "bench" / "results" / "suite.md").read_text() == suite.markdown(report)
    rule = [s for s in report["summary"] if s["goal_met"] is not None]
    readme = (root / "README.md").read_text()
    assert ("| fraction of problems <= 0.5x best anchor | "
            + " | ".join(f"{s['fraction_at_most_half']:.2f}" for s in rule) + " |") in readme
    assert "| median ratio | " + " | ".join(f"{s['median_ratio']:.2f}" for s in rule) + " |" in readme
