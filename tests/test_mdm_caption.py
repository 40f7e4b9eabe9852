"""Captioning with a conditional masked-diffusion model and LaDiC's Back&Refine (issue 18, item 5).

Exact checks first: on the noisy-label caption oracle (``toys.CaptionOracle``) the caption law
of every decoder below is known in closed form, and tolerances come from the spread of exact
multinomial sample sets of the same size (the largest TV of 400 exact sets, seeds fixed)."""
import pytest
import torch

from diffinfer.mdm import Conditioned, back_and_refine, decode, leave_one_out_confidence
from diffinfer.toys.caption_oracle import CaptionOracle
from diffinfer.zoo import caption_digits as cd

N = 3000  # captions per image in the law tests


def _oracle(weights):
    return CaptionOracle(cd.caption_tokens(torch.arange(10)), weights, n_states=cd.VOCAB.mask_id)


def _law(tokens, images, oracle):
    """``[images, 11]``: the empirical law over the ten captions and "no caption" (last)."""
    idx = oracle.caption_index(tokens).reshape(images, -1)
    idx = torch.where(idx < 0, torch.full_like(idx, 10), idx)
    return torch.nn.functional.one_hot(idx, 11).double().mean(1)


def _floor(law, n, sets=400, seed=123):
    """The largest TV between ``law`` ``[11]`` and the empirical law of ``n`` exact draws, over ``sets``."""
    g = torch.Generator().manual_seed(seed)
    draws = torch.multinomial(law.float().expand(sets, -1), n, replacement=True, generator=g)
    emp = torch.nn.functional.one_hot(draws, law.numel()).double().mean(1)
    return float(0.5 * (emp - law).abs().sum(-1).max())


def _product_law(oracle, weights):
    """The exact caption law of decoding all tokens at once from the first call's marginals."""
    marg = oracle.conditionals(torch.full((len(weights), cd.LENGTH), oracle.mask_id))  # [R, L, V]
    caps = oracle.captions  # [K, L]
    p = marg[:, torch.arange(cd.LENGTH)[None, :], caps].prod(-1)  # [R, K]
    return torch.cat([p, 1 - p.sum(-1, keepdim=True)], -1)


def _tv(a, b):
    return 0.5 * (a - b).abs().sum(-1)


def _decode_law(weights, seed, **kwargs):
    R = len(weights)
    oracle = _oracle(weights.repeat_interleave(N, 0))
    out = decode(oracle, length=cd.LENGTH, batch=R * N, seed=seed, **kwargs)
    return out, oracle


