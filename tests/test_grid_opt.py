"""Optimised time grids (``diffinfer.grids.optimize``): parameterisation, an exact
optimum on a Gaussian, held-out gains on a mixture, storage round trip."""
import math

import pytest
import torch

import diffinfer as di
from diffinfer import grids
from diffinfer.grids import Grid
from diffinfer.toys import GaussianMixture, ring2d

F64 = torch.float64


def test_exported_from_grids():
    assert grids.optimize is grids.fit.optimize


@pytest.mark.parametrize("process", [di.VP("linear"), di.RectifiedFlow()])
def test_parameterisation_round_trip_and_validity(process):
    t_lo = grids.default_t_lo(process)
    g = grids.initial_grids(process, 7)[0]
    theta = grids.params_from_grid(g, t_lo)
    assert theta.shape == (6,)
    torch.testing.assert_close(grids.grid_from_params(theta, float(g[0]), t_lo), g, rtol=1e-12, atol=1e-15)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):  # any parameters give a valid grid: fixed ends, descending, last level >= t_lo
        ts = grids.grid_from_params(torch.randn(6, generator=gen, dtype=F64) * 4, process.t_max, t_lo)
        grids.validate(ts)
        assert ts.numel() == 8 and float(ts[0]) == process.t_max and float(ts[-1]) == 0.0
        assert float(ts[-2]) >= t_lo * (1 - 1e-12)


def _two_step_ddim_gain(process, c: float, t1: float) -> float:
    """Closed form: DDIM on ``[t_max, t1, 0]`` maps ``x_T`` to ``k(t1) x_T`` for data
    ``N(0, c^2)`` (the exact denoiser is ``g(t) x`` with ``g = a c^2 / (a^2 c^2 + s^2)``)."""
    def g(t):
        a, s = float(process.alpha(torch.tensor(t, dtype=F64))), float(process.sigma(torch.tensor(t, dtype=F64)))
        return a, s, a * c * c / (a * a * c * c + s * s)
    a0, s0, g0 = g(process.t_max)
    a1, s1, g1 = g(t1)
    return g1 * (a1 * g0 + s1 * (1 - a0 * g0) / s0)


def test_two_step_ddim_on_a_gaussian_finds_the_closed_form_optimum():
    """For 1-D Gaussian data every solver is linear in ``x_T``; the exact probability-flow
    map is ``x_T -> c x_T / std(x_T)``. The loss is ``(k(t1) - k*)^2 E[x_T^2]``, so the
    optimal middle point is the minimiser of ``|k(t1) - k*|`` (found here by a dense scan
    and a bounded 1-D search, independent of the optimiser)."""
    from scipy.optimize import minimize_scalar
    process, c = di.VP("linear"), 0.5
    toy = GaussianMixture(torch.zeros(1, 1, dtype=F64), torch.full((1, 1, 1), c * c, dtype=F64))
    den = toy.denoiser(process)
    a0, s0 = float(process.alpha(torch.tensor(1.0, dtype=F64))), float(process.sigma(torch.tensor(1.0, dtype=F64)))
    k_star = c / math.sqrt(a0 * a0 * c * c + s0 * s0)
    x_T = torch.linspace(-2, 2, 33, dtype=F64).reshape(-1, 1)
    t_lo = grids.default_t_lo(process)
    loss = lambda t: (_two_step_ddim_gain(process, c, t) - k_star) ** 2  # noqa: E731
    scan = torch.exp(torch.linspace(math.log(t_lo), 0, 2001, dtype=F64)).tolist()[:-1]
    t_best = min(scan, key=loss)
    ref = minimize_scalar(lambda u: loss(math.exp(u)), bounds=(math.log(t_best) - 0.01, math.log(t_best) + 0.01),
                          method="bounded", options={"xatol": 1e-10}).x
    got = grids.optimize(den, "ddim", 2, x_T=x_T, teacher=k_star * x_T, max_evals=200)
    assert got.steps == 2 and got.ts[0] == 1.0 and got.ts[-1] == 0.0
    assert abs(math.log(got.ts[1]) - ref) < 1e-3
    mean_sq = float((x_T ** 2).mean())
    assert got.loss == pytest.approx(loss(math.exp(ref)) * mean_sq, rel=1e-4, abs=1e-14)
    assert got.loss <= got.initial_loss


