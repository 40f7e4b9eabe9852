"""The exact posterior oracle, checked against independent computations (importance
weighting of exact prior samples, closed-form scores)."""
import pytest
import torch

import diffinfer as di
from diffinfer.toys import GaussianMixture, ring2d
from diffinfer.toys.posterior import (NoisyLogLikelihood, linear_gaussian_posterior, mode_weight_error,
                                      moment_errors, product_mixture, sum_matrix, sum_posterior)

F64 = torch.float64


def _weighted_moments(x, logw):
    w = torch.softmax(logw, 0)
    mean = (w[:, None] * x).sum(0)
    d = x - mean
    return mean, (w[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0)


def _skewed_prior():
    means = torch.tensor([[-1.0, 0.5, 0.0], [1.0, -0.5, 0.5], [0.0, 1.5, -1.0]], dtype=F64)
    covs = torch.stack([0.2 * torch.eye(3, dtype=F64),
                        torch.tensor([[0.3, 0.1, 0.0], [0.1, 0.2, 0.05], [0.0, 0.05, 0.1]], dtype=F64),
                        0.1 * torch.eye(3, dtype=F64)])
    return GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2], dtype=F64))


def test_posterior_matches_importance_weighted_prior_samples():
    prior = _skewed_prior()
    A = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, -1.0]], dtype=F64)
    y, s = torch.tensor([0.3, 0.4], dtype=F64), 0.3
    post = linear_gaussian_posterior(prior, A, y, s)
    x = prior.sample(400_000, seed=0)
    logw = -0.5 * ((y - x @ A.T) ** 2).sum(1) / s ** 2
    mean, cov = _weighted_moments(x, logw)
    torch.testing.assert_close(post.mean(), mean, atol=0.01, rtol=0)
    torch.testing.assert_close(post.covariance(), cov, atol=0.01, rtol=0)


def test_noisy_log_likelihood_gradient_is_score_difference():
    """grad log p(y | x_t) = grad log p_t(x | y) - grad log p_t(x) at several t."""
    prior, p = _skewed_prior(), di.VP()
    A = torch.tensor([[1.0, 0.0, 1.0]], dtype=F64)
    post = linear_gaussian_posterior(prior, A, torch.tensor([0.5], dtype=F64), 0.2)
    ll = NoisyLogLikelihood(prior, post, p)
    x = torch.randn(16, 3, dtype=F64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    for t in (0.05, 0.3, 0.8):
        (g,) = torch.autograd.grad(ll(x, t).sum(), x)
        torch.testing.assert_close(g, post.score(x.detach(), p, t) - prior.score(x.detach(), p, t))
    tb = torch.tensor([0.05, 0.3] * 8, dtype=F64)
    per_row = ll(x.detach(), tb)
    for i in (0, 1, 7):
        torch.testing.assert_close(per_row[2 * i:2 * i + 2], torch.stack([ll(x.detach()[2 * i:2 * i + 1], 0.05)[0],
                                                                          ll(x.detach()[2 * i + 1:2 * i + 2], 0.3)[0]]))


def test_noisy_log_likelihood_matches_monte_carlo():
    """p(y | x_t) = E_{x0 ~ p(x0 | x_t)} N(y; A x0, s^2) (up to the constant p(y))."""
    prior, p, t = ring2d(n_modes=4, std=0.2), di.VP(), 0.4
    A, y, s = torch.tensor([[1.0, 1.0]], dtype=F64), torch.tensor([0.8], dtype=F64), 0.3
    post = linear_gaussian_posterior(prior, A, y, s)
    ll = NoisyLogLikelihood(prior, post, p)
    # sample (x0, x_t) jointly, and check E[ N(y; A x0, s^2) | x_t in a small box ] ratios by reweighting
    x0 = prior.sample(400_000, seed=2)
    xt = p.add_noise(x0, torch.randn(x0.shape, dtype=F64, generator=torch.Generator().manual_seed(3)), t)
    lik = torch.exp(-0.5 * ((y - x0 @ A.T) ** 2).sum(1) / s ** 2)
    centres = torch.tensor([[0.5, 0.5], [-0.5, 0.2], [0.0, -0.6]], dtype=F64)
    mc = torch.stack([lik[(xt - c).norm(dim=1) < 0.05].mean() for c in centres])
    exact = torch.exp(ll(centres, t))
    ratio = (mc / exact) / (mc / exact).mean()  # the unknown p(y) cancels
    torch.testing.assert_close(ratio, torch.ones(3, dtype=F64), atol=0.06, rtol=0)


def test_sum_posterior_matches_importance_weighting():
    px = ring2d(n_modes=3, radius=1.0, std=0.2)
    ph = GaussianMixture(torch.tensor([[0.0, 0.0], [0.5, -0.5]], dtype=F64),
                         torch.stack([0.05 * torch.eye(2, dtype=F64), 0.1 * torch.eye(2, dtype=F64)]))
    y, s = torch.tensor([1.2, -0.3], dtype=F64), 0.2
    post = sum_posterior(px, ph, y, s)
    joint = product_mixture(px, ph)
    assert joint.n_components == 6 and joint.dim == 4
    z = joint.sample(400_000, seed=4)
    torch.testing.assert_close(z[:, :2].mean(0), px.mean(), atol=0.01, rtol=0)
    torch.testing.assert_close(z[:, 2:].mean(0), ph.mean(), atol=0.01, rtol=0)
    logw = -0.5 * ((y - z @ sum_matrix(2).T) ** 2).sum(1) / s ** 2
    mean, cov = _weighted_moments(z, logw)
    torch.testing.assert_close(post.mean(), mean, atol=0.01, rtol=0)
    torch.testing.assert_close(post.covariance(), cov, atol=0.01, rtol=0)


def test_mode_weight_error_and_moments_separate_right_from_wrong():
    prior = _skewed_prior()
    post = linear_gaussian_posterior(prior, torch.tensor([[1.0, 0.0, 0.0]], dtype=F64),
                                     torch.tensor([0.9], dtype=F64), 0.3)
    good, bad = post.sample(20_000, seed=5), prior.sample(20_000, seed=6)
    assert mode_weight_error(good, post) < 0.02 < mode_weight_error(bad, post)
    assert moment_errors(good, post)[0] < 0.02 < moment_errors(bad, post)[0]


def test_unequal_prior_dimensions_raise():
    with pytest.raises(ValueError, match="one dimension"):
        sum_posterior(ring2d(), _skewed_prior(), torch.zeros(2, dtype=F64), 0.1)
