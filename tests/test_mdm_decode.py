"""The decode loop against the exact Markov-chain oracle: exact sampling, policy invariants,
per-sample seeding, end of sequence, batches of prompts, and clear errors."""
import pytest
import torch
from scipy import stats

from diffinfer.mdm import decode, policy_names, transfer_counts
from diffinfer.mdm.metrics import bigram_tv
from diffinfer.toys.markov_chain import MarkovChain

torch.set_num_threads(1)

SCHEDULED = {"random", "ancestral", "low-confidence", "margin", "entropy", "confident", "rcr"}


def _chain():
    return MarkovChain([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.5, 0.1, 0.4]], initial=[0.2, 0.5, 0.3])


def _pair_pvalue(tokens, chain, i):
    """Chi-square p-value of the pair (x_i, x_{i+1}) over independent rows against its exact law."""
    V = chain.n_states
    observed = torch.bincount(tokens[:, i] * V + tokens[:, i + 1], minlength=V * V).double()
    law = (chain.marginals(tokens.shape[1])[i][:, None] * chain.transition).flatten()
    return stats.chisquare(observed, law * len(tokens)).pvalue


def test_one_token_per_step_in_random_order_samples_the_chain_exactly():
    """Any-order autoregression with exact conditionals is exact: the bigram (x_i, x_{i+1}) at
    three positions passes a chi-square test (Bonferroni, family level 0.003) over 3000 rows,
    while the same test rejects a parallel decoder (4 tokens per step)."""
    c, L, N = _chain(), 8, 3000
    exact = decode(c, length=L, batch=N, policy="random", steps=L, seed=0)
    assert exact.tokens_per_nfe == 1.0
    assert min(_pair_pvalue(exact.tokens, c, i) for i in (0, 3, 6)) > 1e-3
    parallel = decode(c, length=L, batch=N, policy="random", steps=2, seed=0)
    assert min(_pair_pvalue(parallel.tokens, c, i) for i in (0, 3, 6)) < 1e-3
    assert bigram_tv(parallel.tokens, c) > 2 * bigram_tv(exact.tokens, c)


def test_exact_with_a_prompt_matches_the_conditional_chain():
    """Given a prompt, the first generated token follows the transition row of the last prompt token."""
    c, N = _chain(), 3000
    out = decode(c, prompt=[0, 2], length=4, batch=N, policy="random", steps=4, seed=3)
    observed = torch.bincount(out.tokens[:, 2], minlength=3).double()
    assert stats.chisquare(observed, c.transition[2] * N).pvalue > 1e-3
    assert (out.tokens[:, :2] == torch.tensor([0, 2])).all()


