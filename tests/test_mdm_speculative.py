"""Speculative unmasking (policy "speculative", mdm.speculative): the accept / residual rule
gives the target law exactly; decoding reaches the enumerated joint of hidden-Markov oracles
(where parallel decoding at the same rate is far off) in any order, with blocks; greedy
left-to-right equals one-token-per-step greedy decoding; calls and rows are counted."""
import json

import pytest
import torch

from diffinfer.cli import main as cli
from diffinfer.mdm import decode
from diffinfer.mdm.speculative import SpeculativeUnmasking, accept_or_correct
from diffinfer.metrics import total_variation
from diffinfer.toys import HiddenMarkovModel
from sequence_laws import ProductModel, empirical_law, exact_law, exact_sets_floor

torch.set_num_threads(1)


@pytest.mark.parametrize("seed", range(4))
def test_accept_or_correct_gives_the_target_law_exactly(seed):
    """``P(out = v) = d(v) P(accept | v) + P(reject) r(v) = q(v)``: the acceptance probability of
    each proposal read off a fine grid of uniforms, the residual law returned; zeros in either law."""
    g = torch.Generator().manual_seed(seed)
    V, M = 6, 20000
    d, q = (torch.rand(V, generator=g, dtype=torch.float64) for _ in range(2))
    d[seed % V] = 0.0  # a value the draft never proposes (the residual must supply it)
    q[(seed + 2) % V] = 0.0  # a value the target forbids (a proposal of it is always rejected)
    d, q = d / d.sum(), q / q.sum()
    u = (torch.arange(M, dtype=torch.float64) + 0.5) / M  # [M]
    law = torch.zeros(V, dtype=torch.float64)
    for v in range(V):
        prop = torch.full((M,), v)
        accepted, residual = accept_or_correct(d.expand(M, V), q.expand(M, V), prop, u)
        acc = accepted.double().mean()
        law[v] += d[v] * acc
        law += d[v] * (1 - acc) * residual[0]
    assert torch.allclose(law, q, atol=2.0 / M)
    # the draft equal to the target: never rejected, and the residual is the target itself
    accepted, residual = accept_or_correct(q[None], q[None], q.argmax()[None], torch.tensor([0.999999]))
    assert accepted.all() and torch.allclose(residual[0], q)


def _oracle(seed):
    return HiddenMarkovModel.random(n_hidden=3, n_states=3, stay=0.9, concentration=0.5, seed=seed)


@pytest.mark.parametrize("seed,options", [
    (0, dict(k_max=2)),
    (1, dict(k_max=5, order="left-to-right")),
    (2, dict(k_max=3, block=3)),
    (3, dict(k_max=4, temperature=1.0, top_k=2)),
])
def test_decoded_law_is_the_enumerated_joint(seed, options):
    """8,000 sequences of length 6 over 3 tokens against the oracle's enumerated joint (729
    sequences): within 1.2x the largest TV of six exact sample sets of the same size, where
    drawing every position at once from its marginal is more than 1.5x off (the test can fail). With ``top_k=2`` the target is the oracle's top-2-filtered conditionals, so there the
    reference is plain one-token-per-step decoding under the same filter."""
    V, L, N = 3, 6, 8000
    hmm = _oracle(seed)
    floor = exact_sets_floor(hmm, V, L, N)
    exact = exact_law(hmm, V, L)
    r = decode(hmm, length=L, batch=N, policy="speculative", seed=10 + seed, **options)
    if "top_k" in options:
        ref = decode(hmm, length=L, batch=N, policy="random", top_k=2, seed=99)
        exact = empirical_law(ref.tokens, V)
        floor *= 2 ** 0.5  # two empirical sets: the difference of two independent errors
    tv = total_variation(empirical_law(r.tokens, V), exact)
    assert tv <= 1.2 * floor, (tv, floor)
    if "top_k" not in options:
        parallel = decode(hmm, length=L, batch=N, policy="random", steps=1, seed=10 + seed)
        assert total_variation(empirical_law(parallel.tokens, V), exact) > 1.5 * floor
    assert r.nfe == r.steps + 1 and r.policy_calls == r.steps  # one call per step after the first


def test_greedy_left_to_right_is_one_token_per_step_greedy_decoding():
    """At temperature 0 the verified run is the argmax of each conditional given the tokens
    before it: the same tokens as greedy blocks of one token, in fewer calls."""
    hmm = HiddenMarkovModel.random(4, 8, stay=0.95, seed=3)
    prompt = hmm.sample(6, 4, generator=torch.Generator().manual_seed(0))
    spec = decode(hmm, prompt=prompt, length=24, policy="speculative", k_max=6, order="left-to-right",
                  temperature=0, seed=1)
    ref = decode(hmm, prompt=prompt, length=24, policy="random", block=1, temperature=0, seed=1)
    assert torch.equal(spec.tokens, ref.tokens)
    assert spec.nfe < ref.nfe == 24


