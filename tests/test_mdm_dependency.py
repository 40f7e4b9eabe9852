"""Dependency-aware unmasking (policy "dependency", mdm.dependency): the exact random-order
sampler at k_max = 1, D_j = 0 on a product law, D_j equal to the exact leave-one-out KL of a
hidden-Markov oracle (enumerated), and the rule keeps the candidates that are exactly less
dependent; the extra model calls are counted."""
import itertools

import pytest
import torch

from diffinfer.mdm import StepContext, decode
from diffinfer.mdm.dependency import DependencyAware
from diffinfer.rng import make_rng
from diffinfer.toys import HiddenMarkovModel
from sequence_laws import ProductModel

torch.set_num_threads(1)


def _tiny_hmm():
    return HiddenMarkovModel([[0.9, 0.1], [0.15, 0.85]], [[0.8, 0.15, 0.05], [0.05, 0.15, 0.8]])


def test_k_max_one_is_the_random_order_sampler_bitwise():
    hmm = HiddenMarkovModel.random(4, 8, stay=0.95, seed=0)
    a = decode(hmm, length=12, batch=16, policy="random", seed=3)
    b = decode(hmm, length=12, batch=16, policy="dependency", k_max=1, tau=0.0, seed=3)
    assert torch.equal(a.tokens, b.tokens)
    assert b.nfe == a.nfe == 12 and b.policy_calls == 0 and b.policy_rows == 0 and b.model_rows == a.model_rows


def test_product_law_has_zero_divergence_and_commits_every_candidate():
    L, B, k = 16, 5, 4
    model = ProductModel(L, 6)
    seen = []
    policy = DependencyAware(tau=1e-12, k_max=k)  # D_j is 0 up to float64 round-off
    r = decode(model, length=L, batch=B, policy=policy, seed=1,
               callback=lambda s, t, info: seen.append((policy.divergence.clone(), info["commit"].sum(-1))))
    for d, n in seen:
        assert torch.nan_to_num(d, nan=0.0).abs().max() < 1e-12
        assert (n == k).all()
    # L / k steps, each one decode call and one leave-one-out call of k canvases per row
    assert r.steps == L // k and r.nfe == 2 * L // k and r.policy_calls == L // k and r.policy_rows == B * L
    assert r.model_rows == B * L // k + B * L and r.tokens_per_nfe == k / 2


def _hmm_step(hmm, tokens, k_max, seed):
    """One step of the policy on ``tokens`` with the oracle's exact conditionals."""
    B, L = tokens.shape
    rng = make_rng(seed, B, "cpu")
    probs = hmm.conditionals(tokens)  # [B, L, V]
    x0 = torch.distributions.Categorical(probs=probs).sample()
    ctx = StepContext(probs=probs, x0=x0, candidates=tokens == hmm.mask_id, uniform=rng.rand((L,), dtype=torch.float64),
                      tokens=tokens, evaluate=lambda c, rows: hmm.conditionals(c).log(), rng=rng,
                      mask_id=hmm.mask_id)
    policy = DependencyAware(tau=0.02, k_max=k_max)
    sel = policy.select(ctx)
    return policy, sel, x0


def _law_at(hmm, canvas, j):
    """``p(x_j | unmasked tokens of canvas)`` by enumerating x_j with the oracle's exact marginal likelihood."""
    rows = canvas.repeat(hmm.n_states, 1)
    rows[:, j] = torch.arange(hmm.n_states)
    return torch.softmax(hmm.log_marginal(rows), 0)


def test_divergence_is_the_exact_leave_one_out_kl_of_a_hidden_markov_oracle():
    torch.manual_seed(0)
    hmm = _tiny_hmm()
    m = hmm.mask_id
    tokens = torch.tensor([[m, m, 2, m, m, m], [0, m, m, m, 1, m], [m, m, m, m, m, m]])
    policy, sel, x0 = _hmm_step(hmm, tokens, k_max=3, seed=5)
    checked = 0
    for b in range(len(tokens)):
        cand = (~torch.isnan(policy.divergence[b])).nonzero()[:, 0].tolist()
        assert len(cand) == 3
        for j in cand:
            p = _law_at(hmm, tokens[b], j)
            filled = tokens[b].clone()
            others = [i for i in cand if i != j]
            filled[others] = x0[b, others]
            q = _law_at(hmm, filled, j)
            exact = float((q * (q / p).log()).sum())
            assert policy.divergence[b, j].item() == pytest.approx(exact, rel=1e-9, abs=1e-12)
            checked += 1
        # the first candidate is always committed; the others exactly when D_j <= tau
        d = policy.divergence[b]
        assert sel.commit[b].sum() >= 1
        assert ((d <= policy.tau) & ~torch.isnan(d) <= sel.commit[b]).all()
    assert checked == 9


