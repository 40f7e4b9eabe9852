"""Mutual information and its PID from denoising errors against exact mixture answers.

Oracle: for a Gaussian mixture with labelled components, ``I(x; y) = H(y) - E_x H(y | x)``
with ``p(y | x)`` exact from the component densities (no diffusion). The I-MMSE estimate
must agree within 4 combined standard errors (its own group-based SE and the oracle's).
"""
import math

import pytest
import torch

from diffinfer import VP
from diffinfer.denoiser import ModelOutputError
from diffinfer.pid import information_decomposition, mutual_information
from diffinfer.toys.gaussian_mixture import GaussianMixture
from diffinfer.toys.label_information import (exact_decomposition, exact_mutual_information, label_conditional,
                                              label_denoisers, sample_with_components, two_label_mixture)

F64 = torch.float64
P = VP()
K_SE = 4.0


def _random_mixture(seed):
    g = torch.Generator().manual_seed(seed)
    means = 1.2 * torch.randn(4, 2, generator=g, dtype=F64)
    A = 0.5 * torch.randn(4, 2, 2, generator=g, dtype=F64)
    covs = A @ A.transpose(-1, -2) + 0.2 * torch.eye(2, dtype=F64)
    weights = torch.rand(4, generator=g, dtype=F64) + 0.3
    return GaussianMixture(means, covs, weights)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mutual_information_matches_the_exact_value(seed):
    """Random 2-D mixture, three labels over four components (label 1 has two)."""
    gm = _random_mixture(seed)
    labels = torch.tensor([0, 1, 1, 2])
    exact, exact_se = exact_mutual_information(gm, labels, n=100_000, seed=1000 + seed)
    x, k = sample_with_components(gm, 1200, seed)
    cond = {c: label_conditional(gm, labels, c).denoiser(P) for c in range(3)}
    est = mutual_information(gm.denoiser(P), cond.__getitem__, x, labels[k], n_pairs=16, n_groups=12, seed=seed)
    assert exact > 10 * est.se  # a non-trivial amount of information
    assert abs(est.value - exact) <= K_SE * math.hypot(est.se, exact_se), (est, exact)


def _decompose(name, n=1200, seed=0):
    gm, y1, y2 = two_label_mixture(name)
    x, k = sample_with_components(gm, n, seed)
    d = information_decomposition(*label_denoisers(gm, y1, y2, P), x, y1[k], y2[k], n_pairs=16, n_groups=12, seed=seed)
    return d, exact_decomposition(gm, y1, y2, n=100_000, seed=99)


def _agree(est, exact, se_exact):
    return abs(est.value - exact) <= K_SE * math.hypot(est.se, se_exact)


def test_xor_is_pure_synergy():
    d, ex = _decompose("xor")
    # each bit alone leaves p(x | y_i) = p(x): the conditional denoiser is the unconditional one
    for term in (d.mi1, d.mi2, d.redundancy, d.unique1, d.unique2):
        assert abs(term.value) < 1e-10 and term.se < 1e-10
    assert abs(ex["mi1"]) < 1e-12 and ex["synergy"] > 0.3
    assert d.synergy.value > 10 * d.synergy.se
    assert _agree(d.synergy, ex["synergy"], ex["se_mi12"]), (d.synergy, ex["synergy"])


def test_copied_bit_is_pure_redundancy():
    d, ex = _decompose("copy")
    assert _agree(d.redundancy, ex["mi1"], ex["se_mi1"]) and d.redundancy.value > 10 * d.redundancy.se
    for term in (d.unique1, d.unique2, d.synergy):
        assert abs(term.value) < 1e-10


def test_unique_bit():
    d, ex = _decompose("unique")
    assert abs(d.mi2.value) < 1e-10 and abs(d.redundancy.value) < 1e-10
    assert _agree(d.unique1, ex["unique1"], ex["se_mi1"]) and d.unique1.value > 10 * d.unique1.se
    assert abs(d.synergy.value) < 1e-10 and abs(d.unique2.value) < 1e-10


def test_independent_bits_every_term_matches_the_exact_decomposition():
    """All three informations non-zero: each PID term against the exact one (the oracle's SE
    of a term is bounded by the sum of its parts' SEs)."""
    d, ex = _decompose("independent", seed=3)
    assert min(ex["mi1"], ex["mi2"]) > 0.2
    se_ex = ex["se_mi1"] + ex["se_mi2"] + ex["se_mi12"]
    for name in ("mi1", "mi2", "mi12", "redundancy", "unique1", "unique2", "synergy"):
        assert _agree(getattr(d, name), ex[name], se_ex), (name, getattr(d, name), ex[name])
    # the joint information is additive here: synergy equals the redundancy (MMI convention)
    assert abs(ex["synergy"] - ex["redundancy"]) < 3 * se_ex


def test_bad_input_is_rejected():
    gm, y1, y2 = two_label_mixture("xor")
    x, k = sample_with_components(gm, 40, 0)
    den, d1, d2, d12 = label_denoisers(gm, y1, y2, P)
    with pytest.raises(ValueError, match="labels must be integer"):
        mutual_information(den, d1, x, y1[k].double())
    with pytest.raises(ValueError, match=r"shape \[40\]"):
        mutual_information(den, d1, x, y1[k][:10])
    with pytest.raises(ValueError, match="n_groups"):
        mutual_information(den, d1, x, y1[k], n_groups=1)
    with pytest.raises(ValueError, match="valid: xor, copy, unique, independent"):
        two_label_mixture("and")
    with pytest.raises(ModelOutputError, match="NaN"):
        nan_den = GaussianMixture(torch.zeros(1, 2, dtype=F64)).denoiser(P)
        nan_den = type(nan_den)(lambda x, t: torch.full_like(x, float("nan")), P, prediction="x0")
        mutual_information(den, lambda c: nan_den, x, y1[k], n_pairs=2, n_groups=2)