def test_optimised_grid_beats_the_default_on_held_out_noise():
    """Fitted to a 200-step teacher on one batch of noise, the grid must cut the error to the
    exact probability-flow endpoint on another batch by a clear factor (ring2d, VP, 4 steps)."""
    from diffinfer.toys.reference import pf_ode_solution
    toy, process = ring2d(), di.VP("linear")
    den = toy.denoiser(process)
    fitted = grids.optimize(den, "unipc", 4, shape=(2,), n_train=64, seed=5, max_evals=120)
    assert fitted.loss < 0.5 * fitted.initial_loss
    x_T = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(99))
    exact = den.x0(pf_ode_solution(den, x_T, 1.0, 1e-5, rtol=1e-9, atol=1e-9), 1e-5)
    err = lambda ts: float(((di.sample(den, x_T, solver="unipc", ts=ts).x - exact) ** 2).mean().sqrt())  # noqa: E731
    assert err(fitted.grid) < 0.5 * err(grids.default(process, 4))


def test_last_noise_level_cap_is_respected():
    den = ring2d().denoiser(di.VP("linear"))
    fitted = grids.optimize(den, "unipc", 3, shape=(2,), n_train=16, max_evals=40, t_end_max=0.002)
    assert fitted.ts[-2] <= 0.002 and fitted.loss <= fitted.initial_loss
    with pytest.raises(ValueError, match="t_end_max"):
        grids.optimize(den, "unipc", 3, shape=(2,), n_train=16, t_end_max=1e-5)


def test_custom_distance_is_the_objective():
    den = ring2d().denoiser(di.VP("linear"))
    x_T = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    teacher = torch.zeros_like(x_T)
    l1 = lambda a, b: float((a - b).abs().mean())  # noqa: E731
    fitted = grids.optimize(den, "ddim", 3, x_T=x_T, teacher=teacher, distance=l1, max_evals=30)
    start = di.sample(den, x_T, solver="ddim", ts=grids.initial_grids(den.process, 3)[0]).x
    assert fitted.initial_loss == pytest.approx(l1(start, teacher), rel=1e-12)
    assert fitted.loss <= fitted.initial_loss


def test_grow_keeps_the_points_and_splits_the_widest_log_gap():
    ts = torch.tensor([1.0, 0.5, 0.001, 0.0], dtype=F64)
    grown = grids.grow(ts, 4)
    torch.testing.assert_close(grown, torch.tensor([1.0, 0.5, math.sqrt(0.5 * 0.001), 0.001, 0.0], dtype=F64))
    assert set(ts.tolist()) <= set(grids.grow(ts, 7).tolist()) and grids.grow(ts, 7).numel() == 8


