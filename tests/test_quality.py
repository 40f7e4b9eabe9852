"""Quality measures: known answers on real data, and the text bar on a small sample."""
import math

import pytest
import torch

from diffinfer import zoo
from diffinfer.zoo import quality
from diffinfer.zoo.data import digits
from diffinfer.zoo.recipes import digits_classifier_split

torch.set_num_threads(1)


def test_fd_digits_identities_and_ordering():
    x, _ = digits()
    assert abs(quality.fd_digits(x, x)) < 1e-6
    floor = quality.fd_digits_floor(0)
    noise = quality.fd_digits(torch.rand(500, 1, 8, 8) * 2 - 1)
    blurred = quality.fd_digits(torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1))
    assert 0 < floor < blurred < noise
    with pytest.raises(ValueError, match=r"\[N, 1, 8, 8\]"):
        quality.fd_digits(torch.zeros(4, 64))
    with pytest.raises(ValueError, match="NaN"):
        quality.fd_digits(torch.full((4, 1, 8, 8), float("nan")))


def test_classifier_accuracy_on_held_out_real_digits():
    x, y = digits()
    _, held = digits_classifier_split()
    assert quality.classifier_accuracy(x[held], y[held]) >= 0.97
    assert quality.classifier_accuracy(x[held], (y[held] + 1) % 10) <= 0.05
    with pytest.raises(ValueError, match="labels"):
        quality.classifier_accuracy(x[:3], y[:2])


def test_precision_recall_of_real_halves_and_of_a_collapsed_model():
    x, _ = digits()
    p, r = quality.digits_precision_recall(x[:898], x[898:1796])
    assert p > 0.6 and r > 0.6
    collapsed = x[:1].repeat(300, 1, 1, 1)  # one image: precise but no recall
    p_c, r_c = quality.digits_precision_recall(collapsed, x)
    assert p_c == 1.0 and r_c < 0.05


def test_generative_perplexity_orders_real_shuffled_and_uniform_text():
    ar = zoo.load("shakespeare-ar")
    real = quality.heldout_windows(8, 256, seed=0)
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([row[torch.randperm(256, generator=g)] for row in real])
    ppl_real, ppl_shuffled = quality.generative_perplexity(real), quality.generative_perplexity(shuffled)
    # real text beats a uniform guess over the characters; shuffled text is worse than real
    assert 1.0 < ppl_real < ar.vocab_size - 1 and ppl_real < 0.5 * ppl_shuffled
    # shuffling keeps the characters, so the unigram entropy is unchanged
    assert quality.unigram_entropy(real) == pytest.approx(quality.unigram_entropy(shuffled), abs=1e-12)
    assert quality.unigram_entropy(torch.full((2, 64), 5)) == 0.0
    with pytest.raises(ValueError, match="mask"):
        quality.ar_nll(torch.full((1, 8), ar.mask_id))


def test_text_samples_are_seeded_per_row():
    mdm = zoo.load("shakespeare-char")
    a = quality.sample_text(mdm, n=3, length=24, seed=5, batch=3)
    b = quality.sample_text(mdm, n=3, length=24, seed=5, batch=2)
    assert torch.equal(a, b) and not bool((a == mdm.mask_id).any())


@pytest.fixture(scope="module")
def text_reports():
    """Both decoding orders of the bundled model on the same 8 seeds (one token per step)."""
    return {order: quality.text_report(quality.sample_text(n=8, seed=1, order=order), n_reference=32)
            for order in ("random", "left-to-right")}


@pytest.mark.parametrize("order", ["random", "left-to-right"])
def test_shakespeare_char_unigram_entropy_bar(text_reports, order):
    """Unigram entropy within 5% of held-out text (3 points of slack for 8 samples)."""
    report = text_reports[order]
    assert report["entropy_rel_diff"] <= 0.08, report
    assert math.isfinite(report["gen_ppl"]) and report["gen_ppl"] > report["heldout_ppl"] * 0.5


def test_shakespeare_char_perplexity_bar(text_reports):
    """Generative perplexity of left-to-right samples <= 1.5x the held-out text's (10% slack
    for 8 samples); random order, the model's exact law, is far above it (model card)."""
    assert text_reports["left-to-right"]["ppl_ratio"] <= 1.5 * 1.1, text_reports
    assert text_reports["random"]["ppl_ratio"] > text_reports["left-to-right"]["ppl_ratio"], text_reports


def test_sample_text_orders():
    mdm = zoo.load("shakespeare-char")
    with pytest.raises(ValueError, match="left-to-right"):
        quality.sample_text(mdm, n=1, length=8, order="backwards")
    seen = []
    tokens = quality.sample_text(mdm, n=2, length=12, seed=3, order="left-to-right")
    assert not bool((tokens == mdm.mask_id).any())
    # left-to-right: position k is decided at step k (checked through decode's callback)
    from diffinfer.mdm.decode import decode
    decode(mdm, length=12, policy="random", batch=1, seed=(3, [0]), block=1,
           callback=lambda step, tokens, info: seen.append((tokens[0] != mdm.mask_id).nonzero().flatten().tolist()))
    assert seen == [list(range(k + 1)) for k in range(12)]


@pytest.mark.parametrize("order", ["entropy", "low-confidence"])
def test_sample_text_score_orders_unmask_one_token_per_step(order, monkeypatch):
    """Dream's entropy and LLaDA's confidence orders: ``length`` steps, one new token each."""
    import sys
    decode_module = sys.modules["diffinfer.mdm.decode"]  # the package re-exports the function under that name
    mdm, counts = zoo.load("shakespeare-char"), []
    real_decode = decode_module.decode

    def spy(*args, **kw):
        assert kw["policy"] == order and kw["steps"] == 10
        return real_decode(*args, **kw, callback=lambda step, tokens, info: counts.append(
            int((tokens != mdm.mask_id).sum(-1).min())))
    monkeypatch.setattr(decode_module, "decode", spy)
    tokens = quality.sample_text(mdm, n=2, length=10, seed=1, order=order)
    assert tokens.shape == (2, 10) and not bool((tokens == mdm.mask_id).any())
    assert counts == list(range(1, 11))


def test_mdm_elbo_is_below_unigram_entropy_and_orders_text():
    """The bundled model's held-out ELBO beats a unigram model (it uses context) and is
    lower on real text than on the same characters shuffled."""
    mdm = zoo.load("shakespeare-char")
    real = quality.heldout_windows(8, 128, seed=4)
    shuffled = real.flatten()[torch.randperm(real.numel(), generator=torch.Generator().manual_seed(0))].view_as(real)
    elbo_real, elbo_shuffled = quality.mdm_elbo(mdm, real, draws=4), quality.mdm_elbo(mdm, shuffled, draws=4)
    assert elbo_real < quality.unigram_entropy(real) < elbo_shuffled, (elbo_real, elbo_shuffled)


def test_ar_nll_start_skips_a_prompt():
    """Characters before ``start`` are left out: with a causal scorer, the full NLL sum splits
    exactly into the prompt's (scored on its own) and the rest's."""
    t, s = quality.heldout_windows(3, 40, seed=2), 9
    L = t.shape[1]
    whole, rest, prompt = quality.ar_nll(t), quality.ar_nll(t, start=s), quality.ar_nll(t[:, :s])
    torch.testing.assert_close((L - 1) * whole, (L - s) * rest + (s - 1) * prompt, rtol=1e-6, atol=1e-5)  # float32 net
    with pytest.raises(ValueError, match="start"):
        quality.ar_nll(t, start=L)
