"""The second pass on discrete posterior sampling under a linear-sum observation (issue 18): exact
joint draws of the sum posterior (``toys.hmm_sum_posterior_sample``) against enumeration, the
defensive twist (``SumPotential(inflate=)``) -- exact on complete sequences, SMC with it still
targets the exact joint -- and exact-conditional Gibbs sweeps leaving the sum posterior invariant
on a bench-sized sticky model, with limits from the floor of exact sample sets of the same size."""
import pytest
import torch

from test_mdm_posterior import _joint_floor, _joint_tv, _sum_posterior_by_enumeration, _tiny, L, V

from diffinfer.mdm import (SumPotential, marginal_tv, posterior_gibbs, posterior_smc, rao_blackwell_marginals,
                           value_covariance, weighted_marginals)
from diffinfer.toys import HiddenMarkovModel, hmm_sum_posterior_marginals, hmm_sum_posterior_sample

torch.set_num_threads(1)


@pytest.mark.parametrize("seed,y,sigma", [(0, 3.3, 0.5), (1, 6.0, 2.0), (2, 1.2, 0.3)])
def test_sum_posterior_sample_draws_the_exact_joint(seed, y, sigma):
    """Joint TV of 4000 draws within 1.5x the floor of as many i.i.d. draws from the enumerated law."""
    hmm, values, n = _tiny(seed), torch.tensor([0, 2, 1]), 4000
    _, p = _sum_posterior_by_enumeration(hmm, values, y, sigma)
    p = p / p.sum()
    x = hmm_sum_posterior_sample(hmm, L, y, sigma, n, values, generator=torch.Generator().manual_seed(seed))
    assert x.shape == (n, L) and x.dtype == torch.long
    assert _joint_tv(x, p) < 1.5 * _joint_floor(p, n)


def _sticky_sum(seed=104, length=16):
    hmm = HiddenMarkovModel.random(seed=seed)
    g = torch.Generator().manual_seed(2000 + seed)
    x = hmm.sample(1, length, generator=g)[0]
    y = float(x.sum()) + float(torch.randn((), generator=g, dtype=torch.float64))
    values = torch.arange(hmm.n_states)
    return hmm, values, y, hmm_sum_posterior_marginals(hmm, length, y, 1.0, values)


def test_sum_posterior_sample_marginals_on_a_sticky_model():
    """On a bench-sized model (V = 8, L = 16): the draws' marginals are within 1.5x the floor of
    as many independent per-position draws from the exact marginals."""
    hmm, values, y, exact = _sticky_sum()
    n, g = 4096, torch.Generator().manual_seed(0)
    x = hmm_sum_posterior_sample(hmm, 16, y, 1.0, n, values, generator=g)
    tv = float(marginal_tv(weighted_marginals(x, 8), exact).mean())
    floors = [float(marginal_tv(weighted_marginals(torch.multinomial(exact, n, True, generator=g).T, 8),
                                exact).mean()) for _ in range(3)]
    assert tv < 1.5 * max(floors), (tv, floors)


def _sum_law(hmm, length, y, sigma):
    """The exact posterior law ``[S]`` of the total ``sum_i x_i`` (values = ids): the prior law of
    the running sum by a forward pass over (hidden state, sum), times ``N(y; S, sigma^2)``."""
    V, S = hmm.n_states, length * (hmm.n_states - 1) + 1
    pred = torch.zeros(hmm.n_hidden, S, dtype=torch.float64)
    pred[:, 0] = hmm.initial
    for _ in range(length):
        f = torch.zeros_like(pred)
        for v in range(V):
            f[:, v:] += (pred * hmm.emission[:, v][:, None])[:, : S - v]
        pred = hmm.transition.T @ f
    prior = f.sum(0)
    post = prior * torch.exp(-0.5 * ((y - torch.arange(S, dtype=torch.float64)) / sigma) ** 2)
    return post / post.sum()


def test_gibbs_sweeps_keep_the_sum_posterior_on_a_sticky_model():
    """Start from exact joint draws of the sum posterior (V = 8, L = 16, the tuning model 104),
    run two exact-conditional Gibbs sweeps: the Rao-Blackwellised marginals stay within 1.5x the
    larger RB floor of two independent exact sets of the same size, and the law of the total --
    the statistic the observation acts on -- within 1.5x the floor of as many exact draws from
    its exact law (a tempered or dropped leave-one-out likelihood widens it)."""
    hmm, values, y, exact = _sticky_sum()
    n, length = 2048, 16
    pot = SumPotential(values, y, 1.0, length)

    def rb_tv(tokens):
        return float(marginal_tv(rao_blackwell_marginals(hmm, tokens, pot.leave_one_out_likelihood(tokens)),
                                 exact).mean())

    sets = [hmm_sum_posterior_sample(hmm, length, y, 1.0, n, values, generator=torch.Generator().manual_seed(k))
            for k in range(2)]
    floor = max(rb_tv(s) for s in sets)
    moved = posterior_gibbs(hmm, sets[0], None, sweeps=2, seed=3, potential=pot)
    assert (moved != sets[0]).float().mean() > 0.2  # the sweeps do move the tokens
    assert rb_tv(moved) < 1.5 * floor, (rb_tv(moved), floor)
    law = _sum_law(hmm, length, y, 1.0)  # [S]
    emp = torch.bincount(moved.sum(-1), minlength=len(law)).double() / n
    assert 0.5 * float((emp - law).abs().sum()) < 1.5 * _joint_floor(law, n)


