"""The low-dimensional grid parameterisation (``grids.SplineParams``) and the robust fit
objective (``grids.robust_loss``, ``optimize(..., robust=...)``) of issue 14."""
import math

import numpy as np
import pytest
import torch

import diffinfer as di
from diffinfer import grids
from diffinfer.toys import ring2d

F64 = torch.float64


@pytest.mark.parametrize("process", [di.VP("linear"), di.EDM(), di.RectifiedFlow()])
@pytest.mark.parametrize("steps", [2, 4, 7, 10])
def test_spline_grids_are_monotone_with_fixed_ends_and_round_trip(process, steps):
    params = grids.SplineParams.of(process, steps, knots=3)
    assert params.n_grid <= 3
    rng = np.random.default_rng(0)
    for _ in range(10):
        theta = rng.normal(size=params.n_grid) * 3
        ts = params.grid(theta)
        grids.validate(ts)  # strictly descending in [0, 1]
        assert ts.numel() == steps + 1 and float(ts[0]) == process.t_max and float(ts[-1]) == 0.0
        assert float(ts[-2]) >= params.t_lo * (1 - 1e-12)
        back = params.grid(params.pack(ts))  # a spline grid is recovered exactly
        torch.testing.assert_close(back, ts, rtol=1e-8, atol=1e-12)


def test_spline_positions_are_monotone_and_pinned():
    u = np.linspace(0, 1, 101)
    for theta in ([0.0, 0.0], [3.0, -2.0], [-5.0, 4.0]):
        z = grids.spline_positions(np.array(theta), 3, u)
        assert z[0] == 0.0 and abs(z[-1] - 1.0) < 1e-15
        assert np.all(np.diff(z) >= 0)
    np.testing.assert_allclose(grids.spline_positions(np.zeros(0), 1, u), u)  # one interval: uniform in log-SNR
    lam = di.VP("linear").logsnr(grids.SplineParams.of(di.VP("linear"), 6, knots=1).grid(np.array([0.0]))[:-1])
    gaps = lam[1:] - lam[:-1]
    torch.testing.assert_close(gaps, gaps[:1].expand_as(gaps), rtol=1e-9, atol=1e-9)


def test_spline_fit_with_pinned_end_and_bad_options():
    den = ring2d().denoiser(di.VP("linear"))
    fit = grids.optimize(den, "unipc", 5, shape=(2,), n_train=16, parameterization="spline", t_min=1e-3,
                         max_evals=20, teacher_steps=40)
    assert math.isclose(fit.ts[-2], 1e-3) and fit.parameterization == "spline" and fit.knots == 3
    with pytest.raises(ValueError, match="parameterization"):
        grids.optimize(den, "unipc", 5, shape=(2,), n_train=4, parameterization="nope", teacher_steps=10)
    with pytest.raises(ValueError, match="model_times"):
        grids.optimize(den, "unipc", 5, shape=(2,), n_train=4, parameterization="spline", model_times=True,
                       teacher_steps=10)
    with pytest.raises(ValueError, match="robust"):
        grids.optimize(den, "unipc", 5, shape=(2,), n_train=4, robust="huber", teacher_steps=10)


def test_robust_losses():
    e = torch.tensor([1.0, 2.0, 3.0, 1000.0], dtype=F64)
    assert grids.robust_loss(e) == pytest.approx(251.5)
    assert grids.robust_loss(e, "trimmed", 0.25) == pytest.approx(2.0)
    assert grids.robust_loss(e * 10, "log") == pytest.approx(grids.robust_loss(e, "log") + math.log(10), rel=1e-6)


