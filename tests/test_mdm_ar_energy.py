"""An autoregressive model as EDLM's energy (mdm.ar_prefix_energy): exact prefix
log-probabilities on exact oracles, the fast candidate scoring against whole rows, decoding
that converges to the oracle's joint law, the prefix-shape check, the text energy against
zoo.quality.ar_nll, and the CLI's cost accounting."""
import json

import pytest
import torch

from diffinfer.cli import main
from diffinfer.mdm import ARCompletedReweighting, EnergyReweighting, ar_prefix_energy, decode
from diffinfer.mdm.ar_energy import prefix_lengths
from diffinfer.mdm.reweighting import _draw_columns
from diffinfer.metrics import total_variation
from diffinfer.nets.char_transformer import CharTransformer
from diffinfer.rng import make_rng
from diffinfer.toys import CausalOracle, HiddenMarkovModel, MarkovChain
from sequence_laws import empirical_law, exact_law, exact_sets_floor

torch.set_num_threads(1)
V, L, N = 3, 4, 4000


def _hmm():
    return HiddenMarkovModel([[0.9, 0.1], [0.15, 0.85]], [[0.8, 0.15, 0.05], [0.05, 0.15, 0.8]])


def _prefix_canvases(oracle, n, length, seed):
    """Exact samples with a random prefix length in [0, length] each (the rest masked)."""
    g = torch.Generator().manual_seed(seed)
    x = oracle.sample(n, length, generator=g)
    keep = torch.randint(0, length + 1, (n,), generator=g)
    return torch.where(torch.arange(length)[None] < keep[:, None], x, torch.full_like(x, oracle.mask_id)), keep


@pytest.mark.parametrize("oracle", [_hmm(), HiddenMarkovModel.random(3, 5, seed=1), MarkovChain.random(4, seed=2)],
                         ids=["hmm", "hmm-random", "chain"])
def test_prefix_energy_is_the_exact_prefix_log_probability(oracle):
    """With the first token's law, the energy is the oracle's exact marginal log-probability of
    the unmasked prefix (forward algorithm); without it, that minus log P(x_0)."""
    x, keep = _prefix_canvases(oracle, 64, 7, seed=0)
    ar = CausalOracle(oracle)
    exact = HiddenMarkovModel.log_marginal(oracle, x) if isinstance(oracle, HiddenMarkovModel) else torch.stack(
        [oracle.log_prob(r[None, :int(k)])[0] if k else torch.zeros((), dtype=torch.float64) for r, k in zip(x, keep)])
    e = ar_prefix_energy(ar, initial=ar.initial)(x)
    assert torch.allclose(e, exact, rtol=0, atol=1e-12)
    assert bool((prefix_lengths(x, oracle.mask_id) == keep).all())
    cond = ar_prefix_energy(ar)(x)
    zero = torch.zeros((), dtype=torch.float64)
    first = torch.where(keep > 0, ar.initial[x[:, 0].clamp_max(oracle.n_states - 1)], zero)
    assert torch.allclose(cond, exact - first, rtol=0, atol=1e-12)


@pytest.mark.parametrize("oracle", [HiddenMarkovModel.random(3, 5, seed=1), MarkovChain.random(4, seed=2)],
                         ids=["hmm", "chain"])
def test_causal_oracle_is_the_conditional_with_the_future_masked(oracle):
    """CausalOracle (forward filtering) against the oracle's own forward-backward conditional
    at i+1 with every position after i masked, on canvases that hold masks too."""
    g = torch.Generator().manual_seed(6)
    x = oracle.sample(16, 6, generator=g)
    x = torch.where(torch.rand(x.shape, generator=g) < 0.2, torch.full_like(x, oracle.mask_id), x)
    got = CausalOracle(oracle).logits(x)  # [16, 6, V+1]
    for i in range(5):
        canvas = x.clone()
        canvas[:, i + 1:] = oracle.mask_id
        want = oracle.conditionals(canvas)[:, i + 1].log()
        assert torch.allclose(got[:, i, :-1], want, rtol=0, atol=1e-12)
    assert bool((got[..., -1] == -torch.inf).all())


class _TinyAR:
    """A random causal CharTransformer in float64 answering the causal-model protocol."""

    def __init__(self, seed=0, vocab=7):
        torch.manual_seed(seed)
        self.net = CharTransformer(vocab, d_model=16, n_layers=2, n_heads=2, max_len=32, causal=True).double().eval()
        self.mask_id, self.vocab_size, self.causal = vocab - 1, vocab, True

    def logits(self, tokens):
        with torch.no_grad():
            return self.net(tokens)