@pytest.mark.parametrize("policy", policy_names())
@pytest.mark.parametrize("block", [None, 4])
def test_every_policy_fills_the_canvas_keeps_the_prompt_and_its_bounds(policy, block):
    c = MarkovChain.random(5, seed=1)
    prompt = torch.tensor([1, 3, 0])
    L, steps, B = 12, 6, 16
    per_step = []

    def record(step, tokens, info):
        per_step.append((info["commit"].sum(-1), tokens.clone(), info["remask"]))

    scheduled = policy in SCHEDULED
    out = decode(c, prompt=prompt, length=L, batch=B, policy=policy, block=block, seed=0,
                 steps=steps if scheduled else None, callback=record)
    assert (out.tokens != c.mask_id).all()
    assert (out.tokens[:, :3] == prompt).all()
    assert out.decoded_per_row.tolist() == [L] * B
    if policy in ("threshold", "factor", "dependency"):  # at least one token per step for every unfinished row
        still_masked = torch.ones(B, dtype=torch.bool)
        for commits, tokens, _ in per_step:
            assert (commits[still_masked] >= 1).all()
            still_masked = (tokens == c.mask_id).any(-1)
    else:  # finishes within the scheduled steps
        assert out.steps <= steps + (0 if block is None else L // 4)
    if policy in ("random", "low-confidence", "margin", "entropy"):
        n_blocks = 1 if block is None else L // block
        per_block = steps // n_blocks
        expect = transfer_counts(torch.tensor([L // n_blocks]), per_block)[0].tolist() * n_blocks
        assert [int(k[0]) for k, _, _ in per_step] == expect
    if policy == "confident":
        expect = transfer_counts(torch.tensor([L if block is None else 4]), steps if block is None else 2)[0]
        assert int(per_step[0][0].min()) >= int(expect[0])
    if policy == "rcr":  # the decoded count follows the schedule even when tokens are remasked
        cum = transfer_counts(torch.tensor([L]), steps)[0].cumsum(0) if block is None else None
        for s, (_, tokens, _) in enumerate(per_step):
            n_decoded = (tokens[:, 3:] != c.mask_id).sum(-1)
            if cum is not None:
                assert (n_decoded == cum[s]).all()


def test_rcr_remasks_some_tokens():
    c = MarkovChain.random(5, seed=1)
    remasked = []
    decode(c, length=24, batch=32, policy="rcr", steps=8, seed=0,
           callback=lambda s, t, info: remasked.append(int(info["remask"].sum())))
    assert sum(remasked) > 0


def test_seeded_rows_do_not_depend_on_the_batch():
    c = MarkovChain.random(5, seed=2)
    many = decode(c, length=10, batch=6, policy="threshold", threshold=0.5, seed=11)
    again = decode(c, length=10, batch=6, policy="threshold", threshold=0.5, seed=11)
    assert torch.equal(many.tokens, again.tokens)
    alone = decode(c, length=10, batch=1, policy="threshold", threshold=0.5, seed=(11, [4]))
    assert torch.equal(alone.tokens[0], many.tokens[4])
    other = decode(c, length=10, batch=6, policy="threshold", threshold=0.5, seed=12)
    assert not torch.equal(other.tokens, many.tokens)


def test_greedy_low_confidence_is_deterministic_and_mode_seeking():
    c = MarkovChain.two_state(0.9)
    out = decode(c, length=16, batch=4, policy="low-confidence", temperature=0, seed=None)
    assert (out.tokens == out.tokens[:, :1]).all()  # staying is the most likely move


def test_batch_of_prompts_of_different_lengths():
    c = _chain()
    out = decode(c, prompt=[[0], [1, 2, 0, 1]], length=5, policy="threshold", seed=0)
    assert out.tokens.shape == (2, 9)
    assert out.gen_start.tolist() == [1, 4] and out.gen_end.tolist() == [6, 9]
    assert (out.tokens[0, 6:] == c.mask_id).all()  # padding after the short row
    assert [len(g) for g in out.generated()] == [5, 5]
    assert out.tokens[1, :4].tolist() == [1, 2, 0, 1]


def test_eos_stops_a_row_and_fills_the_rest():
    """State 2 acts as end of sequence: after the first 2 every token is 2."""
    c = _chain()
    out = decode(c, length=20, batch=64, policy="low-confidence", block=4, steps=20, eos_id=2, seed=0)
    for row in out.tokens.tolist():
        if 2 in row:
            first = row.index(2)
            assert all(t == 2 for t in row[first:])
    assert all(2 not in g for g in out.generated())


def test_top_k_one_is_greedy():
    c = MarkovChain.random(5, seed=3)
    a = decode(c, length=8, batch=3, policy="random", steps=8, top_k=1, seed=0)
    b = decode(c, length=8, batch=3, policy="random", steps=8, temperature=0, seed=0)
    assert torch.equal(a.tokens, b.tokens)


def test_bad_input_gives_clear_errors():
    c = _chain()
    with pytest.raises(ValueError, match="does not divide"):
        decode(c, length=10, block=4)
    with pytest.raises(ValueError, match="unknown policy.*threshold"):
        decode(c, length=4, policy="fastest")
    with pytest.raises(ValueError, match="lie in"):
        decode(c, prompt=[0, 9], length=4)
    with pytest.raises(ValueError, match="length"):
        decode(c, length=0)
    with pytest.raises(ValueError, match="unknown cache"):
        decode(c, length=4, cache="magic")
    with pytest.raises(ValueError, match="key/value"):
        decode(c, length=4, cache="prefix")

    class BadMask:
        mask_id, vocab_size = 7, 4
        logits = c.logits

    with pytest.raises(ValueError, match="outside the vocabulary"):
        decode(BadMask(), length=4)

    class NaNModel:
        mask_id, vocab_size = 3, 4

        def logits(self, tokens):
            return torch.full((*tokens.shape, 4), float("nan"))

    with pytest.raises(ValueError, match="NaN"):
        decode(NaNModel(), length=4)


def test_dilated_order_is_exact_on_a_markov_chain_with_log_steps():
    """DUS commits only tokens separated by decoded ones, which are conditionally independent
    under a first-order chain: exact in 1 + log2(L) steps (here 4 steps for 8 tokens)."""
    c, L, N = _chain(), 8, 3000
    out = decode(c, length=L, batch=N, policy="dilated", seed=1)
    assert out.nfe == 4 and out.tokens_per_nfe == 2.0
    assert min(_pair_pvalue(out.tokens, c, i) for i in (0, 3, 6)) > 1e-3
    blocks = decode(c, length=16, batch=2, policy="dilated", block=4, seed=1)
    assert blocks.nfe == 4 * 3


def test_threshold_on_sampled_confidence_is_mode_seeking():
    """Fast-dLLM's threshold on the drawn token's probability prefers likely tokens: the mean
    NLL per token falls clearly below the exact value (a known bias at temperature 1)."""
    c = MarkovChain.random(6, seed=0)
    out = decode(c, length=32, batch=256, policy="threshold", threshold=0.9, seed=0)
    nll = float(-c.log_prob(out.tokens).mean()) / 32
    assert nll < 0.9 * c.expected_nll_per_token(32)