def test_inflated_twist_is_exact_on_complete_sequences_and_flatter_on_partial_ones():
    hmm, values, y, sigma = _tiny(0), torch.tensor([0, 2, 1]), 3.3, 0.5
    cov = value_covariance(hmm, values.double(), L)
    full = torch.tensor([[1, 0, 2, 1], [2, 2, 0, 1]])
    probs = torch.softmax(hmm.logits(full).double(), -1)
    for c in (1.0, 3.0):
        pot = SumPotential(values, y, sigma, L, covariance=cov, inflate=c)
        log_g, _ = pot.step(full, probs, hmm.mask_id)
        torch.testing.assert_close(log_g, pot.final(full, hmm.vocab_size, hmm.mask_id), rtol=0, atol=1e-12)
    canvas = torch.tensor([[hmm.mask_id, 0, hmm.mask_id, 1], [hmm.mask_id] * L])
    probs = torch.softmax(hmm.logits(canvas).double(), -1)
    plain = SumPotential(values, y, sigma, L, covariance=cov).step(canvas, probs, hmm.mask_id)
    one = SumPotential(values, y, sigma, L, covariance=cov, inflate=1.0).step(canvas, probs, hmm.mask_id)
    for a, b in zip(plain, one):
        assert torch.equal(a, b)  # inflate = 1 is the plain twist, bitwise
    # flatter look-ahead: a smaller log-range over the candidates at every masked position
    wide = SumPotential(values, 8.0, sigma, L, covariance=cov, inflate=3.0).step(canvas, probs, hmm.mask_id)
    narrow = SumPotential(values, 8.0, sigma, L, covariance=cov).step(canvas, probs, hmm.mask_id)
    masked = canvas == hmm.mask_id
    spread = lambda look: (look.amax(-1) - look.amin(-1))[masked]  # noqa: E731
    assert (spread(wide[1][..., :V]) < spread(narrow[1][..., :V])).all()


def test_inflated_twist_moments():
    """The twist is N(y; mean, sigma^2 + c Var_M K): its log at two values of y recovers the
    variance, which scales by c beyond sigma^2."""
    hmm, values, sigma = _tiny(1), torch.tensor([0, 2, 1]), 0.5
    cov = value_covariance(hmm, values.double(), L)
    canvas = torch.tensor([[hmm.mask_id, 0, hmm.mask_id, 1], [hmm.mask_id] * L, [2, 2, hmm.mask_id, 0]])
    probs = torch.softmax(hmm.logits(canvas).double(), -1)

    def variance(c):  # log G(y) = -(y - m)^2 / (2 var) + const: its second difference in y is -1 / var
        g0, g1, g2 = (SumPotential(values, y, sigma, L, covariance=cov, inflate=c).step(canvas, probs, hmm.mask_id)[0]
                      for y in (0.0, 1.0, 2.0))
        return 1.0 / (2 * g1 - g0 - g2)
    v1, v3 = variance(1.0), variance(3.0)
    torch.testing.assert_close(v3 - sigma ** 2, 3 * (v1 - sigma ** 2), rtol=1e-10, atol=1e-12)
    assert (v1 > sigma ** 2 + 1e-3).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smc_with_the_inflated_twist_targets_the_exact_joint(seed):
    """The defensive twist changes the proposal and the intermediate targets, not the final one:
    joint TV within 2.5x the floor of as many exact draws, evidence close to exact (the oracle of
    the covariance-twist test in test_mdm_posterior.py)."""
    hmm, values, sigma, n = _tiny(seed), torch.tensor([0, 2, 1]), 0.5, 4000
    x = hmm.sample(1, L, generator=torch.Generator().manual_seed(seed))[0]
    y = float(values[x].sum()) + 0.5
    _, p = _sum_posterior_by_enumeration(hmm, values, y, sigma)
    pot = SumPotential(values, y, sigma, L, covariance=value_covariance(hmm, values.double(), L), inflate=3.0)
    out = posterior_smc(hmm, None, n, seed=seed, ess_threshold=0.95, potential=pot)
    assert out["resampled"]
    assert _joint_tv(out["tokens"], p / p.sum(), out["log_weights"]) < 2.5 * _joint_floor(p / p.sum(), n)
    log_evidence = float(p.sum().log()) - 0.5 * float(torch.log(torch.tensor(2 * torch.pi * sigma ** 2)))
    assert abs(out["log_evidence"] - log_evidence) < 0.2


def test_bad_input():
    hmm = _tiny(0)
    for c in (0.5, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="inflate"):
            SumPotential([0, 1, 2], 1.0, 0.5, L, inflate=c)
    with pytest.raises(ValueError, match="n must be"):
        hmm_sum_posterior_sample(hmm, L, 1.0, 0.5, 0)
    with pytest.raises(ValueError, match="sigma > 0"):
        hmm_sum_posterior_sample(hmm, L, 1.0, 0.0, 5)
    with pytest.raises(ValueError, match="values must be 3 non-negative integers"):
        hmm_sum_posterior_sample(hmm, L, 1.0, 0.5, 5, values=[0, -1, 2])