def _exact_mi(hmm, canvas, j, others):
    """``I(x_j; x_others | unmasked tokens)`` by enumerating every value of ``(x_j, x_others)``."""
    pos = [j] + others
    vals = torch.tensor(list(itertools.product(range(hmm.n_states), repeat=len(pos))))
    rows = canvas.repeat(len(vals), 1)
    rows[:, pos] = vals
    joint = torch.softmax(hmm.log_marginal(rows), 0).view(hmm.n_states, -1)  # [x_j, x_others]
    prod = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    return float((joint * (joint / prod).log()).sum())


def test_committed_candidates_are_exactly_less_dependent_than_rejected_ones():
    """Across many rows (seeds fixed before looking), the exact conditional mutual information
    of a candidate with the rest of its set is lower, on average, for the candidates the rule
    commits than for those it leaves masked."""
    torch.manual_seed(1)
    hmm = HiddenMarkovModel.random(3, 4, stay=0.9, seed=0)
    m = hmm.mask_id
    g = torch.Generator().manual_seed(2)
    clean = hmm.sample(60, 8, generator=g)
    keep = torch.rand(60, 8, generator=g) < 0.3
    tokens = torch.where(keep, clean, torch.full_like(clean, m))
    tokens[:, 0] = m  # at least one mask per row
    policy, sel, _ = _hmm_step(hmm, tokens, k_max=3, seed=7)
    acc, rej = [], []
    for b in range(len(tokens)):
        cand = (~torch.isnan(policy.divergence[b])).nonzero()[:, 0].tolist()
        if len(cand) < 2:
            continue
        first = int(torch.where(sel.commit[b])[0][0]) if sel.commit[b].sum() == 1 else None
        for j in cand:
            mi = _exact_mi(hmm, tokens[b], j, [i for i in cand if i != j])
            if j == first:
                continue  # committed regardless of D
            (acc if sel.commit[b, j] else rej).append(mi)
    assert len(acc) >= 10 and len(rej) >= 10
    assert sum(acc) / len(acc) < 0.5 * sum(rej) / len(rej)


def test_bad_input():
    hmm = _tiny_hmm()
    with pytest.raises(ValueError, match="tau"):
        decode(hmm, length=4, policy="dependency", tau=-1.0)
    with pytest.raises(ValueError, match="k_max"):
        decode(hmm, length=4, policy="dependency", k_max=0)
    with pytest.raises(ValueError, match="unknown draw 'x'; valid: fresh, proposal, conditional"):
        decode(hmm, length=4, policy="dependency", draw="x")
    with pytest.raises(ValueError, match="makes its own model calls"):
        decode(hmm, length=4, policy="dependency", cache="prefix")
    with pytest.raises(ValueError, match="unknown policy|valid"):
        decode(hmm, length=4, policy="dependancy")


def test_cli_passes_tau_and_k_max_to_the_dependency_policy(capsys):
    import json

    from diffinfer.cli import main as cli
    args = ["decode", "--model", "markov", "--length", "24", "--policy", "dependency", "--json"]
    assert cli(args + ["--k-max", "1"]) == 0  # one candidate per step: no leave-one-out call
    one = json.loads(capsys.readouterr().out)["stats"]
    assert one["policy_calls"] == 0 and one["nfe"] == 24
    assert cli(args + ["--k-max", "8", "--tau", "100"]) == 0  # every candidate committed: 8 per step
    wide = json.loads(capsys.readouterr().out)["stats"]
    assert wide["policy_calls"] == 3 and wide["nfe"] == 6
    assert cli(["decode", "--model", "markov", "--policy", "random", "--tau", "0.1"]) == 2
    assert "--tau applies" in capsys.readouterr().err