def test_candidate_scoring_with_a_shared_prefix_equals_whole_rows():
    """score_candidates (the prefix once per row, the K windows attending to its keys and values,
    the prefix extended from the previous call) equals scoring every filled row, in float64 to
    round-off; also with an empty prefix and a one-token window."""
    ar = _TinyAR()
    energy = ar_prefix_energy(ar)
    g = torch.Generator().manual_seed(3)
    n, K, Lc = 3, 5, 20
    tokens = torch.full((n, Lc), ar.mask_id)
    for start, width in [(0, 4), (4, 4), (8, 1), (9, 6), (15, 5)]:  # consecutive blocks: the memo extends
        drawn = torch.zeros(n, Lc, dtype=torch.bool)
        drawn[:, start:start + width] = True
        filled = tokens[:, None].repeat(1, K, 1)
        filled[:, :, start:start + width] = torch.randint(0, ar.mask_id, (n, K, width), generator=g)
        fast = energy.score_candidates(tokens, filled, drawn)
        slow = energy(filled.reshape(-1, Lc)).reshape(n, K)
        assert torch.allclose(fast, slow, rtol=0, atol=1e-11), (start, (fast - slow).abs().max())
        if start:  # the next-token law after each candidate (ARCompletedReweighting's last token)
            lp, nxt = energy.score_and_next(tokens, filled)
            want = energy._next_generic(filled.reshape(-1, Lc)).reshape(n, K, -1)
            assert torch.allclose(lp, slow, rtol=0, atol=1e-11)
            assert torch.allclose(nxt, want, rtol=0, atol=1e-11)
            _, at_prefix = energy.score_and_next(tokens, tokens[:, None].repeat(1, K, 1))  # empty window
            assert torch.allclose(at_prefix, energy._next_generic(tokens)[:, None].expand(n, K, -1), rtol=0, atol=1e-11)
        tokens = filled[:, 1].clone()
    # a prefix that does not extend the memo (different rows) is recomputed, not reused
    other = torch.randint(0, ar.mask_id, (n, Lc), generator=g)
    other[:, 10:] = ar.mask_id
    drawn = torch.zeros(n, Lc, dtype=torch.bool)
    drawn[:, 10:12] = True
    filled = other[:, None].repeat(1, K, 1)
    filled[:, :, 10:12] = torch.randint(0, ar.mask_id, (n, K, 2), generator=g)
    assert torch.allclose(energy.score_candidates(other, filled, drawn),
                          energy(filled.reshape(-1, Lc)).reshape(n, K), rtol=0, atol=1e-11)


def test_each_scoring_call_is_one_network_pass():
    """The energy call EDLM counts is one evaluation of the AR network: the tokens committed
    since the previous call (the whole prompt on the first) are evaluated in the candidates'
    pass, never in a separate one; the scores still equal whole-row scoring."""
    ar = _TinyAR(seed=1)
    passes = []
    embed = ar.net._embed
    ar.net._embed = lambda *a, **k: (passes.append(1), embed(*a, **k))[1]
    energy = ar_prefix_energy(ar)
    g = torch.Generator().manual_seed(5)
    n, K, Lc = 2, 4, 16
    tokens = torch.full((n, Lc), ar.mask_id)
    tokens[:, :3] = torch.randint(0, ar.mask_id, (n, 3), generator=g)  # a prompt
    for start in (3, 7, 11):  # blocks of 4: 3 candidates + the AR-completed token
        filled = tokens[:, None].repeat(1, K, 1)
        filled[:, :, start:start + 3] = torch.randint(0, ar.mask_id, (n, K, 3), generator=g)
        before = len(passes)
        lp, _ = energy.score_and_next(tokens, filled)
        assert len(passes) - before == 1, start
        assert torch.allclose(lp, energy(filled.reshape(-1, Lc)).reshape(n, K), rtol=0, atol=1e-11)
        tokens = filled[:, 2].clone()
        tokens[:, start + 3] = 0  # the AR-completed last token of the block, committed too


def _law(tokens, length=L):
    return empirical_law(tokens[:, :length], V)


def _exact_law(hmm, length=L):
    return exact_law(hmm, V, length)


def _floor(hmm, reps=6):
    """The largest TV of ``reps`` exact sample sets of size N to the exact law."""
    return exact_sets_floor(hmm, V, L, N, reps)


