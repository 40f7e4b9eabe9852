"""The exact oracle: closed forms checked against independent computations."""
import math

import pytest
import torch

import diffinfer as di
from diffinfer.toys import GaussianMixture, molrg, ring2d

F64 = torch.float64


def test_log_prob_matches_torch_distributions():
    gm = GaussianMixture(torch.tensor([[0.0, 1.0], [2.0, -1.0]]),
                         torch.tensor([[[1.0, 0.3], [0.3, 0.5]], [[0.2, 0.0], [0.0, 2.0]]]),
                         torch.tensor([0.3, 0.7]))
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=gm.weights),
        torch.distributions.MultivariateNormal(gm.means, gm.covs))
    x = torch.randn(50, 2, dtype=F64)
    torch.testing.assert_close(gm.log_prob(x), ref.log_prob(x))


def test_marginal_is_law_of_noised_samples():
    """Moments of a*x0 + s*eps from exact samples match the closed-form marginal."""
    gm, p, t = ring2d(), di.VP(), 0.35
    x0 = gm.sample(200_000, seed=1)
    xt = p.add_noise(x0, torch.randn(x0.shape, dtype=F64, generator=torch.Generator().manual_seed(2)), t)
    m = gm.marginal(p, t)
    torch.testing.assert_close(xt.mean(0), m.mean(), atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(xt.T), m.covariance(), atol=0.01, rtol=0)


def test_denoiser_is_tweedie_and_minimises_mse():
    gm, p, t = ring2d(), di.VP(), torch.tensor(0.3, dtype=F64)
    x0 = gm.sample(20_000, seed=3)
    eps = torch.randn(x0.shape, dtype=F64, generator=torch.Generator().manual_seed(4))
    xt = p.add_noise(x0, eps, t)
    den = gm.denoiser(p)
    a, s = p.alpha(t), p.sigma(t)
    torch.testing.assert_close(den(xt, t), (xt + s * s * gm.score(xt, p, t)) / a, rtol=1e-9, atol=1e-9)
    mse = (den(xt, t) - x0).pow(2).sum(1).mean()
    shrunk = (0.9 * den(xt, t) - x0).pow(2).sum(1).mean()
    assert mse < shrunk  # the posterior mean beats a perturbed estimator


def test_per_sample_times_match_scalar_times():
    gm, p = molrg(dim=8, rank=2, n_components=3), di.VP("cosine")
    x = torch.randn(6, 8, dtype=F64)
    t = torch.tensor([0.1, 0.5, 0.1, 0.9, 0.5, 0.3], dtype=F64)
    per = gm.posterior_mean(x, p, t)
    for i in range(6):
        torch.testing.assert_close(per[i], gm.posterior_mean(x[i:i + 1], p, t[i])[0])


def test_low_rank_samples_lie_on_subspaces_and_denoise_onto_them():
    gm = molrg(dim=16, rank=2, n_components=3, noise_var=0.0)
    x0 = gm.sample(100, seed=0)
    ranks = [torch.linalg.matrix_rank(c).item() for c in gm.covs]
    assert ranks == [2, 2, 2]
    with pytest.raises(ValueError, match="singular"):
        gm.log_prob(x0)
    p = di.VP()
    out = gm.denoiser(p)(p.add_noise(x0, torch.randn_like(x0), 0.01), 0.01)
    # the exact denoiser at low noise lands on the union of the subspaces
    resid = torch.stack([(out - out @ c) .norm(dim=1) for c in gm.covs]).min(0).values
    assert float(resid.max()) < 1e-2 * float(out.norm(dim=1).max())


def test_sample_is_seeded_and_has_the_right_moments():
    gm = ring2d()
    torch.testing.assert_close(gm.sample(10, seed=5), gm.sample(10, seed=5))
    x = gm.sample(100_000, seed=6)
    torch.testing.assert_close(x.mean(0), gm.mean(), atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), gm.covariance(), atol=0.01, rtol=0)
    assert abs(float(gm.covariance()[0, 0]) - (0.5 + 0.01)) < 1e-12  # radius^2/2 + std^2


def test_denoiser_accepts_float32_images():
    gm = molrg(dim=16, rank=2, n_components=2)
    den = gm.denoiser(di.VP())
    x = torch.randn(3, 1, 4, 4)
    out = den(x, 0.5)
    assert out.shape == x.shape and out.dtype == torch.float32


def test_bad_mixtures():
    with pytest.raises(ValueError, match=r"\[K, D\]"):
        GaussianMixture(torch.zeros(3))
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixture(torch.zeros(1, 2), torch.tensor([[[1.0, 0.5], [0.0, 1.0]]]))
    with pytest.raises(ValueError, match="semi-definite"):
        GaussianMixture(torch.zeros(1, 2), -torch.eye(2)[None])
    with pytest.raises(ValueError, match="features"):
        ring2d().log_prob(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="valid: molrg, ring2d"):
        from diffinfer.toys import preset
        preset("moons")
    assert math.isfinite(float(molrg().log_prob(molrg().sample(4)).sum()))
