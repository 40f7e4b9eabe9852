"""No silent divergence (issue #13, item 4): guided methods at their defaults stay finite and
within the prior's scale on every oracle-suite seed, and a deliberately huge scale raises
``GuidanceDivergenceError`` naming the method, the step and the scale to lower."""
import math

import pytest
import torch

import diffinfer as di
from diffinfer.guidance import DIVERGENCE_K, GuidanceDivergenceError, RewardGuidance
from diffinfer.inverse import DPS, Linear, two_prior_posterior
from diffinfer.scaling import search
from diffinfer.toys.random_problem import random_problem

F64 = torch.float64
SEEDS = range(20)  # fixed: the suite the defaults are claimed stable on
N = 16


def _bounded(x: torch.Tensor, den) -> bool:
    """Finite, and every row within ``K d sqrt(D)`` (the check's bound at ``t = 0``)."""
    norms = x.reshape(x.shape[0], -1).norm(dim=1)
    return bool(torch.isfinite(x).all()) and float(norms.max()) <= DIVERGENCE_K * den.data_scale * math.sqrt(x[0].numel())


def _setup(seed):
    pr = random_problem(seed)
    den = pr.prior.denoiser(di.VP())
    return pr, den, Linear(pr.A, noise_std=pr.noise_std), pr.y.expand(N, -1)


@pytest.mark.parametrize("seed", SEEDS)
def test_guided_defaults_stay_finite_and_bounded_on_every_suite_seed(seed):
    pr, den, op, y = _setup(seed)
    # DPS at its defaults (the normalised step, scale 1), on a fine and a coarse grid
    for solver, steps in (("ddpm", 100), ("dpmpp-2m", 10)):
        x = di.sample(DPS(den, op, y), shape=(N, pr.dim), solver=solver, steps=steps, seed=0, dtype=F64).x
        assert _bounded(x, den), (solver, steps)
    # the Gaussian form at its defaults (step capped at the normalised one), both grids
    for solver, steps in (("ddpm", 100), ("dpmpp-2m", 10)):
        x = di.sample(DPS(den, op, y, likelihood="gaussian"), shape=(N, pr.dim), solver=solver, steps=steps, seed=0,
                      dtype=F64).x
        assert _bounded(x, den), ("gaussian", solver, steps)
    # universal guidance at its defaults, on a coarse grid
    x = di.sample(RewardGuidance(den, pr.reward), shape=(N, pr.dim), solver="dpmpp-2m", steps=10, seed=0, dtype=F64).x
    assert _bounded(x, den)
    # guided search at its defaults on a reward with large gradients (100x the measurement's)
    res = search.guided_search(den, lambda z: 100.0 * pr.reward(z), 8, (pr.dim,), steps=8, seed=0, dtype=F64)
    assert _bounded(res.x, den)


@pytest.mark.parametrize("seed", SEEDS)
def test_two_prior_posterior_defaults_stay_bounded_on_every_suite_seed(seed):
    pr = random_problem(seed)
    other = random_problem(seed + 1000, dim=pr.dim)
    p = di.VP()
    dx, dh = pr.prior.denoiser(p), other.prior.denoiser(p)
    y = (pr.x_true + other.x_true + 0.1 * torch.randn(pr.dim, dtype=F64, generator=torch.Generator().manual_seed(seed)))
    yb = y.expand(N, -1)
    for solver, steps in (("heun", 40), ("ddpm", 100)):
        for likelihood in ("norm", "gaussian"):
            x, h = two_prior_posterior(dx, dh, yb, 0.1, solver=solver, steps=steps, seed=0, likelihood=likelihood)
            assert _bounded(x, dx) and _bounded(h, dh), (solver, likelihood)


def test_a_huge_scale_raises_the_clear_error():
    pr, den, op, y = _setup(3)
    with pytest.raises(GuidanceDivergenceError,
                       match=r"DPS \(norm likelihood\) diverged at t=.*use a scale below 1e\+04.*solver step \d+ of 10"):
        di.sample(DPS(den, op, y, scale=1e4), shape=(N, pr.dim), solver="dpmpp-2m", steps=10, seed=0, dtype=F64)
    with pytest.raises(GuidanceDivergenceError, match=r"DPS \(gaussian likelihood\) diverged.*use a scale below 1e\+04"):
        di.sample(DPS(den, op, y, scale=1e4, likelihood="gaussian"), shape=(N, pr.dim), solver="ddpm", steps=20,
                  seed=0, dtype=F64)
    with pytest.raises(GuidanceDivergenceError, match=r"RewardGuidance diverged.*use a scale below 1000 "):
        di.sample(RewardGuidance(den, pr.reward, scale=1e3), shape=(N, pr.dim), solver="ddim", steps=10, seed=0,
                  dtype=F64)
    with pytest.raises(GuidanceDivergenceError, match=r"guided_search \(universal guidance\) diverged.*scale below"):
        search.guided_search(den, pr.reward, 8, (pr.dim,), scale=1e3, steps=8, seed=0, dtype=F64)
    with pytest.raises(GuidanceDivergenceError, match=r"two_prior_posterior \(DPS, norm likelihood\) diverged"):
        two_prior_posterior(den, den, pr.x_true.expand(N, -1), 0.1, scale=1e4, seed=0)
    # the error is a FloatingPointError and a ValueError (callers catching either see it)
    assert issubclass(GuidanceDivergenceError, FloatingPointError) and issubclass(GuidanceDivergenceError, ValueError)


def test_the_gaussian_form_on_a_coarse_grid_raises_rather_than_returning_huge_values():
    """The old silent failure: the raw Gaussian DPS (the old default) at scale 1 on 10
    DPM-Solver++ steps at small measurement noise (seed 8, noise_std 0.05) returned values
    around 1e4 with no error; now it raises, and the capped default does not diverge."""
    pr, den, op, y = _setup(8)
    with pytest.raises(GuidanceDivergenceError, match=r"DPS \(gaussian likelihood, unnormalised\) diverged"):
        di.sample(DPS(den, op, y, normalized=False), shape=(N, pr.dim), solver="dpmpp-2m", steps=10, seed=0,
                  dtype=F64)


def test_the_loop_checks_a_guided_model_through_further_wrappers():
    """``iterate`` runs the nearest ``check_divergence`` after each step: a guided model
    wrapped again (here by sample clipping) keeps its check; a plain model has none."""
    from diffinfer.thresholding import ClipSample
    pr, den, op, y = _setup(3)
    guided = DPS(den, op, y)
    assert den.divergence_check is None
    assert guided.divergence_check == guided.check_divergence
    assert ClipSample(guided, 100.0).divergence_check == guided.check_divergence
    assert ClipSample(den, 100.0).divergence_check is None
