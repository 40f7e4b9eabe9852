"""Low-rank learning (Wang et al. 2024, "Diffusion Models Learn Low-Dimensional Distributions via
Subspace Clustering"): the closed-form MoLRG and empirical denoisers against brute force, and
trained models at the two ends of the sample-size range (the paper's low-rank model learns the
subspaces from enough points and cannot from fewer than the rank; a small network memorises a
tiny training set)."""
import math

import pytest
import torch

from diffinfer import VP, sample
from diffinfer.cli import main
from diffinfer.lowrank import (LowRankDenoiser, copy_fraction, denoising_gap, empirical_denoiser, empirical_posterior_mean,
                               fit_lowrank, fit_network, molrg_posterior_mean, off_subspace,
                               subspace_error)
from diffinfer.toys import GaussianMixture, molrg

F64 = torch.float64
PROC = VP()
TS = (0.05, 0.1, 0.2, 0.3)


def problem(dim, rank, k, seed):
    """A noiseless MoLRG and its orthonormal bases [K, D, d]."""
    toy = molrg(dim=dim, rank=rank, n_components=k, noise_var=0.0, seed=seed)
    return toy, torch.linalg.eigh(toy.covs)[1][..., -rank:]


@pytest.mark.parametrize("seed,dim,rank,k", [(0, 8, 2, 3), (1, 12, 3, 2), (2, 5, 1, 4)])
def test_molrg_closed_form_equals_the_full_covariance_mixture_formula(seed, dim, rank, k):
    """The paper's low-rank softmax formula equals GaussianMixture.posterior_mean (Cholesky of
    alpha^2 U U^T + sigma^2 I per component), at scalar and per-row times."""
    toy, U = problem(dim, rank, k, seed)
    g = torch.Generator().manual_seed(seed)
    for t in (0.02, 0.3, 0.8):
        x = PROC.add_noise(toy.sample(64, seed=seed + 1), torch.randn(64, dim, dtype=F64, generator=g), t)
        torch.testing.assert_close(molrg_posterior_mean(x, U, PROC, t), toy.posterior_mean(x, PROC, t),
                                   rtol=1e-9, atol=1e-11)
    t = torch.rand(64, dtype=F64, generator=g) * 0.9 + 0.05
    x = torch.randn(64, dim, dtype=F64, generator=g)
    torch.testing.assert_close(molrg_posterior_mean(x, U, PROC, t), toy.posterior_mean(x, PROC, t),
                               rtol=1e-9, atol=1e-11)


def test_molrg_closed_form_matches_self_normalised_brute_force():
    """E[x0 | x_t] by weighting 200k prior draws with N(x_t; alpha x0, sigma^2 I): within 5
    standard errors per coordinate."""
    toy, U = problem(4, 1, 2, 3)
    x0 = toy.sample(200_000, seed=5)
    for t in (0.2, 0.5):
        c = PROC.at(t)
        a, s = float(c.alpha), float(c.sigma)
        x = PROC.add_noise(toy.sample(3, seed=6), torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(7)), t)
        exact = molrg_posterior_mean(x, U, PROC, t)
        for q in range(3):
            w = torch.softmax(-0.5 * ((x[q] - a * x0) ** 2).sum(1) / s ** 2, 0)
            est = (w[:, None] * x0).sum(0)
            se = torch.sqrt((w[:, None] ** 2 * (x0 - est) ** 2).sum(0))
            assert bool(((est - exact[q]).abs() <= 5 * se + 1e-12).all()), (t, q, est, exact[q], se)


def test_empirical_denoiser_equals_a_mixture_of_point_masses_and_the_two_point_tanh():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(7, 5, dtype=F64, generator=g)
    point_masses = GaussianMixture(pts, torch.zeros(7, 5, 5, dtype=F64))
    for t in (0.05, 0.4, 0.9):
        x = torch.randn(32, 5, dtype=F64, generator=g)
        torch.testing.assert_close(empirical_posterior_mean(x, pts, PROC, t), point_masses.posterior_mean(x, PROC, t),
                                   rtol=1e-9, atol=1e-11)
    # points +-m in 1-D: E[x0 | x] = m tanh(alpha m x / sigma^2)
    m, x = 1.3, torch.linspace(-2, 2, 9, dtype=F64)[:, None]
    for t in (0.1, 0.6):
        c = PROC.at(t)
        ref = m * torch.tanh(c.alpha * m * x / c.sigma ** 2)
        torch.testing.assert_close(empirical_posterior_mean(x, torch.tensor([[m], [-m]], dtype=F64), PROC, t), ref,
                                   rtol=1e-12, atol=1e-12)


def test_the_empirical_denoiser_only_reproduces_training_points():
    """Probability-flow samples of the memorising optimum are copies of training points."""
    toy, _ = problem(6, 2, 2, 1)
    pts = toy.sample(5, seed=2)
    out = sample(empirical_denoiser(pts, PROC), shape=(64, 6), solver="ddim", steps=60, seed=0, dtype=F64).x
    nearest = torch.cdist(out, pts).min(1).values
    assert float(nearest.max()) < 1e-6 * float(pts.norm(dim=1).min())


