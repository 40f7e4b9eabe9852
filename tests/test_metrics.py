"""Metrics checked against closed forms and independent implementations."""
import math

import numpy as np
import pytest
import torch

from diffinfer import metrics
from diffinfer.toys import ring2d

F64 = torch.float64


def test_sliced_wasserstein_of_a_shift_is_the_mean_projected_shift():
    x = torch.randn(4000, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    shift = torch.tensor([0.5, 0.0, 0.0], dtype=F64)
    # W2 between a set and its translate along each direction = |<shift, dir>|
    g = torch.Generator().manual_seed(7)
    dirs = torch.randn(3, 512, dtype=F64, generator=g)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    expected = float(((shift @ dirs) ** 2).mean().sqrt())
    assert abs(metrics.sliced_wasserstein(x, x + shift, n_projections=512, seed=7) - expected) < 1e-9
    assert metrics.sliced_wasserstein(x, x) == 0.0


def test_mmd_separates_and_matches_a_direct_sum():
    gm = ring2d()
    a, b = gm.sample(300, seed=1), gm.sample(300, seed=2)
    c = a + 0.5
    assert abs(metrics.mmd_rbf(a, b)) < 0.01 < metrics.mmd_rbf(a, c)
    x, y, h = a[:20], c[:15], 0.7
    k = lambda u, v: math.exp(-float(((u - v) ** 2).sum()) / (2 * h * h))  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(20) for j in range(20) if i != j) / (20 * 19)
    yy = sum(k(y[i], y[j]) for i in range(15) for j in range(15) if i != j) / (15 * 14)
    xy = sum(k(x[i], y[j]) for i in range(20) for j in range(15)) / (20 * 15)
    assert abs(metrics.mmd_rbf(x, y, bandwidth=h) - (xx + yy - 2 * xy)) < 1e-12


def test_frechet_distance_matches_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 6)), rng.normal(size=(300, 6)) * 1.3 + 0.2
    ca, cb = np.cov(a.T), np.cov(b.T)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * scipy_linalg.sqrtm(ca @ cb).real)
    assert abs(metrics.frechet_distance(torch.tensor(a), torch.tensor(b)) - ref) < 1e-8


def test_precision_recall_knn():
    gm = ring2d()
    real, same = gm.sample(500, seed=1), gm.sample(500, seed=2)
    p, r = metrics.precision_recall_knn(real, same)
    assert p > 0.9 and r > 0.9
    collapsed = real[:1].repeat(500, 1) + 0.001 * torch.randn(500, 2, dtype=F64)  # one mode only
    p, r = metrics.precision_recall_knn(real, collapsed)
    assert p > 0.9 and r < 0.2


def test_discrete_measures():
    assert abs(metrics.unigram_entropy("abab") - math.log(2)) < 1e-12
    assert metrics.unigram_entropy(torch.zeros(10, dtype=torch.long)) == 0.0
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])
    assert abs(metrics.kl_divergence(p, q) - (0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1))) < 1e-6
    assert metrics.kl_divergence(q, torch.tensor([1.0, 0.0])) == math.inf
    assert abs(metrics.total_variation(p, q) - 0.4) < 1e-6


def test_mean_log_density_and_bad_input():
    gm = ring2d()
    assert metrics.mean_log_density(gm, gm.sample(5000, seed=0)) > metrics.mean_log_density(gm, 1.3 * gm.sample(5000, seed=0))
    with pytest.raises(ValueError, match="feature sizes"):
        metrics.sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 4))
