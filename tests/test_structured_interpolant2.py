"""Two-sided stochastic interpolants with a non-Gaussian base (Albergo, Boffi & Vanden-Eijnden
2023): the exact Gaussian-mixture drift and score against brute force, against the library's
one-sided Gaussian path, and transport of rho0 samples to rho1 within the two-exact-sets floor."""
import math

import pytest
import torch

from diffinfer import RectifiedFlow
from diffinfer.cli import main
from diffinfer.stochastic_interpolant import (MixtureInterpolant, TwoSidedInterpolant, fit_drift, interpolant_loss,
                                              transport)
from diffinfer.toys import GaussianMixture
from diffinfer.toys.random_problem import floors, random_problem, score
from diffinfer.toys.reference import pf_ode_solution

F64 = torch.float64
METRICS = ("sw", "mass", "mean", "cov")


def pair(seed: int, dim: int = 3) -> tuple[GaussianMixture, GaussianMixture]:
    """A seeded pair of random Gaussian mixtures (2-6 anisotropic components each)."""
    return random_problem(seed, dim=dim).prior, random_problem(seed + 100, dim=dim).prior


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_drift_and_score_match_self_normalised_brute_force(seed):
    """b(t, x) = E[dI/dt + gamma' z | x_t = x] and s = -E[z | x_t = x] / gamma, estimated by
    weighting M independent draws (x0, x1) with p(x | x0, x1) = N(alpha x0 + beta x1, gamma^2 I),
    agree with the closed form within 5 standard errors of the estimate."""
    rho0, rho1 = pair(seed, dim=2)
    it = TwoSidedInterpolant("linear" if seed % 2 == 0 else "trig", a=1.0 + seed)
    oracle = MixtureInterpolant(rho0, rho1, it)
    M = 200_000
    x0, x1 = rho0.sample(M, seed=seed + 1), rho1.sample(M, seed=seed + 2)
    for t in (0.25, 0.5, 0.8):
        c = it.coefficients(t)
        g = float(c["gamma2"].sqrt())
        mean = c["alpha"] * x0 + c["beta"] * x1  # [M, 2]
        x = oracle.marginal(t).sample(4, seed=seed + 3)  # query points [4, 2]
        b, s = oracle.velocity(x, t), oracle.score(x, t)
        for q in range(x.shape[0]):
            logw = -0.5 * ((x[q] - mean) ** 2).sum(1) / g ** 2
            w = torch.softmax(logw, 0)  # [M]
            z = (x[q] - mean) / g
            target_b = c["d_alpha"] * x0 + c["d_beta"] * x1 + 0.5 * c["d_gamma2"] / g * z
            for f, exact in ((target_b, b[q]), (-z / g, s[q])):
                est = (w[:, None] * f).sum(0)
                se = torch.sqrt((w[:, None] ** 2 * (f - est) ** 2).sum(0))
                assert bool(((est - exact).abs() <= 5 * se + 1e-12).all()), (t, q, est, exact, se)


def test_gaussian_base_without_latent_is_the_rectified_flow_of_the_target():
    """rho0 = N(0, I) and gamma = 0: x_t = (1 - t) x0 + t x1 is rectified flow's x_s at s = 1 - t,
    so b(t, x) = -velocity_RF(x, 1 - t) of the library's exact mixture denoiser."""
    rho1 = pair(3, dim=4)[1]
    base = GaussianMixture(torch.zeros(1, 4, dtype=F64), torch.eye(4, dtype=F64)[None])
    oracle = MixtureInterpolant(base, rho1, TwoSidedInterpolant(a=0.0))
    den = rho1.denoiser(RectifiedFlow())
    x = torch.randn(64, 4, dtype=F64, generator=torch.Generator().manual_seed(0)) * 2
    for t in (0.1, 0.5, 0.9):
        ref = -den.velocity(x, torch.tensor(1.0 - t, dtype=F64))
        torch.testing.assert_close(oracle.velocity(x, t), ref, rtol=1e-9, atol=1e-10)


