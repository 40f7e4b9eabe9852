"""HiddenMarkovModel oracle against brute-force enumeration, the Markov-chain oracle it
generalises, exact-sampling statistics and the Cover-Thomas entropy-rate sandwich."""
import itertools
import math

import pytest
import torch
from scipy import stats

from diffinfer.mdm import decode
from diffinfer.mdm.metrics import pair_frequencies, pair_tv
from diffinfer.metrics import total_variation
from diffinfer.toys import HiddenMarkovModel, MarkovChain

torch.set_num_threads(1)
V, H, L = 3, 2, 5


def _all_sequences(v, length):
    return torch.tensor(list(itertools.product(range(v), repeat=length)))


def _hmm(initial=None):
    return HiddenMarkovModel([[0.9, 0.1], [0.2, 0.8]], [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], initial=initial)


def _joint_by_enumeration(hmm, length):
    """``P(x)`` for every token sequence by summing ``P(x, h)`` over every hidden path."""
    seqs = _all_sequences(hmm.n_states, length)
    p = torch.zeros(len(seqs), dtype=torch.float64)
    for path in itertools.product(range(hmm.n_hidden), repeat=length):
        ph = hmm.initial[path[0]] * torch.prod(torch.stack([hmm.transition[a, b] for a, b in zip(path, path[1:])])) \
            if length > 1 else hmm.initial[path[0]]
        pe = torch.ones(len(seqs), dtype=torch.float64)
        for i, h in enumerate(path):
            pe = pe * hmm.emission[h, seqs[:, i]]
        p += ph * pe
    return seqs, p


def test_log_prob_equals_the_sum_over_hidden_paths():
    hmm = _hmm(initial=[0.3, 0.7])
    seqs, p = _joint_by_enumeration(hmm, L)
    torch.testing.assert_close(hmm.log_prob(seqs).exp(), p, rtol=1e-12, atol=1e-15)
    assert math.isclose(float(p.sum()), 1.0, abs_tol=1e-12)


@pytest.mark.parametrize("pattern", ["m0mm2", "mmmmm", "1mmm0", "m2m1m", "2222m", "0mmmm"])
def test_conditionals_equal_brute_force(pattern):
    hmm = _hmm(initial=[0.3, 0.7])
    seqs, p = _joint_by_enumeration(hmm, L)
    tokens = torch.tensor([[hmm.mask_id if ch == "m" else int(ch) for ch in pattern]])
    keep = torch.ones(len(seqs), dtype=torch.bool)
    for i, ch in enumerate(pattern):
        if ch != "m":
            keep &= seqs[:, i] == int(ch)
    expect = torch.stack([torch.bincount(seqs[keep][:, i], weights=p[keep], minlength=V) for i in range(L)])
    expect = expect / expect.sum(-1, keepdim=True)
    torch.testing.assert_close(hmm.conditionals(tokens)[0], expect, rtol=1e-12, atol=1e-12)
    logits = hmm.logits(tokens)
    assert logits.shape == (1, L, V + 1) and torch.isinf(logits[..., hmm.mask_id]).all()


def test_far_tokens_are_dependent_given_the_rest_unlike_a_markov_chain():
    """The point of the oracle: with the middle masked, the two ends inform each other."""
    hmm = _hmm()
    m = hmm.mask_id
    p_a = hmm.conditionals(torch.tensor([[0, m, m, m, m]]))[0, -1]
    p_b = hmm.conditionals(torch.tensor([[2, m, m, m, m]]))[0, -1]
    assert total_variation(p_a, p_b) > 0.05


def test_identity_emission_is_the_markov_chain():
    T = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.5, 0.1, 0.4]], dtype=torch.float64)
    hmm, chain = HiddenMarkovModel(T, torch.eye(3)), MarkovChain(T)
    m = hmm.mask_id
    tokens = torch.tensor([[m, 0, m, m, 2], [1, m, m, m, m]])
    torch.testing.assert_close(hmm.conditionals(tokens), chain.conditionals(tokens), rtol=1e-12, atol=1e-12)
    seqs = _all_sequences(3, 4)
    torch.testing.assert_close(hmm.log_prob(seqs), chain.log_prob(seqs), rtol=1e-12, atol=1e-12)
    for lag in (1, 3):
        torch.testing.assert_close(hmm.pair_distribution(6, lag), chain.pair_distribution(6, lag))
    lo, hi = hmm.entropy_rate_bounds(4)
    assert math.isclose(lo, chain.entropy_rate(), rel_tol=1e-9) and math.isclose(hi, chain.entropy_rate(), rel_tol=1e-9)


