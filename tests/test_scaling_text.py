"""Text SMC over masked-diffusion decoding reaches the exact tilted law of a Markov chain
(enumerated: 3 states, length 6); text verifiers and best-of-N."""
import itertools
import re

import pytest
import torch

from diffinfer.scaling.text import (ARLogLikelihood, KeywordScore, RegexScore, TokenCount, text_best_of_n,
                                    text_smc)
from diffinfer.toys.markov_chain import MarkovChain

L, LAM = 6, 0.7


def _chain():
    return MarkovChain(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.3, 0.1, 0.6]], dtype=torch.float64))


def _exact_count_law(chain, lam):
    """The law of the number of zeros under ``P(x) exp(lam * count_0(x))`` by enumeration."""
    allx = torch.tensor(list(itertools.product(range(3), repeat=L)))
    c = (allx == 0).sum(1)
    p = torch.softmax(chain.log_prob(allx) + lam * c, 0)
    return torch.zeros(L + 1, dtype=torch.float64).index_add_(0, c, p)


@pytest.mark.parametrize("seed,tokens_per_step,ess", [(0, 1, 0.5), (1, 1, 1.0)])
def test_text_smc_reaches_the_exact_tilted_law(seed, tokens_per_step, ess):
    chain = _chain()
    res = text_smc(chain, TokenCount(0), 3000, L, lam=LAM, tokens_per_step=tokens_per_step,
                   ess_threshold=ess, seed=seed)
    emp = torch.bincount((res.x == 0).sum(1), minlength=L + 1).double() / 3000
    exact = _exact_count_law(chain, LAM)
    assert float((emp - exact).abs().max()) < 0.03, (emp, exact)
    base = _exact_count_law(chain, 0.0)
    assert float((exact - base).abs().max()) > 0.1  # the tilt matters
    assert res.nfe == 3000 * L and res.verifier_calls == 3000 * L


def test_text_best_of_n_keeps_the_best():
    chain = _chain()
    res = text_best_of_n(chain, TokenCount(0), 32, L, seed=0)
    assert float(res.reward) == float(res.info["all_rewards"].max()) == float(TokenCount(0)(res.x))
    assert res.verifier_calls == 32 and res.nfe > 0


def test_text_best_of_n_with_a_prompt_decodes_n_candidates():
    """One prompt is repeated over the ``n`` rows (it once decoded a single canvas)."""
    chain = _chain()
    res = text_best_of_n(chain, TokenCount(0), 8, L, prompt=[1, 2], seed=0)
    assert res.info["all_rewards"].shape == (8,) and res.verifier_calls == 8
    assert res.x.shape == (1, L + 2) and res.x[0, :2].tolist() == [1, 2]


def test_text_verifiers():
    vocab = "abc "
    decode = lambda ids: "".join(vocab[i] for i in ids)  # noqa: E731
    tokens = torch.tensor([[0, 1, 3, 0, 1], [2, 2, 2, 3, 3]])
    assert RegexScore(r"ab", decode)(tokens).tolist() == [2.0, 0.0]
    assert KeywordScore(["cc", "a"], decode)(tokens).tolist() == [2.0, 1.0]

    class Uniform:
        def logits(self, t):
            return torch.zeros(t.shape[0], t.shape[1], 4)

    ll = ARLogLikelihood(Uniform())(tokens)
    assert torch.allclose(ll, torch.full((2,), -torch.log(torch.tensor(4.0)).item(), dtype=torch.float64))
    with pytest.raises(ValueError, match="valid: difference"):
        text_smc(_chain(), TokenCount(0), 4, L, potential="x")


def test_bundled_text_models():
    from diffinfer import zoo
    try:
        mdm, ar = zoo.load("shakespeare-char"), zoo.load("shakespeare-ar")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"bundled text checkpoints not available: {e}")
    verifier = KeywordScore(["the", "love"], mdm.decode)
    plain = verifier(text_best_of_n(mdm, verifier, 1, 32, seed=0).x)
    res = text_smc(mdm, verifier, 16, 32, lam=2.0, tokens_per_step=4, seed=0)
    assert res.x.shape == (16, 32) and float(res.reward.max()) >= float(plain)
    assert torch.isfinite(ARLogLikelihood(ar)(res.x)).all()


def test_run_text_sizes_each_method_to_the_budget_exactly():
    from diffinfer.scaling.text import decoding_plan, run_text
    assert decoding_plan(30, 8) == (4, 8) and decoding_plan(32, 20) == (2, 16) and decoding_plan(6, 3) == (2, 3)
    chain = _chain()
    bon = run_text("best-of-n", chain, TokenCount(0), 70, L, steps=3, seed=0)  # N = 70 // 4 = 17
    assert (bon.nfe, bon.verifier_calls) == (17 * 3, 17) and bon.info["all_rewards"].shape == (17,)
    smc = run_text("smc", chain, TokenCount(0), 70, L, steps=3, seed=0)  # N = 70 // 6 = 11
    assert (smc.nfe, smc.verifier_calls) == (11 * 3, 11 * 3) and smc.x.shape == (11, L)
    with pytest.raises(ValueError, match="valid: best-of-n, smc"):
        run_text("dts", chain, TokenCount(0), 70, L)
    with pytest.raises(ValueError, match="below one smc sample"):
        run_text("smc", chain, TokenCount(0), 5, L, steps=3)


def test_get_text_verifier_parses_the_cli_specs():
    from diffinfer.scaling.text import get_text_verifier
    decode = lambda ids: "".join("ab "[i] for i in ids)  # noqa: E731
    tokens = torch.tensor([[0, 1, 2, 0, 1], [1, 1, 1, 2, 2]])
    assert get_text_verifier("regex:a.", decode)(tokens).tolist() == [2.0, 0.0]
    assert get_text_verifier("keyword:ab,bb", decode)(tokens).tolist() == [2.0, 1.0]  # "bbb": one, not overlapping
    for bad, msg in [("nope", "valid: regex:PATTERN"), ("regex:", "non-empty pattern"), ("keyword:,", "at least one"),
                     ("regex:(", "bad regular expression")]:
        with pytest.raises(ValueError, match=re.escape(msg) if "(" in msg else msg):
            get_text_verifier(bad, decode)