def _exact_weights(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(3, 10, generator=g, dtype=torch.float64) ** 3  # peaked, uneven label laws
    return w / w.sum(-1, keepdim=True)


# --- exact: the decoders' caption laws against closed forms ------------------------------------
def test_deterministic_oracle_writes_every_name_through_the_row_protocol():
    """One label per row (a point-mass law): every policy, step count and the reuse cache must
    write exactly the label's name; ancestral + reuse evaluates only some rows per call, so a
    model that ignored ``rows`` would read the wrong row's law (or fail)."""
    labels = torch.arange(40) % 10
    oracle = _oracle(torch.nn.functional.one_hot(labels, 10).double())
    for policy, steps, cache in [("ancestral", 5, "reuse"), ("random", 3, "reuse"), ("low-confidence", 1, None),
                                 ("threshold", None, "reuse")]:
        out = decode(oracle, length=cd.LENGTH, batch=40, policy=policy, steps=steps, cache=cache, seed=0)
        assert torch.equal(cd.caption_digits(out.tokens), labels), (policy, steps, cache)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_order_one_token_per_step_samples_the_exact_caption_law(seed):
    w = _exact_weights(seed)
    out, oracle = _decode_law(w, seed, policy="random", steps=cd.LENGTH)
    emp = _law(out.tokens, len(w), oracle)
    exact = torch.cat([w, torch.zeros(len(w), 1, dtype=w.dtype)], -1)
    for r in range(len(w)):
        assert _tv(emp[r], exact[r]) <= _floor(exact[r], N), (r, float(_tv(emp[r], exact[r])))


@pytest.mark.parametrize("seed", [0, 1])
def test_all_tokens_at_once_samples_the_product_of_marginals(seed):
    """One step draws each position from its first-call marginal: the closed-form product law,
    which puts mass on non-names and is far (> 4 floors) from the caption law."""
    w = _exact_weights(seed)
    out, oracle = _decode_law(w, seed, policy="random", steps=1)
    emp = _law(out.tokens, len(w), oracle)
    prod = _product_law(_oracle(w), w)
    exact = torch.cat([w, torch.zeros(len(w), 1, dtype=w.dtype)], -1)
    for r in range(len(w)):
        assert _tv(emp[r], prod[r]) <= _floor(prod[r], N), r
        assert _tv(emp[r], exact[r]) > 4 * _floor(exact[r], N), r


def test_leave_one_out_confidence_is_the_exact_conditional():
    w = _exact_weights(2)
    oracle = _oracle(w)
    g = torch.Generator().manual_seed(0)
    tokens = cd.caption_tokens(torch.randint(0, 10, (3,), generator=g))
    tokens[1, 4] = cd.VOCAB.encode("e")[0]  # "xxxxe": not every canvas is a name
    region = torch.ones_like(tokens, dtype=torch.bool)
    got = leave_one_out_confidence(oracle, tokens, region)
    caps = oracle.captions
    for b in range(3):
        for i in range(cd.LENGTH):
            others = [j for j in range(cd.LENGTH) if j != i]
            agree = (caps[:, others] == tokens[b, others]).all(-1)  # [K]
            hit = agree & (caps[:, i] == tokens[b, i])
            if not (w[b] * agree).sum() > 0:  # off the support: the unconditional law
                agree = torch.ones_like(agree)
                hit = caps[:, i] == tokens[b, i]
            want = (w[b] * hit).sum() / (w[b] * agree).sum()
            assert got[b, i].item() == pytest.approx(want.item(), abs=1e-12), (b, i)


@pytest.mark.parametrize("seed", [0, 1])
def test_back_and_refine_with_a_random_block_keeps_the_exact_law(seed):
    """A round that masks a block chosen without looking at the tokens and redraws it one token
    at a time from exact conditionals is a block-Gibbs step: exact samples stay exact."""
    w = _exact_weights(seed)
    out, oracle = _decode_law(w, seed, policy="random", steps=cd.LENGTH)
    ref = back_and_refine(oracle, out, count=3, select="random", policy="random", temperature=1.0, seed=seed + 7,
                          rounds=2)
    assert ref.remasked.any(-1).all() and (ref.remasked.sum(-1) >= 3).all()
    emp = _law(ref.tokens, len(w), oracle)
    exact = torch.cat([w, torch.zeros(len(w), 1, dtype=w.dtype)], -1)
    for r in range(len(w)):
        assert _tv(emp[r], exact[r]) <= _floor(exact[r], N), r


def test_back_and_refine_by_confidence_repairs_one_step_captions():
    """From the one-step product law, backing the two least certain characters and refining them
    one by one (greedy) turns every non-name into a name; on a point-mass law it changes nothing."""
    w = _exact_weights(0)
    out, oracle = _decode_law(w, 0, policy="random", steps=1)
    before = (oracle.caption_index(out.tokens) >= 0).double().mean()
    ref = back_and_refine(oracle, out, count=2, policy="low-confidence", temperature=0.0, seed=0)
    after = (oracle.caption_index(ref.tokens) >= 0).double().mean()
    assert before < 0.9 and after > before
    # the backed characters are each row's two least confident (exact leave-one-out scores, checked above)
    assert (ref.remasked.sum(-1) == 2).all()
    backed_max = ref.scores.masked_fill(~ref.remasked, -1.0).max(-1).values
    kept_min = ref.scores.masked_fill(ref.remasked, 2.0).min(-1).values
    assert (backed_max <= kept_min).all()
    labels = torch.arange(10)
    point = _oracle(torch.nn.functional.one_hot(labels, 10).double())
    out = decode(point, length=cd.LENGTH, batch=10, steps=1, seed=0)
    ref = back_and_refine(point, out, count=2, seed=0)
    assert torch.equal(ref.tokens, out.tokens) and ref.nfe == 1 + 2


# --- the binding and its errors ---------------------------------------------------------------
def test_conditioned_binds_rows_and_refuses_bad_input():
    fn = lambda tok, cond: torch.nn.functional.one_hot(cond[:, None].expand(-1, tok.shape[1]), 4).float()  # noqa: E731
    m = Conditioned(fn, torch.tensor([0, 1, 2]), mask_id=3, vocab_size=4)
    tok = torch.full((2, 5), 3)
    assert m.logits(tok, rows=torch.tensor([2, 0]))[:, 0].argmax(-1).tolist() == [2, 0]
    with pytest.raises(ValueError, match="2 canvases for 3 bound conditions"):
        m.logits(tok)
    with pytest.raises(ValueError, match=r"row indices must lie in \[0, 3\)"):
        m.logits(tok, rows=torch.tensor([0, 3]))
    assert m.select(torch.tensor([1])).cond.tolist() == [1]
    with pytest.raises(ValueError, match="NaN or Inf"):
        Conditioned(fn, torch.tensor([[float("nan")]]), 3, 4)
    bad = Conditioned(lambda tok, cond: torch.full((*tok.shape, 4), float("nan")), torch.zeros(1), 3, 4)
    with pytest.raises(ValueError, match="NaN logits"):
        bad.logits(tok)
    out = decode(m, length=4, batch=3, seed=0)
    assert out.tokens.tolist() == [[0] * 4, [1] * 4, [2] * 4]

    class WithCache(Conditioned):
        supports_kv_cache = True
    with pytest.raises(ValueError, match="does not pass row indices"):  # the KV path would ignore rows
        decode(WithCache(fn, torch.tensor([0, 1, 2]), 3, 4), length=4, batch=3, cache="prefix")


def test_back_and_refine_refuses_bad_input():
    oracle = _oracle(torch.full((1, 10), 0.1, dtype=torch.float64))
    out = decode(oracle, length=cd.LENGTH, batch=2, seed=0)
    with pytest.raises(ValueError, match="unknown select 'worst'; valid: confidence, random"):
        back_and_refine(oracle, out, select="worst")
    with pytest.raises(ValueError, match="rounds must be"):
        back_and_refine(oracle, out, rounds=0)
    with pytest.raises(ValueError, match="fraction must lie"):
        back_and_refine(oracle, out, fraction=1.5)
    with pytest.raises(ValueError, match="decode it fully first"):
        leave_one_out_confidence(oracle, torch.full((1, 5), oracle.mask_id), torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="give region"):
        back_and_refine(oracle, out.tokens)


def test_caption_tokens_round_trip_and_refuse_bad_labels():
    labels = torch.arange(10)
    assert torch.equal(cd.caption_digits(cd.caption_tokens(labels)), labels)
    assert cd.VOCAB.decode(cd.caption_tokens(torch.tensor([7]))[0]) == "seven"
    assert cd.VOCAB.decode(cd.caption_tokens(torch.tensor([1]))[0]) == "one__"
    with pytest.raises(ValueError, match="0..9"):
        cd.caption_tokens(torch.tensor([10]))


# --- the trained model --------------------------------------------------------------------------
def test_training_recipe_runs_and_the_checkpoint_round_trips(tmp_path):
    torch.set_num_threads(1)
    path, config = cd.save_digits_caption(tmp_path / "c.safetensors", steps=20, progress=False)
    model = cd.load_digits_caption(path)
    x, _ = cd.heldout_digits()
    tok, nfe = cd.caption(model, x[:8], steps=cd.LENGTH)
    assert tok.shape == (8, cd.LENGTH) and nfe == cd.LENGTH and config["steps"] == 20
    again, _, _ = cd.train_digits_caption(steps=20)  # the recipe is seeded: a retrain is bitwise the same
    assert all(torch.equal(a, b) for a, b in zip(model.net.state_dict().values(), again.net.state_dict().values()))


#: the bar for the bundled model on the 180 held-out digits (one token per step, greedy);
#: the clean digits-classifier's own held-out accuracy (0.989) is the ceiling
EXACT_MATCH_BAR = 0.93


def test_bundled_caption_model_on_held_out_digits():
    """Exact match above the bar with one token per step; Back&Refine (two characters, greedy)
    never lowers exact match at any step count; the classifier agrees with the captions."""
    from diffinfer import zoo
    model = cd.load_digits_caption()
    x, y = cd.heldout_digits()
    clf = zoo.load("digits-classifier").predict(x)
    for steps in (1, 2, 3, cd.LENGTH):
        plain = cd.caption_digits(cd.caption(model, x, steps=steps)[0])
        refined = cd.caption_digits(cd.caption(model, x, steps=steps, refine={"count": 2})[0])
        assert (refined == y).double().mean() >= (plain == y).double().mean(), steps
    exact = (plain == y).double().mean().item()
    assert exact >= EXACT_MATCH_BAR, exact
    assert (plain == clf).double().mean().item() >= EXACT_MATCH_BAR