@pytest.mark.parametrize("draw", ["all", "columns"])
def test_block_decoding_under_the_oracle_energy_reaches_the_oracle_joint(draw):
    """Two tokens per masked-model call (blocks of 2, one block per step) from a *wrong* masked
    model (a Markov chain with its own law): without reweighting the decode is far from the
    HMM's joint; with the HMM's AR view as the prefix energy and 256 candidates it lands within
    the spread of exact sample sets, and TV falls as K grows (4, 32, 256)."""
    hmm = _hmm()
    proposal = MarkovChain.random(V, seed=4)
    exact, floor = _exact_law(hmm), _floor(hmm)
    ar = CausalOracle(hmm)
    plain = decode(proposal, length=L, batch=N, policy="random", block=2, steps=2, seed=0)
    assert total_variation(_law(plain.tokens), exact) > 4 * floor
    tv = []
    for K in ((4, 32, 256) if draw == "columns" else (256,)):
        rw = EnergyReweighting(ar_prefix_energy(ar, initial=ar.initial), particles=K, draw=draw)
        r = decode(proposal, length=L, batch=N, policy="random", block=2, steps=2, seed=0, reweight=rw)
        assert r.nfe == 2 and r.energy_calls == 2 and r.energy_rows == 2 * N * K and r.tokens_per_nfe == 2
        tv.append(total_variation(_law(r.tokens), exact))
    assert tv == sorted(tv, reverse=True) and len(set(tv)) == len(tv), tv  # strictly falling
    assert tv[-1] <= 1.5 * floor, (tv, floor)


