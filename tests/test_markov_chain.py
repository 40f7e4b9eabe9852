"""MarkovChain oracle against brute-force enumeration and sampling statistics."""
import itertools
import math

import pytest
import torch
from scipy import stats

from diffinfer.toys.markov_chain import MarkovChain

torch.set_num_threads(1)


def _all_sequences(V, L):
    return torch.tensor(list(itertools.product(range(V), repeat=L)))


def _chain():
    return MarkovChain([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.5, 0.1, 0.4]], initial=[0.2, 0.5, 0.3])


def test_log_prob_sums_to_one_and_entropy_matches_enumeration():
    c = _chain()
    seqs = _all_sequences(3, 5)
    lp = c.log_prob(seqs)
    assert math.isclose(float(lp.exp().sum()), 1.0, abs_tol=1e-12)
    entropy = float(-(lp.exp() * lp).sum())
    assert math.isclose(entropy / 5, c.expected_nll_per_token(5), rel_tol=1e-12)


@pytest.mark.parametrize("pattern", ["m0mm2", "mmmmm", "1mmm0", "m2m1m", "22222"])
def test_conditionals_equal_brute_force(pattern):
    c = _chain()
    tokens = torch.tensor([[c.mask_id if ch == "m" else int(ch) for ch in pattern]])
    seqs = _all_sequences(3, 5)
    keep = torch.ones(len(seqs), dtype=torch.bool)
    for i, ch in enumerate(pattern):
        if ch != "m":
            keep &= seqs[:, i] == int(ch)
    w = c.log_prob(seqs[keep]).exp()
    expect = torch.stack([torch.bincount(seqs[keep][:, i], weights=w, minlength=3) for i in range(5)])
    expect = expect / expect.sum(-1, keepdim=True)
    torch.testing.assert_close(c.conditionals(tokens)[0], expect, rtol=1e-12, atol=1e-12)
    logits = c.logits(tokens)
    assert logits.shape == (1, 5, 4) and torch.isinf(logits[..., c.mask_id]).all()


def test_stationary_and_entropy_rate():
    c = _chain()
    pi = c.stationary()
    torch.testing.assert_close(pi @ c.transition, pi)
    stationary = MarkovChain(c.transition)
    # started from pi, every token has the same conditional entropy except the first
    L = 50
    h_pi = -float((pi * pi.log()).sum())
    expect = (h_pi + (L - 1) * stationary.entropy_rate()) / L
    assert math.isclose(stationary.expected_nll_per_token(L), expect, rel_tol=1e-10)


def test_exact_sampling_matches_bigram_law():
    c = _chain()
    x = c.sample(4000, 8, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount((x[:, :-1] * 3 + x[:, 1:]).flatten(), minlength=9).double()
    expect = c.bigram_distribution(8).flatten() * counts.sum()
    # bigrams within a sequence are dependent, so test only the first pair (independent rows)
    first = torch.bincount(x[:, 0] * 3 + x[:, 1], minlength=9).double()
    exp_first = (c.initial[:, None] * c.transition).flatten() * len(x)
    assert stats.chisquare(first, exp_first).pvalue > 1e-3
    assert (counts / counts.sum() - expect / expect.sum()).abs().sum() < 0.05


def test_bad_input():
    with pytest.raises(ValueError, match="sum to 1"):
        MarkovChain([[0.5, 0.4], [0.5, 0.5]])
    with pytest.raises(ValueError, match="finite"):
        MarkovChain([[float("nan"), 1.0], [0.5, 0.5]])
    c = _chain()
    with pytest.raises(ValueError, match="lie in"):
        c.logits(torch.tensor([[0, 7]]))
    with pytest.raises(ValueError, match="probability zero"):
        MarkovChain([[1.0, 0.0], [0.0, 1.0]], initial=[0.5, 0.5]).conditionals(torch.tensor([[0, 2, 1]]))
