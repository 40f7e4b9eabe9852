"""Anchored Posterior Sampling (``mdm.aps``) and text restoration (``mdm.restore``) on exact
hidden-Markov priors: quantized expectation against the exact tilt and a hand-derived gradient,
anchored remasking's selection rule on hand-made steps, and the samplers' defined behaviour."""
import pytest
import torch

from diffinfer.mdm import (AnchoredRemasking, LikelihoodTilt, QuantizedExpectation, aps_sample, channel_codebook,
                           channel_likelihood, character_error_rate, clamped_canvas, corrupt, restore, sum_codebook)
from diffinfer.mdm.unmasking import StepContext
from diffinfer.toys import HiddenMarkovModel, inpainting_likelihood, symmetric_channel_likelihood

torch.set_num_threads(1)
V, L = 3, 5


def _tiny(seed=0):
    return HiddenMarkovModel.random(n_hidden=2, n_states=V, stay=0.8, concentration=0.5, seed=seed)


def _canvas(hmm):
    m = hmm.mask_id
    return torch.tensor([[m, 1, m, m, 0], [m] * L, [2, m, 0, m, m]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantized_expectation_with_the_one_hot_codebook_is_the_exact_tilt(seed):
    """Per-position likelihoods (noisy channel times exact constraints): one unit step of
    quantized-expectation guidance gives the tilt's law at every masked position."""
    hmm = _tiny(seed)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, V, (L,), generator=g)
    lik = symmetric_channel_likelihood(y, V, 0.3) * inpainting_likelihood(y, torch.arange(L) == 3, V)
    canvas = _canvas(hmm)
    E, f = channel_codebook(lik, V)
    qe = torch.log_softmax(QuantizedExpectation(hmm, E, f).logits(canvas), -1)[..., :V]
    tilt = torch.log_softmax(LikelihoodTilt(hmm, lik).logits(canvas).masked_fill(
        torch.arange(V + 1) == hmm.mask_id, -torch.inf), -1)[..., :V]
    masked = canvas == hmm.mask_id
    torch.testing.assert_close(qe.exp()[masked], tilt.exp()[masked], rtol=0, atol=1e-12)
    # a half step is a tempered tilt: p lik^(1/2)
    half = torch.log_softmax(QuantizedExpectation(hmm, E, f, step_size=0.5).logits(canvas), -1)[..., :V]
    logp = torch.log_softmax(hmm.logits(canvas).double()[..., :V], -1)
    want = torch.log_softmax(logp + 0.5 * torch.log(lik).clamp_min(-1e30), -1)
    torch.testing.assert_close(half.exp()[masked], want.exp()[masked], rtol=0, atol=1e-12)


def test_quantized_expectation_for_the_sum_is_the_linearised_guidance():
    """Value codebook: the expected value at each masked position is quantized to the nearest
    token value, and the guidance is ``values[v] (y - sum q) / sigma^2`` (by hand)."""
    hmm, values, y, sigma, eta = _tiny(1), torch.tensor([0.0, 2.0, 1.0], dtype=torch.float64), 4.2, 0.7, 0.3
    canvas = _canvas(hmm)
    E, f = sum_codebook(values, y, sigma)
    out = QuantizedExpectation(hmm, E, f, step_size=eta).logits(canvas)
    logp = torch.log_softmax(hmm.logits(canvas).double().masked_fill(torch.arange(V + 1) == hmm.mask_id,
                                                                        -torch.inf), -1)
    masked = canvas == hmm.mask_id
    mean = logp.exp()[..., :V] @ values  # [B, L]
    nearest = values[(mean[..., None] - values).abs().argmin(-1)]
    q = torch.where(masked, nearest, values[canvas.clamp_max(V - 1)])
    grad = (y - q.sum(-1)) / sigma ** 2  # [B]
    want = logp[..., :V] + eta * grad[:, None, None] * values
    torch.testing.assert_close(out[..., :V][masked], want[masked], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[..., :V][~masked], logp[..., :V][~masked], rtol=0, atol=0)


def _ctx(probs, x0, candidates, decoded, k):
    return StepContext(probs=probs, x0=x0, candidates=candidates, k=torch.tensor(k), decoded=decoded)


def test_anchored_remasking_keeps_the_most_confident_and_remasks_the_rest():
    """Step 1 commits the k most confident proposals; step 2 ranks fresh proposals against the
    anchors' committed confidences, keeps ``decoded + k`` and remasks the anchors that drop out."""
    pol = AnchoredRemasking()
    pol.reset()
    x0 = torch.tensor([[0, 1, 2, 0]])
    probs = torch.zeros(1, 4, V + 1)
    conf1 = torch.tensor([0.5, 0.9, 0.3, 0.7])
    probs[0, torch.arange(4), x0[0]] = conf1
    all_m = torch.ones(1, 4, dtype=torch.bool)
    sel = pol.select(_ctx(probs, x0, all_m, torch.zeros_like(all_m), [2]))
    assert sel.commit.tolist() == [[False, True, False, True]] and not sel.remask.any()
    # step 2: positions 1, 3 are anchors (0.9, 0.7); fresh proposals at 0, 2 with 0.8, 0.95
    probs2 = torch.zeros(1, 4, V + 1)
    probs2[0, torch.arange(4), x0[0]] = torch.tensor([0.8, 0.1, 0.95, 0.1])
    masked = torch.tensor([[True, False, True, False]])
    sel = pol.select(_ctx(probs2, x0, masked, ~masked, [1]))  # keep 2 + 1 = 3 of {0.8, 0.9, 0.95, 0.7}
    assert sel.commit.tolist() == [[True, False, True, False]]
    assert sel.remask.tolist() == [[False, False, False, True]]  # the anchor at 0.7 is taken back
    torch.testing.assert_close(pol.confidence, torch.tensor([[0.8, 0.9, 0.95, 0.7]]))
    # without remasking: the k most confident masked proposals, nothing taken back
    plain = AnchoredRemasking(remask=False)
    plain.reset()
    plain.select(_ctx(probs, x0, all_m, torch.zeros_like(all_m), [2]))
    sel = plain.select(_ctx(probs2, x0, masked, ~masked, [1]))
    assert sel.commit.tolist() == [[False, False, True, False]] and sel.remask is None


def test_reward_free_anchoring_ranks_by_the_unguided_law():
    hmm = _tiny(0)
    lik = symmetric_channel_likelihood(torch.tensor([2, 2, 2, 2, 2]), V, 0.05)
    E, f = channel_codebook(lik, V)
    guided = QuantizedExpectation(hmm, E, f)
    canvas = _canvas(hmm)[:1]  # [m, 1, m, m, 0]: context makes the masked positions' laws differ
    law = torch.softmax(guided.logits(canvas), -1)
    x0 = torch.tensor([[0, 2, 2, 1, 2]])  # proposals 0 and 1 at positions 0, 3 disagree with y
    masked = canvas == hmm.mask_id
    ctx = _ctx(law, x0, masked, torch.zeros(1, L, dtype=torch.bool), [2])
    sel = AnchoredRemasking(reward_free=True, guided=guided).select(ctx)
    prior = guided.prior_logp.exp()[0].gather(-1, x0[0, :, None])[:, 0].masked_fill(~masked[0], -1.0)
    guided_rank = law[0].gather(-1, x0[0, :, None])[:, 0].masked_fill(~masked[0], -1.0)
    assert sel.commit[0].nonzero().flatten().tolist() == sorted(prior.topk(2).indices.tolist())
    assert prior.topk(2).indices.tolist() != guided_rank.topk(2).indices.tolist()  # the two rules differ here
    with pytest.raises(ValueError, match="needs the QuantizedExpectation"):
        AnchoredRemasking(reward_free=True)


def test_aps_sample_fills_every_position_and_respects_exact_constraints():
    """Every position decoded; clamped positions kept; with every position constrained to one
    token the answer is that sequence; ``n`` rows with their own streams."""
    hmm = _tiny(2)
    x = torch.tensor([2, 0, 1, 1, 0])
    lik = symmetric_channel_likelihood(x, V, 0.2) * inpainting_likelihood(x, torch.arange(L) % 2 == 0, V)
    E, f = channel_codebook(lik, V)
    canvas = clamped_canvas(hmm, lik)
    for remask in (True, False):
        out = aps_sample(hmm, E, f, 64, canvas=canvas, steps=3, seed=1, remask=remask).tokens
        assert (out != hmm.mask_id).all()
        assert (out[:, ::2] == x[::2]).all()
        assert len(set(map(tuple, out.tolist()))) > 1
    exact = inpainting_likelihood(x, torch.ones(L, dtype=torch.bool), V)
    E, f = channel_codebook(exact, V)
    out = aps_sample(hmm, E, f, 4, length=L, seed=0).tokens  # no clamping: the guidance alone pins it
    assert (out == x).all()


def test_channel_likelihood_corrupt_and_cer():
    y = torch.tensor([[0, 2, 1]])
    lik = channel_likelihood(y, 4, 0.3, erased=torch.tensor([[False, True, False]]))
    torch.testing.assert_close(lik[0, 0], torch.tensor([0.7, 0.1, 0.1, 0.1], dtype=torch.float64))
    torch.testing.assert_close(lik[0, 1], torch.ones(4, dtype=torch.float64))
    clean = torch.randint(0, 10, (200, 50), generator=torch.Generator().manual_seed(0))
    obs, erased = corrupt(clean, 10, 0.2, 0.1, generator=torch.Generator().manual_seed(1))
    flips = (obs != clean).double().mean()
    assert abs(flips - 0.2) < 4 * (0.2 * 0.8 / clean.numel()) ** 0.5  # binomial 4-sigma band
    assert abs(erased.double().mean() - 0.1) < 4 * (0.1 * 0.9 / clean.numel()) ** 0.5
    assert character_error_rate(obs, clean) == float(flips)
    with pytest.raises(ValueError, match="shapes differ"):
        character_error_rate(obs[:1], clean)


@pytest.mark.parametrize("method", ["tilt", "tilt-greedy", "aps", "aps-reward-free", "smc", "smc+rb", "loo"])
def test_restore_with_a_noiseless_channel_returns_the_observation(method):
    """eps = 0: the likelihood pins every token; each method returns the observed sequences."""
    hmm = _tiny(0)
    y = hmm.sample(3, L, generator=torch.Generator().manual_seed(4))
    out = restore(hmm, channel_likelihood(y, V, 0.0), method, seed=0, n_particles=4)
    assert torch.equal(out, y)


def test_loo_restoration_is_the_argmax_of_the_exact_conditional():
    """``loo``: position j restored to argmax_v p(x_j = v, x_{-j} = y_{-j}) lik_j(v), by the
    joint probability of the V sequences that differ from the observation at j."""
    hmm = _tiny(1)
    y = hmm.sample(4, L, generator=torch.Generator().manual_seed(5))
    lik = channel_likelihood(y, V, 0.4)
    out = restore(hmm, lik, "loo")
    for b in range(4):
        for j in range(L):
            cand = y[b].repeat(V, 1)
            cand[:, j] = torch.arange(V)
            score = hmm.log_prob(cand).double() + lik[b, j].log()
            assert out[b, j] == score.argmax()


def test_bad_input():
    hmm = _tiny(0)
    with pytest.raises(ValueError, match="unknown restore method 'x'; valid: tilt"):
        restore(hmm, torch.ones(1, L, V), "x")
    with pytest.raises(ValueError, match=r"likelihood must be \[B, L, 3\]"):
        restore(hmm, torch.ones(1, L, V + 1))
    with pytest.raises(ValueError, match=r"codebook must be a finite \[3, d\]"):
        QuantizedExpectation(hmm, torch.eye(4), lambda q: q.sum((-1, -2)))
    with pytest.raises(TypeError, match="callable"):
        QuantizedExpectation(hmm, torch.eye(3), None)
    with pytest.raises(ValueError, match="must return"):
        QuantizedExpectation(hmm, torch.eye(3), lambda q: q.sum()).logits(torch.full((2, L), hmm.mask_id))
    with pytest.raises(ValueError, match="eps"):
        channel_likelihood(torch.zeros(1, L, dtype=torch.long), V, 1.0)
    with pytest.raises(ValueError, match="token ids"):
        channel_likelihood(torch.full((1, L), V), V, 0.1)