@pytest.mark.parametrize("block", [2, 4])
def test_ar_completion_reaches_the_oracle_joint(block):
    """ARCompletedReweighting: the wrong masked model draws a block's first k-1 tokens, the
    oracle's AR view reweights them and draws the last exactly. One candidate is off (the
    reweighting does nothing), 256 land within the spread of exact sample sets, TV falls with K;
    one model call and one energy call per block."""
    hmm = _hmm()
    proposal = MarkovChain.random(V, seed=4)
    exact, floor = _exact_law(hmm), _floor(hmm)
    ar = CausalOracle(hmm)
    tv = []
    for K in (1, 16, 256):
        rw = ARCompletedReweighting(ar_prefix_energy(ar, initial=ar.initial), particles=K, draw="columns")
        r = decode(proposal, length=L, batch=N, policy="random", block=block, steps=L // block, seed=0, reweight=rw)
        assert r.nfe == L // block and r.energy_calls == L // block and r.energy_rows == N * K * (L // block)
        tv.append(total_variation(_law(r.tokens), exact))
    assert tv[0] > 4 * floor, (tv, floor)
    assert tv == sorted(tv, reverse=True) and len(set(tv)) == len(tv), tv
    assert tv[-1] <= 1.5 * floor, (tv, floor)


def test_ar_completion_bad_input():
    hmm = _hmm()
    ar = CausalOracle(hmm)
    with pytest.raises(TypeError, match="ARPrefixEnergy"):
        ARCompletedReweighting(hmm.log_marginal)
    with pytest.raises(ValueError, match="proposal='commit'"):
        ARCompletedReweighting(ar_prefix_energy(ar), proposal="full")
    rw = ARCompletedReweighting(ar_prefix_energy(ar, initial=ar.initial), particles=4)
    with pytest.raises(ValueError, match="commit the block right after the unmasked prefix"):
        decode(hmm, length=L, batch=4, policy="random", block=4, steps=2, seed=0, reweight=rw)


def test_draw_columns_has_the_proposal_law():
    """The inverse-CDF draws at the filled columns follow the factorised law (TV within the
    spread of exact multinomial draws of the same size) and never pick a zero-probability token."""
    g = torch.Generator().manual_seed(5)
    B, Lc, Vc, K = 2, 5, 6, 20000
    logits = torch.randn(B, Lc, Vc, generator=g, dtype=torch.float64)
    logits[..., -1] = -torch.inf  # the mask token
    logp = logits.log_softmax(-1)
    drawn = torch.zeros(B, Lc, dtype=torch.bool)
    drawn[0, 1:3] = True
    drawn[1, 2] = True
    tokens = torch.full((B, Lc), Vc - 1)
    cand = _draw_columns(logp, drawn, tokens, K, make_rng(0, B, "cpu"))  # [B, K, Lc]
    assert bool((cand[:, :, [0, 3, 4]] == Vc - 1).all())  # untouched columns keep the canvas
    for b, j in [(0, 1), (0, 2), (1, 2), (1, 1)]:  # (1, 1): a column row 0 fills is drawn for row 1 too
        p = logp[b, j].exp()
        emp = torch.bincount(cand[b, :, j], minlength=Vc).double() / K
        assert emp[-1] == 0
        floor = max(total_variation(torch.bincount(torch.multinomial(p, K, True, generator=g), minlength=Vc).double()
                                    / K, p) for _ in range(6))
        assert total_variation(emp, p) <= 1.5 * floor


def test_a_canvas_that_is_not_prefix_shaped_raises():
    ar = CausalOracle(_hmm())
    energy = ar_prefix_energy(ar)
    m = ar.mask_id
    with pytest.raises(ValueError, match="prefix-shaped.*row 1 has position 1 masked and position 2 unmasked"):
        energy(torch.tensor([[0, 1, m, m], [0, m, 2, m]]))
    # random positions inside a block (two steps per block) break the prefix shape
    with pytest.raises(ValueError, match="prefix-shaped"):
        decode(MarkovChain.random(V, seed=4), length=L, batch=8, policy="random", block=4, steps=2, seed=0,
               reweight=EnergyReweighting(energy, particles=4))
    with pytest.raises(ValueError, match="not a causal"):
        ar_prefix_energy(type("M", (), {"logits": lambda self, t: t, "causal": False, "mask_id": 3})())
    with pytest.raises(ValueError, match="mask_id"):
        ar_prefix_energy(type("M", (), {"logits": lambda self, t: t})())
    with pytest.raises(ValueError, match="unknown draw 'some'; valid: all, columns"):
        EnergyReweighting(energy, draw="some")


@pytest.fixture(scope="module")
def text_models():
    from diffinfer import zoo
    return zoo.load("shakespeare-char"), zoo.load("shakespeare-ar")


def test_text_energy_equals_ar_nll(text_models):
    """On shakespeare-ar the energy of complete and of prefix-masked rows is minus the summed
    NLL of zoo.quality.ar_nll (the same network calls: to 1e-9), and the shared-prefix fast
    path agrees within float32 round-off (a few 1e-6 over a few hundred log-probabilities)."""
    from diffinfer.zoo.quality import ar_nll, heldout_windows
    text, ar = text_models
    x = heldout_windows(4, 64, seed=3)
    energy = ar_prefix_energy(ar, text.mask_id)
    assert torch.allclose(energy(x), -ar_nll(x) * 63, rtol=1e-9, atol=1e-9)
    masked = x.clone()
    masked[:, 40:] = text.mask_id
    assert torch.allclose(energy(masked), -ar_nll(x[:, :40]) * 39, rtol=1e-9, atol=1e-9)
    drawn = torch.zeros_like(x, dtype=torch.bool)
    drawn[:, 40:44] = True
    filled = masked[:, None].repeat(1, 3, 1)
    filled[:, :, 40:44] = torch.randint(0, text.mask_id, (4, 3, 4), generator=torch.Generator().manual_seed(0))
    fast = energy.score_candidates(masked, filled, drawn)
    assert torch.allclose(fast, energy(filled.reshape(-1, 64)).reshape(4, 3), rtol=0, atol=1e-4)


def test_cli_counts_the_energy_calls(capsys):
    argv = ["decode", "--model", "shakespeare-char", "--energy", "shakespeare-ar", "--particles", "4",
            "--prompt", "ROMEO:", "--length", "16", "--block", "4", "--policy", "random", "--json",
            "--no-progress"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    stats = out["stats"]
    assert out["text"].startswith("ROMEO:") and len(out["text"]) == 22
    assert stats["nfe"] == 4 and stats["energy_calls"] == 4 and stats["energy_rows"] == 16
    assert stats["tokens_per_nfe"] == 4.0 and stats["tokens_per_call"] == 2.0 and stats["particles"] == 4


@pytest.mark.parametrize("extra, message", [
    (["--energy", "gpt2"], "unknown --energy 'gpt2'; valid: shakespeare-ar"),
    (["--particles", "8"], "--particles applies with --energy"),
    (["--energy", "shakespeare-ar", "--block", "5"], "--block B dividing --length 16"),
    (["--energy", "shakespeare-ar", "--block", "4", "--steps", "8"], "--steps must be --length / --block = 4"),
    (["--energy", "shakespeare-ar", "--block", "4", "--policy", "threshold"], "scheduled policy"),
])
def test_cli_energy_usage_errors(extra, message, capsys):
    argv = ["decode", "--model", "shakespeare-char", "--length", "16", "--policy", "random", "--no-progress"] + extra
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_the_readme_shows_a_measured_energy_example():
    """The README shows an EDLM decode example (``--energy``), and the decode-examples bench
    (which reads its commands from the README) measured it within the bar."""
    import json
    import pathlib
    import sys
    root = pathlib.Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "bench"))
    from decode_examples import readme_text_examples
    energy = [c for c in readme_text_examples() if "--energy" in c]
    assert energy, "the README shows no decode example with --energy"
    rows = {r["command"]: r for r in json.loads((root / "bench" / "results" / "decode_examples.json").read_text())["rows"]}
    for command in energy:
        assert rows[command]["met"] and rows[command]["tokens_per_nfe"] >= 2.0, rows[command]
