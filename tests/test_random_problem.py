"""The random oracle suite: draws are functions of the seed, within the documented ranges,
with exact targets; floors bound what exact sampling shows."""
import math

import torch

from diffinfer.toys.random_problem import MIN_MASS, component_masses, floors, random_problem, score
from diffinfer.toys.posterior import linear_gaussian_posterior

SEEDS = range(20)


def test_draws_are_functions_of_the_seed_and_in_range():
    for seed in SEEDS:
        for kind in ("measurement", "tilt"):
            p, q = random_problem(seed, kind), random_problem(seed, kind)
            assert torch.equal(p.A, q.A) and torch.equal(p.y, q.y) and torch.equal(p.prior.means, q.prior.means)
            assert 2 <= p.dim <= 8 and 2 <= p.prior.n_components <= 6
            assert 1 <= p.A.shape[0] < p.dim and 0.05 <= p.noise_std <= 1.0
            w = p.prior.weights
            assert float(w.min()) >= 0.02 - 1e-9 and float(w.max()) <= 0.9 + 1e-9
            assert math.isclose(float(p.target.weights.sum()), 1.0, rel_tol=1e-12)
    assert len({tuple(random_problem(s).prior.means.flatten()[:2].tolist()) for s in SEEDS}) == len(SEEDS)


def test_most_targets_keep_two_components():
    kept = sum(int((random_problem(s).target.weights >= MIN_MASS).sum()) >= 2 for s in SEEDS)
    assert kept >= 18


def test_measurement_target_is_the_bayes_posterior():
    """Self-normalised importance sampling of the prior with the likelihood weights recovers
    the target's mean (an independent route to the same posterior)."""
    p = random_problem(3)
    x = p.prior.sample(200_000, seed=5)
    logw = p.reward(x)
    w = torch.softmax(logw, 0)
    mean_is = (w.unsqueeze(1) * x).sum(0)
    ess = 1.0 / float((w * w).sum())
    assert ess > 500
    torch.testing.assert_close(mean_is, p.target.mean(), rtol=0, atol=6 / math.sqrt(ess))
    torch.testing.assert_close(p.target.means, linear_gaussian_posterior(p.prior, p.A, p.y, p.noise_std).means)


def test_component_masses_are_unbiased_and_floors_bound_exact_sets():
    p = random_problem(1)
    masses = component_masses(p.target, p.target.sample(40_000, seed=2))
    torch.testing.assert_close(masses, p.target.weights, rtol=0, atol=0.01)
    f = floors(p.target, 500, repeats=6)
    within = [all(v <= 2 * f[k] for k, v in score(p.target.sample(500, seed=100 + r), p.target, seed=r).items())
              for r in range(6)]
    assert sum(within) >= 5  # a fresh exact set is within 2 floors (nearly) always
    bad = p.target.sample(500, seed=7) + 0.5  # a shifted set is far outside
    assert score(bad, p.target)["mean"] > 5 * f["mean"]