def test_one_planted_outlier_barely_moves_a_per_sample_normalised_fit():
    """Plant one training row whose teacher is far off. The per-sample-normalised (log)
    loss counts each row's relative error once, so the planted row cannot steer the fit:
    its grid stays where the clean fit's is. (The trimmed loss drops the row too, but the
    rows it keeps change with the grid, so its optimum is not stable; not asserted.)"""
    process = di.VP("linear")
    den = ring2d().denoiser(process)
    x_T, teacher = grids.training_set(den, n_train=64, shape=(2,), seed=5, teacher_steps=100)
    bad = teacher.clone()
    bad[0] += 5.0
    common = dict(x_T=x_T, parameterization="spline", max_evals=80)

    def fit(target, robust):
        return torch.log(grids.optimize(den, "unipc", 5, teacher=target, robust=robust, **common).grid[1:-1])

    moved_log = float((fit(bad, "log") - fit(teacher, "log")).abs().max())
    moved_mse = float((fit(bad, None) - fit(teacher, None)).abs().max())
    assert moved_log < 0.05, moved_log  # 5% in t
    assert moved_log < moved_mse


def test_optimize_reports_train_and_held_out_losses():
    den = ring2d().denoiser(di.VP("linear"))
    fit = grids.optimize(den, "unipc", 4, shape=(2,), n_train=32, n_holdout=32, parameterization="spline",
                         robust="trimmed", max_evals=30, teacher_steps=60)
    assert fit.n_holdout == 32 and fit.n_train == 32
    for v in (fit.train_mse, fit.holdout_mse, fit.holdout_loss, fit.initial_holdout_loss):
        assert math.isfinite(v) and v >= 0
    assert fit.holdout_loss <= fit.initial_holdout_loss


def test_flow_splines_use_the_noise_fraction_which_represents_the_uniform_grid():
    """A flow's log-SNR is -inf at t = 1; a spline in log-SNR from a stand-in just below
    that cannot follow the uniform grid (its first step takes half the log-SNR range), so
    ``auto`` takes the noise fraction ``log(sigma / (alpha + sigma))`` there (``log t``)."""
    flow = di.RectifiedFlow()
    t = torch.tensor([1e-4, 0.01, 0.3, 0.9, 0.999], dtype=F64)
    v = grids.noise_fraction(flow.logsnr(t).numpy())
    np.testing.assert_allclose(v, np.log(t.numpy()), rtol=1e-12)
    np.testing.assert_allclose(grids.logsnr_of_noise_fraction(v), flow.logsnr(t).numpy(), rtol=1e-9)
    assert grids.noise_fraction(-math.inf) == 0.0
    for process, variable in ((di.VP("linear"), "logsnr"), (di.EDM(), "logsnr"), (flow, "noise-fraction")):
        assert grids.SplineParams.of(process, 6).variable == variable
    for n in (4, 6, 8, 10):
        uniform = torch.cat([torch.linspace(1.0, 1.0 / n, n, dtype=F64), torch.zeros(1, dtype=F64)])
        err = {}
        for variable in ("logsnr", "noise-fraction"):
            params = grids.SplineParams.of(flow, n, knots=5, variable=variable)
            err[variable] = float((params.grid(params.pack(uniform)) - uniform).abs().max())
        assert err["noise-fraction"] < 0.015 and err["noise-fraction"] < err["logsnr"] / 5, err
    with pytest.raises(ValueError, match="'logsnr', 'noise-fraction'"):
        grids.SplineParams.of(flow, 6, variable="log-t")
    with pytest.raises(ValueError, match="resolves 'auto'"):
        grids.SplineParams(6, 1.0, 1e-4, flow, variable="auto")
    den = ring2d().denoiser(flow)
    with pytest.raises(ValueError, match="unknown spline variable"):
        grids.optimize(den, "unipc", 5, shape=(2,), n_train=4, parameterization="spline", spline_variable="t",
                       teacher_steps=10)
    with pytest.raises(ValueError, match="applies to parameterization='spline'"):
        grids.optimize(den, "unipc", 5, shape=(2,), n_train=4, spline_variable="logsnr", teacher_steps=10)
    fit = grids.optimize(den, "unipc", 5, shape=(2,), n_train=16, parameterization="spline", max_evals=20,
                         teacher_steps=40, spline_variable="noise-fraction")
    grids.validate(fit.grid)
    assert fit.spline_variable == "noise-fraction"
    auto = grids.optimize(ring2d().denoiser(di.VP("linear")), "unipc", 4, shape=(2,), n_train=8,
                          parameterization="spline", max_evals=5, teacher_steps=20)
    assert auto.spline_variable == "logsnr"  # the record names the variable "auto" resolved to