def test_shrink_removes_each_positive_point_after_t_max_once():
    ts = torch.tensor([1.0, 0.7, 0.3, 0.05, 0.004, 0.0], dtype=F64)
    shrunk = grids.shrink(ts)
    assert len(shrunk) == 4
    removed = []
    for g in shrunk:
        assert g.numel() == 5 and float(g[0]) == 1.0 and float(g[-1]) == 0.0 and bool((g[1:] < g[:-1]).all())
        assert set(g.tolist()) < set(ts.tolist())
        removed += list(set(ts.tolist()) - set(g.tolist()))
    assert sorted(removed) == sorted(ts[1:-1].tolist())  # every point but t_max and 0, once each
    torch.testing.assert_close(grids.shrink(torch.tensor([1.0, 0.2, 0.0], dtype=F64))[0],
                               torch.tensor([1.0, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="positive point after t_max"):
        grids.shrink(torch.tensor([1.0, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="ending at 0"):
        grids.shrink(torch.tensor([1.0, 0.5, 0.1], dtype=F64))


def test_insertions_add_each_midpoint_once_and_undo_shrink():
    ts = torch.tensor([1.0, 0.7, 0.3, 0.05, 0.0], dtype=F64)
    grown = grids.insertions(ts)
    assert len(grown) == 4  # one per step: three midpoints (t_max's interval too) and one below 0.05
    added = []
    for g in grown:
        assert g.numel() == 6 and float(g[0]) == 1.0 and float(g[-1]) == 0.0 and bool((g[1:] < g[:-1]).all())
        assert set(ts.tolist()) < set(g.tolist())
        assert any(torch.equal(h, ts) for h in grids.shrink(g))  # removing the new point gives ts back
        added += list(set(g.tolist()) - set(ts.tolist()))
    want = [math.sqrt(0.7), math.sqrt(0.7 * 0.3), math.sqrt(0.3 * 0.05), 0.05 * 0.05 / 0.3]
    assert sorted(added) == pytest.approx(sorted(want), rel=1e-12)
    one = grids.insertions(torch.tensor([1.0, 0.2, 0.0], dtype=F64))
    torch.testing.assert_close(one[0], torch.tensor([1.0, math.sqrt(0.2), 0.2, 0.0], dtype=F64))
    torch.testing.assert_close(one[1], torch.tensor([1.0, 0.2, 0.04, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="positive point after t_max"):
        grids.insertions(torch.tensor([1.0, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="ending at 0"):
        grids.insertions(torch.tensor([1.0, 0.5, 0.1], dtype=F64))


def test_save_load_round_trip(tmp_path):
    rec = grids.OptimizedGrid(ts=[1.0, 0.3, 0.01, 0.0], solver="unipc", steps=3, loss=1e-3, initial_loss=2e-3)
    rec3 = grids.OptimizedGrid(ts=[1.0, 0.2, 0.0], solver="unipc", steps=2, solver_options={"order": 3})
    path = grids.save(tmp_path / "m.json", [rec, rec3], meta={"model": "m"})
    back = grids.load(path, "unipc", 3)
    torch.testing.assert_close(back.grid, rec.grid)
    assert grids.load(path, "unipc", 2, order=3).ts == rec3.ts
    assert set(grids.load(path)) == {"unipc/3", "unipc[order=3]/2"}
    grids.save(path, [], meta={"note": 1})  # meta entries are added, records kept
    assert grids.load_meta(path) == {"model": "m", "note": 1} and set(grids.load(path)) == {"unipc/3", "unipc[order=3]/2"}
    with pytest.raises(FileNotFoundError):
        grids.load_meta(tmp_path / "absent.json")
    with pytest.raises(KeyError, match="stored: unipc/3"):
        grids.load(path, "unipc", 5)


def test_bad_input():
    den = ring2d().denoiser(di.VP("linear"))
    with pytest.raises(ValueError, match="valid: .*unipc"):
        grids.optimize(den, "nope", 3, shape=(2,))
    with pytest.raises(ValueError, match="x_T or shape"):
        grids.optimize(den, "unipc", 3)
    with pytest.raises(ValueError, match="NaN"):
        grids.optimize(den, "unipc", 3, x_T=torch.full((4, 2), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match="ends at t = 0"):
        grids.params_from_grid(torch.tensor([1.0, 0.5, 0.1], dtype=F64), 1e-4)


def test_training_set_teacher_ends_at_the_smallest_allowed_level():
    """The teacher is the high-step solver down to ``t_lo`` (then the denoised estimate), so
    a student may stop no earlier than the teacher; the noise is reproducible by seed."""
    den = ring2d().denoiser(di.VP("linear"))
    x_T, teacher = grids.training_set(den, n_train=8, shape=(2,), seed=3, teacher_steps=20, t_lo=2e-3)
    again, _ = grids.training_set(den, n_train=8, shape=(2,), seed=3, teacher_steps=2)
    torch.testing.assert_close(x_T, again, rtol=0, atol=0)
    expected = grids.teacher_endpoint(den, x_T, 20, "dpmpp-3m", t_end=2e-3)
    torch.testing.assert_close(teacher, expected, rtol=0, atol=0)
    ts = grids.logsnr(den.process, 20, t_min=2e-3)
    assert float(ts[-2]) == 2e-3 and float(ts[-1]) == 0.0
    torch.testing.assert_close(teacher, di.sample(den, x_T, solver="dpmpp-3m", ts=ts).x, rtol=0, atol=0)


def test_fit_candidates_compare_on_one_training_set_and_chain_starts():
    """Every candidate is scored on the same noise and teacher (its losses recomputed here
    from scratch), the list comes back best first, the second candidate starts from the
    first one's fitted grid, and ``best`` picks the lowest loss (optionally per candidate)."""
    den = ring2d().denoiser(di.VP("linear"))
    cands = [("ddim", {}), ("unipc", {"order": 3})]
    fits = grids.fit_candidates(den, cands, 3, shape=(2,), n_train=16, seed=4, teacher_steps=40, max_evals=30)
    assert [f.loss for f in fits] == sorted(f.loss for f in fits)
    by = {(f.solver, tuple(f.solver_options.items())): f for f in fits}
    ddim, unipc = by[("ddim", ())], by[("unipc", (("order", 3),))]
    x_T, teacher = grids.training_set(den, n_train=16, shape=(2,), seed=4, teacher_steps=40)
    mse = lambda s, ts, **o: float(((grids.solve(den, x_T, s, ts, **o) - teacher) ** 2).mean())  # noqa: E731
    assert ddim.loss == pytest.approx(mse("ddim", ddim.grid), rel=1e-12)
    assert unipc.loss == pytest.approx(mse("unipc", unipc.grid, order=3), rel=1e-12)
    assert ddim.initial_loss == pytest.approx(mse("ddim", grids.initial_grids(den.process, 3)[0]), rel=1e-12)
    assert unipc.initial_loss == pytest.approx(mse("unipc", ddim.grid, order=3), rel=1e-12)  # chained start
    assert grids.best(fits, 3) is fits[0]
    assert grids.best(fits, 3, [("ddim", {})]) is ddim
    with pytest.raises(KeyError, match="no fitted grid of 4 steps"):
        grids.best(fits, 4)
    with pytest.raises(ValueError, match="at least one"):
        grids.fit_candidates(den, [], 3, shape=(2,))


def test_best_reads_a_saved_file(tmp_path):
    recs = [grids.OptimizedGrid(ts=[1.0, 0.3, 0.0], solver="unipc", steps=2, loss=2.0),
            grids.OptimizedGrid(ts=[1.0, 0.2, 0.0], solver="unipc", steps=2, solver_options={"order": 3}, loss=1.0),
            grids.OptimizedGrid(ts=[1.0, 0.5, 0.1, 0.0], solver="ddim", steps=3, loss=0.1)]
    saved = grids.load(grids.save(tmp_path / "g.json", recs))
    assert grids.best(saved, 2).key == "unipc[order=3]/2"
    assert grids.best(saved, 2, [("unipc", {})]).key == "unipc/2"
    with pytest.raises(KeyError, match="unipc"):
        grids.best(saved, 3, [("unipc", {})])


# --- decoupled model times ------------------------------------------------------------
@pytest.mark.parametrize("solver", ["unipc", "dpmpp-2m", "evodiff"])
def test_model_times_at_the_grid_times_reproduce_the_plain_solve_bitwise(solver):
    """``ModelTimes`` with ``model_ts = ts[:-1]`` (offsets 0, where every fit starts) is the
    plain model: the solve is identical to the last bit, through the grid fast path."""
    den = ring2d().denoiser(di.VP("linear"))
    ts = grids.logsnr(den.process, 6)
    x_T = torch.randn(32, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    zero = grids.model_times_from_params(ts, torch.zeros(6, dtype=F64), 1e-4, 1.0)
    torch.testing.assert_close(zero, ts[:-1], rtol=0, atol=0)
    plain = grids.solve(den, x_T, solver, ts)
    torch.testing.assert_close(grids.solve(grids.ModelTimes(den, ts, zero), x_T, solver, ts), plain, rtol=0, atol=0)
    rec = grids.OptimizedGrid(ts=ts.tolist(), solver=solver, steps=6, model_ts=zero.tolist())
    assert rec.key == f"{solver}+model-times/6" and rec.denoiser(den) is not den
    assert grids.OptimizedGrid(ts=ts.tolist(), solver=solver, steps=6).denoiser(den) is den


def test_model_times_evaluate_the_model_at_the_shifted_time():
    """On the fitted grid point ``k`` the prediction is the model's at ``model_ts[k]``; between
    grid points the log-offset is interpolated in ``log t``; ``t = 0`` stays 0."""
    den = ring2d().denoiser(di.VP("linear"))
    ts = torch.tensor([1.0, 0.4, 0.05, 0.0], dtype=F64)
    ms = torch.tensor([0.9, 0.5, 0.04], dtype=F64)
    wrapped = grids.ModelTimes(den, ts, ms)
    x = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    grid = Grid.of(den.process, ts)
    for k in range(3):
        torch.testing.assert_close(wrapped.predict(x, grid.point(k)).x0, den.x0(x, ms[k]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(wrapped.model_time(ts[k]), ms[k], rtol=1e-15, atol=0)
    mid = math.sqrt(0.4 * 0.05)  # halfway in log t: the geometric mean of the two offsets
    expected = mid * math.sqrt((0.5 / 0.4) * (0.04 / 0.05))
    assert float(wrapped.model_time(mid)) == pytest.approx(expected, rel=1e-12)
    assert float(wrapped.model_time(0.0)) == 0.0
    torch.testing.assert_close(wrapped.x0(x, mid), den.x0(x, expected), rtol=1e-10, atol=1e-12)
    before = den.nfe
    wrapped.x0(x, 0.3)
    assert den.nfe == before + 1  # shares the counter


def test_model_times_fit_finds_the_exact_one_step_map_of_a_gaussian():
    """1-D Gaussian data ``N(0, c^2)``: the exact probability-flow map is ``x_T -> k* x_T``; one
    step to ``t = 0`` returns the denoiser ``g(s) x_T`` at the model time ``s``, with
    ``g(s) = a c^2 / (a^2 c^2 + sigma^2)``, which no grid can change (the plain loss is fixed)
    but the decoupled model time can match: the fit drives the loss to ~0, at the root of
    ``g(s) = k*`` (found here by bisection, independent of the optimiser)."""
    process, c = di.VP("linear"), 0.5
    toy = GaussianMixture(torch.zeros(1, 1, dtype=F64), torch.full((1, 1, 1), c * c, dtype=F64))
    den = toy.denoiser(process)

    def ac(t):
        t = torch.tensor(t, dtype=F64)
        return float(process.alpha(t)), float(process.sigma(t))
    a0, s0 = ac(1.0)
    k_star = c / math.sqrt(a0 * a0 * c * c + s0 * s0)
    g = lambda t: ac(t)[0] * c * c / (ac(t)[0] ** 2 * c * c + ac(t)[1] ** 2)  # noqa: E731 - decreasing in t
    lo, hi = 1e-4, 1.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if g(mid) > k_star else (lo, mid)
    x_T = torch.linspace(-2, 2, 17, dtype=F64).reshape(-1, 1)
    plain = grids.optimize(den, "ddim", 1, x_T=x_T, teacher=k_star * x_T)
    fit = grids.optimize(den, "ddim", 1, x_T=x_T, teacher=k_star * x_T, model_times=True, max_evals=200)
    assert fit.initial_loss == plain.loss > 0.01  # starts at the plain solve, exactly
    assert fit.loss < 1e-8 * fit.initial_loss
    assert fit.model_ts[0] == pytest.approx(lo, rel=1e-3) and fit.ts == [1.0, 0.0]
    again = grids.solve(fit.denoiser(den), x_T, "ddim", fit.grid)
    assert float(((again - k_star * x_T) ** 2).mean()) == pytest.approx(fit.loss, rel=1e-9, abs=1e-20)


def test_model_times_fit_never_ends_above_its_start_and_keys_apart(tmp_path):
    """Started from a fitted grid, the joint fit (grid and model times, with a restart) ends
    no worse on its training batch, its loss is reproduced by its record's ``denoiser``, and
    it is stored and picked apart from the plain record."""
    den = ring2d().denoiser(di.VP("linear"))
    x_T, teacher = grids.training_set(den, n_train=16, shape=(2,), seed=4, teacher_steps=40)
    plain = grids.optimize(den, "unipc", 3, x_T=x_T, teacher=teacher, max_evals=30)
    fit = grids.optimize(den, "unipc", 3, x_T=x_T, teacher=teacher, init=[plain.grid], model_times=True,
                         max_evals=40, restarts=1)
    assert fit.initial_loss == plain.loss and fit.loss <= fit.initial_loss
    assert len(fit.model_ts) == 3 and all(1e-4 <= t <= 1.0 for t in fit.model_ts)
    out = grids.solve(fit.denoiser(den), x_T, "unipc", fit.grid)
    assert float(((out - teacher) ** 2).mean()) == pytest.approx(fit.loss, rel=1e-12)
    saved = grids.load(grids.save(tmp_path / "g.json", [plain, fit]))
    assert set(saved) == {"unipc/3", "unipc+model-times/3"} and saved["unipc+model-times/3"].model_ts == fit.model_ts
    assert grids.best(saved, 3, [("unipc", {})]).model_ts is None
    assert grids.best(saved, 3, [("unipc", {}), ("unipc", {}, True)]).key == ("unipc+model-times/3" if fit.loss < plain.loss else "unipc/3")
    with pytest.raises(ValueError, match="candidate is"):
        grids.best(saved, 3, [("unipc",)])


def test_a_nelder_mead_restart_runs_again_from_the_best_point_with_a_fresh_simplex(monkeypatch):
    """``restarts=1``: after each run that improved, one more run starts at that run's end (a
    fresh simplex there), so the first run is the one ``restarts=0`` makes, bitwise, and the
    fit ends no worse; a run that does not improve ends its block's restarts."""
    import numpy as np
    import scipy.optimize
    real, calls = scipy.optimize.minimize, []

    def spy(fun, x0, **kw):
        res = real(fun, x0, **kw)
        calls.append((np.array(x0, copy=True), res.x.copy(), float(res.fun)))
        return res
    monkeypatch.setattr(scipy.optimize, "minimize", spy)
    den = ring2d().denoiser(di.VP("linear"))
    x_T, teacher = grids.training_set(den, n_train=16, shape=(2,), seed=4, teacher_steps=40)
    plain = grids.optimize(den, "unipc", 3, x_T=x_T, teacher=teacher, max_evals=30)
    fits, runs = [], []
    for restarts in (0, 1):
        calls.clear()
        fits.append(grids.optimize(den, "unipc", 3, x_T=x_T, teacher=teacher, init=[plain.grid], model_times=True,
                                   max_evals=40, restarts=restarts))
        runs.append(list(calls))
    once, twice = runs  # [(x0, x, loss)] per Nelder-Mead run; blocks: grid, model times, both (sizes differ)
    assert np.array_equal(twice[0][0], once[0][0]) and twice[0][2] == once[0][2]  # the first run as without
    assert twice[0][2] < plain.loss and len(twice) > len(once)  # it improved, so a restart ran
    assert len(twice) <= 2 * len(once) + 2
    for before, after in zip(twice, twice[1:]):
        if len(after[0]) == len(before[0]):  # a restart of the same block: it starts at the last run's end
            np.testing.assert_array_equal(after[0], before[1])
            assert before[2] < plain.loss
    assert fits[1].loss == min(plain.loss, *(c[2] for c in twice)) <= fits[0].loss


def test_model_times_bad_input():
    den = ring2d().denoiser(di.VP("linear"))
    ts = torch.tensor([1.0, 0.4, 0.0], dtype=F64)
    with pytest.raises(ValueError, match="one time per positive grid point"):
        grids.ModelTimes(den, ts, [0.9])
    with pytest.raises(ValueError, match=r"\(0, t_max"):
        grids.ModelTimes(den, ts, [1.5, 0.3])
    with pytest.raises(ValueError, match=r"\(0, t_max"):
        grids.ModelTimes(den, ts, [0.9, 0.0])
    with pytest.raises(TypeError, match="Denoiser"):
        grids.ModelTimes(lambda x, t: x, ts, [0.9, 0.3])


def test_holdout_keeps_the_checkpoint_best_on_held_out_noise():
    """With ``holdout`` the fit returns, among its start and its improving checkpoints, the
    one with the lowest held-out loss: a held-out teacher equal to the start's own endpoint
    (held-out loss 0 there, > 0 anywhere else) must return the start itself, bitwise; a
    real held-out set returns a point no worse there than the start, its losses reproduced."""
    den = ring2d().denoiser(di.VP("linear"))
    x_T, teacher = grids.training_set(den, n_train=16, shape=(2,), seed=4, teacher_steps=40)
    x_h, teacher_h = grids.training_set(den, n_train=16, shape=(2,), seed=5, teacher_steps=40)
    start = grids.logsnr(den.process, 3)
    own = grids.solve(den, x_h, "unipc", start)
    fit = grids.optimize(den, "unipc", 3, x_T=x_T, teacher=teacher, init=[start], model_times=True,
                         max_evals=30, holdout=(x_h, own))
    assert fit.ts == start.tolist() and fit.model_ts == start[:-1].tolist()
    assert fit.loss == fit.initial_loss and fit.holdout_loss == fit.initial_holdout_loss == 0.0
    fit = grids.optimize(den, "unipc", 3, x_T=x_T, teacher=teacher, init=[start], model_times=True,
                         max_evals=30, holdout=(x_h, teacher_h))
    held = float(((grids.solve(fit.denoiser(den), x_h, "unipc", fit.grid) - teacher_h) ** 2).mean())
    assert fit.holdout_loss == pytest.approx(held, rel=1e-12) and fit.holdout_loss <= fit.initial_holdout_loss
    assert fit.loss <= fit.initial_loss
    with pytest.raises(ValueError, match="holdout"):
        grids.optimize(den, "unipc", 3, x_T=x_T, teacher=teacher, max_evals=5, holdout=(x_h[:, :1], teacher_h))


def test_fit_from_a_given_t_max_and_to_a_given_t_min():
    """``t_max`` / ``t_min`` are the fit's bounds (issue #14): the grid starts at ``t_max``,
    its initial grids too, and with ``t_min`` its last noise level is ``t_min``."""
    den = ring2d().denoiser(di.VP("linear"))
    fit = grids.optimize(den, "unipc", 3, shape=(2,), n_train=16, teacher_steps=40, max_evals=30, t_max=0.8)
    assert fit.ts[0] == 0.8 and fit.ts[-1] == 0.0 and len(fit.ts) == 4
    assert fit.loss <= fit.initial_loss
    assert all(float(g[0]) == 0.8 for g in grids.initial_grids(den.process, 3, t_max=0.8))
    pinned = grids.optimize(den, "unipc", 4, shape=(2,), n_train=16, teacher_steps=40, max_evals=30,
                            t_max=0.8, t_min=0.01)
    assert pinned.ts[0] == 0.8 and pinned.ts[-2] == 0.01 and pinned.ts[-1] == 0.0 and len(pinned.ts) == 5
    theta = grids.params_from_grid(pinned.grid, 1e-4, t_min=0.01)
    assert theta.shape == (2,)
    torch.testing.assert_close(grids.grid_from_params(theta, 0.8, 1e-4, t_min=0.01), pinned.grid, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="start at t_max=0.8"):
        grids.optimize(den, "unipc", 3, shape=(2,), n_train=4, teacher_steps=4, t_max=0.8,
                       init=[grids.logsnr(den.process, 3)])


def test_unknown_keyword_arguments_raise_naming_them():
    den = ring2d().denoiser(di.VP("linear"))
    with pytest.raises(ValueError, match="unknown keyword argument.*'t_maks'"):
        grids.optimize(den, "unipc", 3, shape=(2,), t_maks=0.8)
    with pytest.raises(ValueError, match="'foo'") as info:
        grids.optimize(den, "unipc", 3, shape=(2,), order=3, foo=1)
    assert "'order'" not in str(info.value)
    with pytest.raises(ValueError, match="unknown keyword argument.*'foo'"):
        grids.fit_candidates(den, [("ddim", {})], 2, shape=(2,), n_train=4, teacher_steps=4, foo=1)