def test_the_ends_are_rho0_and_rho1_and_per_row_times_agree():
    rho0, rho1 = pair(4)
    oracle = MixtureInterpolant(rho0, rho1, TwoSidedInterpolant(a=2.0))
    x = torch.randn(50, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(oracle.marginal(0.0).log_prob(x), rho0.log_prob(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(oracle.marginal(1.0).log_prob(x), rho1.log_prob(x), rtol=1e-10, atol=1e-10)
    t = torch.tensor([0.2, 0.7] * 25, dtype=F64)
    rows = torch.cat([oracle.velocity(x[i:i + 1], float(t[i])) for i in range(50)])
    torch.testing.assert_close(oracle.velocity(x, t), rows, rtol=1e-12, atol=1e-12)


def _within_floor(samples, target, n, k=2.0):
    got, floor = score(samples, target, seed=7), floors(target, n)
    return {m: (got[m], floor[m]) for m in METRICS if not got[m] <= k * floor[m]}


@pytest.mark.parametrize("seed,path,a", [(0, "linear", 1.0), (1, "trig", 0.5), (2, "linear", 0.0),
                                         (4, "linear", 1.0)])
def test_probability_flow_ode_carries_rho0_to_rho1_within_the_floor(seed, path, a):
    """2000 samples of rho0 through Heun (100 steps) on the exact drift: sliced Wasserstein,
    component masses, mean and covariance to rho1 within 2x the largest of 8 pairs of exact sets."""
    rho0, rho1 = pair(seed)
    oracle = MixtureInterpolant(rho0, rho1, TwoSidedInterpolant(path, a=a))
    n = 2000
    out = transport(oracle, rho0.sample(n, seed=seed + 11), steps=100)
    assert not _within_floor(out, rho1, n)


@pytest.mark.parametrize("seed,path,a", [(3, "trig", 2.0), (5, "linear", 1.0)])
def test_reference_ode_and_backward_transport(seed, path, a):
    """SciPy's DOP853 on the same drift (an independent adaptive integrator: with a = 2 and a
    narrow target the flow is stiff near t = 1 and 100 Heun steps are not enough) lands within
    the floor, and the ODE run backwards from rho1 samples lands on rho0."""
    rho0, rho1 = pair(seed)
    oracle = MixtureInterpolant(rho0, rho1, TwoSidedInterpolant(path, a=a))
    n = 2000
    fwd = pf_ode_solution(oracle, rho0.sample(n, seed=1), 0.0, 1.0, rtol=1e-8, atol=1e-8)
    assert not _within_floor(fwd, rho1, n)
    back = pf_ode_solution(oracle, rho1.sample(n, seed=2), 1.0, 0.0, rtol=1e-8, atol=1e-8)
    assert not _within_floor(back, rho0, n)


@pytest.mark.parametrize("seed,eps", [(0, 0.5), (6, 1.0), (7, 0.25)])
def test_sde_carries_rho0_to_rho1_within_the_floor(seed, eps):
    """dX = [b + eps s] dt + sqrt(2 eps) dW by Euler-Maruyama (200 steps, per-sample noise)."""
    rho0, rho1 = pair(seed)
    oracle = MixtureInterpolant(rho0, rho1, TwoSidedInterpolant(a=1.0))
    n = 1000
    out = transport(oracle, rho0.sample(n, seed=seed + 21), steps=200, eps=eps, seed=seed)
    assert not _within_floor(out, rho1, n)


def test_sde_without_the_score_correction_misses_the_target():
    """The eps s term is needed: the same SDE with the score left out (a plausible bug) is far
    outside the floor, so the floor test above can fail."""
    rho0, rho1 = pair(0)
    oracle = MixtureInterpolant(rho0, rho1, TwoSidedInterpolant(a=1.0))
    n = 1000
    out = transport(oracle.velocity, rho0.sample(n, seed=21), steps=200, eps=1.0, score=lambda x, t: torch.zeros_like(x))
    assert _within_floor(out, rho1, n)


def test_heun_converges_at_order_two_against_dop853():
    rho0, rho1 = pair(8)
    oracle = MixtureInterpolant(rho0, rho1, TwoSidedInterpolant(a=1.0))
    x = rho0.sample(32, seed=3)
    ref = pf_ode_solution(oracle, x, 0.0, 1.0, rtol=1e-12, atol=1e-12)
    errs = [float((transport(oracle, x, steps=n) - ref).norm()) for n in (40, 80, 160)]
    slopes = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(1.7 < s < 2.4 for s in slopes), (errs, slopes)


def test_the_exact_drift_minimises_the_interpolant_loss():
    """loss(b + h) - loss(b) = mean(h^2) for a shift h(x_t) = 0.2 x_t + c, up to the Monte Carlo
    error of the cross term 2 h . (b - target), which has mean zero for every function h of x_t
    only if b is the conditional mean of the target dI/dt + gamma' z given x_t."""
    rho0, rho1 = pair(9)
    it = TwoSidedInterpolant(a=1.0)
    oracle = MixtureInterpolant(rho0, rho1, it)
    n = 20_000
    g = torch.Generator().manual_seed(0)
    x0, x1 = rho0.sample(n, seed=1), rho1.sample(n, seed=2)
    # t on one side of 1/2: gamma gamma' = a (1 - 2t) / 2 is antisymmetric about it, so a
    # symmetric range would hide a missing gamma' z term from a shift linear in x_t
    t = 0.05 + 0.4 * torch.rand(n, dtype=F64, generator=g)
    z = torch.randn(n, 3, dtype=F64, generator=g)
    c = torch.tensor([0.3, -0.2, 0.1], dtype=F64)
    shift = lambda x: 0.2 * x + c  # noqa: E731
    base = interpolant_loss(oracle.velocity, it, x0, x1, t=t, z=z)
    shifted = interpolant_loss(lambda x, tt: oracle.velocity(x, tt) + shift(x), it, x0, x1, t=t, z=z)
    xt = it.sample_xt(x0, x1, z, t)
    h = shift(xt)
    cross = 2 * ((oracle.velocity(xt, t) - it.target_velocity(x0, x1, z, t)) * h).mean(1)  # [n]
    se = float(cross.std() / math.sqrt(n))
    assert abs(float(shifted - base) - float(h.pow(2).mean())) <= 5 * se


def test_fit_drift_trains_a_network_toward_the_exact_drift():
    """A few hundred steps of diffinfer.train on the drift objective bring a small MLP's RMS
    distance to the exact drift (on x_t samples) well under that of the zero field."""
    from diffinfer.nets.mlp import MLPDenoiser
    rho0, rho1 = pair(10, dim=2)
    it = TwoSidedInterpolant(a=1.0)
    oracle = MixtureInterpolant(rho0, rho1, it)
    torch.manual_seed(0)
    drift, result = fit_drift(MLPDenoiser(2, hidden=32, depth=1), it, rho0.sample(4000, seed=1),
                              rho1.sample(4000, seed=2), steps=300, batch=256, lr=3e-3, ema_decay=0.9)
    assert result.step == 300
    gaps, zero = [], []
    for t in (0.2, 0.5, 0.8):
        x = oracle.marginal(t).sample(500, seed=3)
        b = oracle.velocity(x, t)
        gaps.append(float((drift(x, t) - b).pow(2).mean()))
        zero.append(float(b.pow(2).mean()))
    assert sum(gaps) < 0.25 * sum(zero), (gaps, zero)


def test_bad_inputs_raise_clear_errors():
    rho0, rho1 = pair(0)
    with pytest.raises(ValueError, match="unknown interpolant path 'cubic'; valid: linear, trig"):
        TwoSidedInterpolant("cubic")
    with pytest.raises(ValueError, match="a must be"):
        TwoSidedInterpolant(a=-1.0)
    with pytest.raises(ValueError, match="rho0 has 3 dimensions, rho1 has 2"):
        MixtureInterpolant(rho0, pair(0, dim=2)[1])
    oracle = MixtureInterpolant(rho0, rho1)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        oracle.velocity(torch.zeros(2, 3, dtype=F64), 1.5)
    with pytest.raises(ValueError, match="points have 2 features"):
        oracle.velocity(torch.zeros(2, 2, dtype=F64), 0.5)
    with pytest.raises(FloatingPointError, match="NaN or Inf at t=0"):
        transport(lambda x, t: x * math.nan, torch.zeros(2, 3, dtype=F64), steps=4)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        transport(oracle, torch.zeros(2, 3, dtype=F64), steps=0)
    with pytest.raises(ValueError, match="infinite at t = 0"):
        TwoSidedInterpolant(a=1.0).target_velocity(*(torch.zeros(2, 3, dtype=F64),) * 3, 0.0)


def test_cli_demo_runs_and_rejects_bad_values(capsys, tmp_path):
    out = tmp_path / "i.png"
    assert main(["structured", "interpolant2", "--n", "400", "--steps", "40", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ODE" in text and "SDE" in text and "floor" in text
    assert out.exists() and out.stat().st_size > 0
    with pytest.raises(SystemExit) as e:
        main(["structured", "interpolant2", "--eps", "-1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--eps" in err[0]
