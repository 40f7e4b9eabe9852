"""The closed-form tilted target: exact density identity and an importance-sampling check."""
import pytest
import torch

from diffinfer.toys.gaussian_mixture import GaussianMixture, molrg
from diffinfer.toys.tilted import LinearGaussianReward, mode_fractions, tilt, tilted_example

F64 = torch.float64


@pytest.mark.parametrize("lam", [0.3, 1.0, 4.0])
def test_log_density_is_prior_plus_lam_reward_up_to_a_constant(lam):
    prior, reward, _ = tilted_example()
    target = tilt(prior, reward, lam)
    x = torch.randn(200, 2, dtype=F64, generator=torch.Generator().manual_seed(0)) * 2
    gap = target.log_prob(x) - prior.log_prob(x) - lam * reward(x)
    assert float(gap.std()) < 1e-9  # exact: the same normaliser everywhere


def test_low_rank_prior_and_multidimensional_measurement():
    prior = molrg(dim=6, rank=2, n_components=3, noise_var=1e-2, seed=1)
    g = torch.Generator().manual_seed(2)
    reward = LinearGaussianReward(torch.randn(3, 6, dtype=F64, generator=g), torch.randn(3, dtype=F64, generator=g), 0.7)
    target = tilt(prior, reward, 2.0)
    x = torch.randn(100, 6, dtype=F64, generator=g)
    gap = target.log_prob(x) - prior.log_prob(x) - 2.0 * reward(x)
    assert float(gap.std()) < 1e-8


def test_matches_importance_weighted_prior_samples():
    prior, reward, target = tilted_example(1.0)
    x = prior.sample(400_000, seed=3)
    w = torch.softmax(reward(x), 0)
    mean = (w[:, None] * x).sum(0)
    cov = (w[:, None, None] * (x - mean)[:, :, None] * (x - mean)[:, None, :]).sum(0)
    assert torch.allclose(mean, target.mean(), atol=0.01)
    assert torch.allclose(cov, target.covariance(), atol=0.01)
    frac = (w[:, None] * torch.nn.functional.one_hot(_nearest(prior, x), 3)).sum(0)
    assert torch.allclose(frac, target.weights, atol=0.01)


def _nearest(mix: GaussianMixture, x):
    logpdf, _ = mix._component_logpdf(x, mix.means, mix.covs)
    return torch.argmax(logpdf + torch.log(mix.weights), 1)


def test_zero_tilt_is_the_prior_and_mode_fractions_of_exact_samples():
    prior, reward, _ = tilted_example()
    same = tilt(prior, reward, 0.0)
    assert torch.equal(same.means, prior.means) and torch.equal(same.weights, prior.weights)
    frac = mode_fractions(prior, prior.sample(20000, seed=0))
    assert torch.allclose(frac, prior.weights, atol=0.015)


def test_bad_inputs():
    with pytest.raises(ValueError, match="noise_std"):
        LinearGaussianReward([[1.0, 0.0]], [0.0], 0.0)
    with pytest.raises(ValueError, match="rows of A"):
        LinearGaussianReward([[1.0, 0.0]], [0.0, 1.0])
    prior, reward, _ = tilted_example()
    with pytest.raises(ValueError, match="lam"):
        tilt(prior, reward, -1.0)
    with pytest.raises(ValueError, match="features"):
        reward(torch.zeros(3, 5))