def test_copy_and_subspace_measures():
    toy, U = problem(6, 2, 2, 1)
    pts = toy.sample(10, seed=2)
    assert copy_fraction(pts, pts, 1e-9) == 1.0 and copy_fraction(pts + 1.0, pts, 1e-3) == 0.0
    assert float(off_subspace(pts, U).max()) < 1e-6  # the sampler takes square roots of round-off eigenvalues (~1e-16)
    off = torch.randn(10, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert float(off_subspace(off, U).min()) > 0.1


def test_the_low_rank_model_with_the_true_bases_is_the_exact_denoiser():
    toy, U = problem(10, 3, 2, 4)
    x = torch.randn(16, 10, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.full((16,), 0.3, dtype=F64)
    rot = torch.linalg.qr(torch.randn(2, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(1)))[0]
    model = LowRankDenoiser(10, 3, 2, PROC, init=U @ rot)  # any basis of the same subspaces
    torch.testing.assert_close(model(x, t), toy.posterior_mean(x, PROC, 0.3), rtol=1e-9, atol=1e-11)
    assert subspace_error(model.bases.detach(), U) < 1e-12


def test_models_side_by_side_equal_the_models_alone():
    """fit_lowrank trains its restarts batched (x [B, E, D], bases [E, K, D, d]): each slice is
    the single model's output."""
    g = torch.Generator().manual_seed(0)
    bases = torch.linalg.qr(torch.randn(3, 2, 7, 2, dtype=F64, generator=g))[0]  # [E, K, D, d]
    x = torch.randn(5, 3, 7, dtype=F64, generator=g)
    t = torch.rand(5, dtype=F64, generator=g) * 0.8 + 0.1
    out = molrg_posterior_mean(x, bases, PROC, t)
    for e in range(3):
        torch.testing.assert_close(out[:, e], molrg_posterior_mean(x[:, e], bases[e], PROC, t), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("seed", [0, 1])
def test_trained_low_rank_model_learns_the_subspaces_from_enough_points(seed):
    """N = 20 points (about 5d per component, d = 2, D = 16): trained with diffinfer.train, the
    learned subspaces match the true ones and the denoiser's RMS gap to the exact one on fresh
    points is under a tenth of the memorising optimum's gap with the same points."""
    toy, U = problem(16, 2, 2, seed)
    pts = toy.sample(20, seed=seed + 1)
    model = fit_lowrank(pts, 2, 2, PROC, steps=400, lr=0.2, seed=seed, t_max=0.15, restarts=2)
    fresh = toy.sample(256, seed=99)
    exact = lambda x, t: molrg_posterior_mean(x, U, PROC, t)  # noqa: E731
    emp = lambda x, t: empirical_posterior_mean(x, pts, PROC, t)  # noqa: E731
    assert subspace_error(model.bases.detach(), U) < 0.05
    assert denoising_gap(model, exact, fresh, PROC, TS) < 0.1 * denoising_gap(emp, exact, fresh, PROC, TS)


def test_trained_low_rank_model_cannot_learn_from_fewer_points_than_the_rank():
    """N = 2 points (at most 1 per rank-2 component): the data span at most one direction of a
    component, so at least one true subspace stays unlearned (projector distance >= sqrt(1/2)
    minus the chance overlap of the unseen direction with it, about d / D)."""
    toy, U = problem(16, 2, 2, 0)
    pts = toy.sample(2, seed=1)
    model = fit_lowrank(pts, 2, 2, PROC, steps=400, lr=0.2, seed=0, t_max=0.15, restarts=2)
    assert subspace_error(model.bases.detach(), U) > math.sqrt(0.5) * (1 - 2 / 16)


def test_a_small_network_memorises_a_tiny_training_set():
    """An MLP trained (diffinfer.train, x0 prediction) on 2 points of a 2-line MoLRG in 4-D is
    within a quarter of the empirical optimum's distance to the exact denoiser from the
    empirical optimum (RMS over fresh points at t = 0.2-0.4; at lower noise fresh points lie
    off the noisy training set, where the network was never trained)."""
    toy, U = problem(4, 1, 2, 2)
    pts = toy.sample(2, seed=3).float()
    den = fit_network(pts, PROC, hidden=32, depth=1, steps=600, lr=1e-2, seed=0)
    net = den.net
    model = lambda x, t: net(x.float(), t).double()  # noqa: E731
    exact = lambda x, t: molrg_posterior_mean(x, U, PROC, t)  # noqa: E731
    emp = lambda x, t: empirical_posterior_mean(x, pts.double(), PROC, t)  # noqa: E731
    fresh = toy.sample(256, seed=9)
    ts = (0.2, 0.3, 0.4)
    assert denoising_gap(model, emp, fresh, PROC, ts) < 0.25 * denoising_gap(emp, exact, fresh, PROC, ts)


def test_bad_inputs_raise_clear_errors():
    _, U = problem(6, 2, 2, 0)
    with pytest.raises(ValueError, match="same D"):
        molrg_posterior_mean(torch.zeros(3, 5, dtype=F64), U, PROC, 0.5)
    with pytest.raises(ValueError, match="sigma"):
        molrg_posterior_mean(torch.zeros(3, 6, dtype=F64), U, PROC, 0.0)
    with pytest.raises(ValueError, match="same D"):
        empirical_posterior_mean(torch.zeros(3, 6, dtype=F64), torch.zeros(4, 5, dtype=F64), PROC, 0.5)
    with pytest.raises(ValueError, match="rank <= dim"):
        LowRankDenoiser(4, 5, 2, PROC)
    with pytest.raises(ValueError, match=r"init must be \[K, D, d\]"):
        LowRankDenoiser(6, 2, 2, PROC, init=torch.zeros(2, 6, 3, dtype=F64))


def test_cli_demo_runs_and_rejects_bad_values(capsys, tmp_path):
    out = tmp_path / "l.png"
    assert main(["structured", "lowrank", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "subspace error" in text and "empirical" in text
    assert out.exists() and out.stat().st_size > 0
    with pytest.raises(SystemExit) as e:
        main(["structured", "lowrank", "--rank", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rank" in err[0]