def test_a_draft_that_is_never_wrong_commits_k_plus_one_per_call():
    """On a product law every target equals its draft: each step accepts all ``k`` drafts and
    draws the bonus position, and the next step's draft needs no call of the loop's own."""
    L, B, k = 16, 5, 3
    model = ProductModel(L, 6)
    policy = SpeculativeUnmasking(k_max=k)
    accepted = []
    r = decode(model, length=L, batch=B, policy=policy, seed=2,
               callback=lambda s, t, info: accepted.append((policy.accepted.clone(), info["commit"].sum(-1))))
    assert all((a == k).all() and (n == k + 1).all() for a, n in accepted)
    assert r.steps == L // (k + 1) and r.nfe == r.steps + 1 and r.policy_calls == r.steps
    assert r.policy_rows == B * r.steps * (k + 1) and r.tokens_per_nfe == L / (r.steps + 1)
    assert r.row_evaluations == B  # the loop's own call happens once, at the first step


def test_parallel_gain_on_a_sticky_hidden_markov_model():
    """More than one token per call where the law is far from a product (the sticky oracle of
    the benchmark), with the first draft of a step rejected only when the canvas changed."""
    hmm = HiddenMarkovModel.random(4, 8, stay=0.95, seed=0)
    r1 = decode(hmm, length=48, batch=64, policy="speculative", k_max=1, seed=0)
    r8 = decode(hmm, length=48, batch=64, policy="speculative", k_max=8, seed=0)
    assert 1.0 < r1.tokens_per_nfe < r8.tokens_per_nfe
    assert (r8.decoded_per_row == 48).all() and not (r8.tokens == hmm.mask_id).any()


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="k_max"):
        SpeculativeUnmasking(k_max=0)
    with pytest.raises(ValueError, match="left-to-right"):
        SpeculativeUnmasking(order="confidence")
    hmm = _oracle(0)
    with pytest.raises(ValueError, match="cfg"):
        decode(hmm, length=6, policy="speculative", cfg=1.0)

    class NaNAfterFirst:
        mask_id, vocab_size = 3, 4

        def __init__(self):
            self.calls = 0

        def logits(self, tokens):
            self.calls += 1
            out = hmm.logits(tokens)
            return out if self.calls == 1 else out * float("nan")

    with pytest.raises(ValueError, match="NaN"):
        decode(NaNAfterFirst(), length=6, policy="speculative", seed=0)


def test_cli_decodes_with_the_speculative_policy(capsys):
    assert cli(["decode", "--model", "markov", "--length", "32", "--policy", "speculative", "--k-max", "4",
                "--order", "left-to-right", "--json", "--batch", "2"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and lines[0]["stats"]["tokens_per_nfe"] > 1.0
    assert lines[0]["stats"]["policy_calls"] == lines[0]["stats"]["nfe"] - 1
    assert cli(["decode", "--model", "markov", "--policy", "speculative", "--steps", "8"]) == 2
    assert "--steps does not apply" in capsys.readouterr().err
    assert cli(["decode", "--model", "markov", "--policy", "random", "--k-max", "4"]) == 2
    assert "--k-max applies" in capsys.readouterr().err


def test_the_handed_over_draft_is_the_canvas_holding_the_accepted_drafts():
    """One step with the oracle's exact conditionals: the committed run is the accepted drafts
    in order plus one position, and the next step's law is exactly the conditionals given the
    accepted drafts (not the residual or bonus token, which no canvas held)."""
    from diffinfer.mdm import StepContext
    from diffinfer.rng import make_rng

    hmm = HiddenMarkovModel.random(4, 8, stay=0.95, seed=1)
    m = hmm.mask_id
    g = torch.Generator().manual_seed(4)
    clean = hmm.sample(40, 10, generator=g)
    tokens = torch.where(torch.rand(40, 10, generator=g) < 0.3, clean, torch.full_like(clean, m))
    tokens[:, 0] = m
    rng = make_rng(5, 40, "cpu")
    probs = hmm.conditionals(tokens)  # [B, L, V]
    x0 = torch.distributions.Categorical(probs=probs).sample()
    policy = SpeculativeUnmasking(k_max=4)
    ctx = StepContext(probs=probs, x0=x0, candidates=tokens == m, uniform=rng.rand((10,), dtype=torch.float64),
                      tokens=tokens, evaluate=lambda c, rows: hmm.conditionals(c).log(), rng=rng, mask_id=m)
    sel = policy.select(ctx)
    rank = policy._ranks(ctx)
    for b in range(len(tokens)):
        a = int(policy.accepted[b])
        run = (rank[b] < a) & (tokens[b] == m)
        assert torch.equal(sel.commit[b], (rank[b] <= a) & (tokens[b] == m))
        assert torch.equal(sel.values[b][run], x0[b][run])  # accepted drafts are committed as drawn
        held = torch.where(run, x0[b], tokens[b])
        assert torch.allclose(sel.draft[b].exp(), hmm.conditionals(held[None])[0], atol=1e-12)
    assert 0 < policy.accepted.float().mean() < 4  # both acceptances and rejections occur