def test_pair_distribution_equals_enumeration_at_every_lag():
    hmm = _hmm(initial=[0.3, 0.7])
    seqs, p = _joint_by_enumeration(hmm, L)
    for lag in range(1, L):
        expect = torch.zeros(V, V, dtype=torch.float64)
        for i in range(L - lag):
            expect += torch.bincount(seqs[:, i] * V + seqs[:, i + lag], weights=p, minlength=V * V).view(V, V)
        torch.testing.assert_close(hmm.pair_distribution(L, lag), expect / (L - lag), rtol=1e-12, atol=1e-14)


def test_entropy_rate_lies_in_the_exact_sandwich_and_the_sandwich_closes():
    hmm = _hmm()
    bounds = [hmm.entropy_rate_bounds(n) for n in (2, 4, 8)]
    for (lo, hi), (lo2, hi2) in zip(bounds, bounds[1:]):
        assert lo <= lo2 + 1e-12 and hi2 <= hi + 1e-12  # monotone (Cover & Thomas 4.5.1)
    lo, hi = bounds[-1]
    assert hi - lo < 0.05 * hi
    rate = hmm.entropy_rate(length=128, n=2048, seed=1)
    # Monte Carlo: standard error of a mean over 2048 x 64 correlated terms, well below 1%
    assert lo - 0.01 * hi <= rate <= hi + 0.01 * hi


def test_exact_sampling_matches_the_pair_laws():
    hmm = HiddenMarkovModel.random(n_hidden=3, n_states=4, stay=0.9, seed=5)
    x, h = hmm.sample(6000, 12, generator=torch.Generator().manual_seed(0), return_hidden=True)
    assert x.shape == h.shape == (6000, 12) and int(h.max()) < 3
    # first pair per row: independent rows, a chi-square test against the exact law of (x_0, x_k)
    for lag in (1, 8):
        m0 = hmm.initial
        joint = hmm.emission.T @ (m0[:, None] * torch.linalg.matrix_power(hmm.transition, lag)) @ hmm.emission
        counts = torch.bincount(x[:, 0] * 4 + x[:, lag], minlength=16).double()
        keep = joint.flatten() > 0
        assert stats.chisquare(counts[keep], (joint.flatten() * len(x))[keep]).pvalue > 1e-3, lag
    # all pairs: the empirical law is near the exact pair law (a loose check of pair_frequencies)
    assert total_variation(pair_frequencies(x, 4, 8), hmm.pair_distribution(12, 8)) < 0.03


def test_one_token_per_step_random_order_decoding_is_exact_on_the_hmm():
    """Random-order decoding with one token per call samples the exact joint: its pair TV at
    lag 1 and lag 8 stays within the spread of exact sample sets of the same size."""
    hmm = HiddenMarkovModel.random(n_hidden=3, n_states=4, stay=0.95, seed=2)
    n, length = 512, 16
    r = decode(hmm, length=length, batch=n, policy="random", steps=length, seed=0)
    g = torch.Generator().manual_seed(7)
    for lag in (1, 8):
        floor = [pair_tv(hmm.sample(n, length, generator=g), hmm, lag) for _ in range(8)]
        assert pair_tv(r.tokens, hmm, lag) <= 1.5 * max(floor), (lag, floor)


def test_parallel_decoding_of_far_tokens_is_biased_on_the_hmm():
    """Unmasking half the sequence per call from factorised conditionals breaks the far-pair
    law (the oracle can tell, unlike a first-order chain under the dilated order)."""
    hmm = HiddenMarkovModel.random(n_hidden=2, n_states=4, stay=0.97, concentration=0.1, seed=3)
    n, length = 1024, 16
    r = decode(hmm, length=length, batch=n, policy="random", steps=2, seed=0)
    g = torch.Generator().manual_seed(7)
    floor = max(pair_tv(hmm.sample(n, length, generator=g), hmm, 8) for _ in range(8))
    assert pair_tv(r.tokens, hmm, 8) > 2 * floor


def test_bad_input():
    with pytest.raises(ValueError, match="sum to 1"):
        HiddenMarkovModel([[0.5, 0.5], [0.5, 0.5]], [[0.5, 0.4], [0.5, 0.5]])
    with pytest.raises(ValueError, match="rows but there are 2 hidden states"):
        HiddenMarkovModel([[0.5, 0.5], [0.5, 0.5]], [[1.0, 0.0]])
    hmm = _hmm()
    with pytest.raises(ValueError, match="lie in"):
        hmm.logits(torch.tensor([[0, 9]]))
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        hmm.logits(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="mask tokens"):
        hmm.log_prob(torch.tensor([[0, hmm.mask_id]]))
    with pytest.raises(ValueError, match="lag"):
        hmm.pair_distribution(4, 4)
    zero = HiddenMarkovModel([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], initial=[1.0, 0.0])
    with pytest.raises(ValueError, match="probability zero"):
        zero.conditionals(torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="need n_hidden"):
        HiddenMarkovModel.random(n_hidden=1)
