"""Caches: RADD logit reuse is exact; the Fast-dLLM key/value cache matches a full forward."""
import pytest
import torch

from diffinfer.mdm import CharTransformerModel, decode, shift_right
from diffinfer.nets.char_transformer import CharTransformer
from diffinfer.toys.markov_chain import MarkovChain

torch.set_num_threads(1)


@pytest.mark.parametrize("policy,steps", [("ancestral", 40), ("low-confidence", 30), ("random", 25)])
def test_reuse_gives_bitwise_the_same_tokens_with_fewer_calls(policy, steps):
    c = MarkovChain.random(6, seed=0)
    plain = decode(c, length=12, batch=16, policy=policy, steps=steps, seed=5)
    reuse = decode(c, length=12, batch=16, policy=policy, steps=steps, seed=5, cache="reuse")
    assert torch.equal(plain.tokens, reuse.tokens)
    assert reuse.nfe_per_row.sum() < plain.nfe_per_row.sum()
    assert (reuse.nfe_per_row <= 12).all()  # one call per change of the canvas at most (+ none wasted)


def test_reuse_refuses_a_time_conditioned_model():
    c = MarkovChain.random(3, seed=0)

    class Timed:
        mask_id, vocab_size, takes_time = c.mask_id, c.vocab_size, True

        def logits(self, tokens, t):
            return c.logits(tokens)

    decode(Timed(), length=4, seed=0)  # time input works
    with pytest.raises(ValueError, match="time-free"):
        decode(Timed(), length=4, cache="reuse")


def _net(vocab=12, max_len=24):
    torch.manual_seed(0)
    return CharTransformer(vocab, d_model=32, n_layers=2, n_heads=4, max_len=max_len).double().eval()


class _Shifted(CharTransformerModel):
    shift_logits = True


@pytest.mark.parametrize("cls", [CharTransformerModel, _Shifted])
@pytest.mark.parametrize("start,end", [(0, 24), (6, 24), (6, 14), (0, 5)])
def test_window_logits_equal_the_full_forward(cls, start, end):
    m = cls(_net(), mask_id=11)
    x = torch.randint(0, 12, (2, 24), generator=torch.Generator().manual_seed(0))
    full, cache = m.logits_with_cache(x)
    torch.testing.assert_close(full, m.logits(x))
    if cls is _Shifted:
        torch.testing.assert_close(full, shift_right(m.net(x)))
    win = m.logits_window(x[:, start:end], start, cache, tokens=x)
    torch.testing.assert_close(win, full[:, start:end], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_kv_cache_decode(cache):
    m = CharTransformerModel(_net(), mask_id=11)
    prompt = torch.tensor([1, 2, 3, 4])
    # one step per block: every step starts a block, so the cache only refreshes -> exact
    ref = decode(m, prompt=prompt, length=16, block=4, steps=4, batch=3, temperature=0)
    one = decode(m, prompt=prompt, length=16, block=4, steps=4, batch=3, temperature=0, cache=cache)
    assert torch.equal(ref.tokens, one.tokens)
    # the cache is used: with it, some forward passes see fewer query positions than the canvas
    seen = []
    hook = m.net.ln_f.register_forward_hook(lambda mod, inp, outp: seen.append(inp[0].shape[1]))
    try:
        full = decode(m, prompt=prompt, length=16, block=4, policy="threshold", threshold=0.2, batch=3, seed=0)
        n_full = list(seen)
        seen.clear()
        out = decode(m, prompt=prompt, length=16, block=4, policy="threshold", threshold=0.2, batch=3, seed=0,
                     cache=cache)
    finally:
        hook.remove()
    canvas = 4 + 16  # prompt + generated
    assert set(n_full) == {canvas} and min(seen) < canvas and sum(seen) < sum(n_full), (n_full, seen)
    assert (out.tokens != 11).all() and (out.tokens[:, :4] == prompt).all() and full.tokens.shape == out.tokens.shape
    with pytest.raises(ValueError, match="guidance"):
        decode(m, prompt=prompt, length=16, cache=cache, cfg=1.0)


def test_prompt_longer_than_the_canvas_is_an_error():
    m = CharTransformerModel(_net(), mask_id=11)
    with pytest.raises(ValueError, match="context holds 24"):
        decode(m, prompt=list(range(10)) * 2, length=8)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        CharTransformerModel(_net(), mask_id=12)


def test_cfg_zero_is_plain_and_cfg_changes_the_law():
    m = CharTransformerModel(_net(), mask_id=11)
    prompt = torch.tensor([1, 2, 3, 4])
    a = decode(m, prompt=prompt, length=8, steps=8, seed=0)
    b = decode(m, prompt=prompt, length=8, steps=8, seed=0, cfg=0.0)
    g = decode(m, prompt=prompt, length=8, steps=8, seed=0, cfg=2.0)
    assert torch.equal(a.tokens, b.tokens)
    assert g.nfe == 2 * a.nfe


def test_an_object_holding_a_bidirectional_char_transformer_gets_the_kv_cache():
    """The zoo's TextModel holds its network as ``net``; decode wraps it with the cache forward."""

    class Holder:
        def __init__(self, net):
            self.net, self.mask_id, self.vocab_size = net, 11, 12

        def logits(self, tokens):
            return self.net(tokens)

    h = Holder(_net())
    a = decode(h, prompt=[1, 2], length=8, block=4, policy="threshold", threshold=0.3, seed=0, cache="dual")
    assert (a.tokens != 11).all()


def test_cfg_follows_llada_formula():
    """With guidance w the step's logits are u + (w + 1)(c - u), u computed with the prompt masked."""
    from diffinfer.mdm import LogitsEvaluator

    class PromptAware:
        mask_id, vocab_size = 4, 5

        def logits(self, tokens):
            seen = (tokens[:, :2] != 4).sum(-1).double()  # [B] prompt tokens visible
            out = torch.zeros(*tokens.shape, 5, dtype=torch.float64)
            out[..., 0] = seen[:, None]
            out[..., 1] = 1.0
            return out

    tokens = torch.tensor([[1, 2, 4, 4]])
    prompt = torch.tensor([[True, True, False, False]])
    ev = LogitsEvaluator(PromptAware(), None, 1, cfg_scale=1.5, prompt_mask=prompt)
    out = ev(tokens, torch.tensor([True]))
    cond, uncond = 2.0, 0.0
    assert torch.allclose(out[..., 0], torch.full((1, 4), uncond + 2.5 * (cond - uncond), dtype=torch.float64))
    assert torch.allclose(out[..., 1], torch.ones(1, 4, dtype=torch.float64))
    assert ev.nfe.tolist() == [2]


class _RowChecked(CharTransformerModel):
    """Checks that every row of a window call reads the keys the block-start forward made for it
    (rows are told apart by their prompts, the first three tokens)."""

    def logits_with_cache(self, tokens):
        logits, cache = super().logits_with_cache(tokens)
        self.made = {tuple(row[:3].tolist()): k for row, k in zip(tokens, cache.keys[0])}
        return logits, cache

    def logits_window(self, tokens_window, start, cache, tokens=None):
        assert len(cache.keys[0]) == len(tokens)
        for row, k in zip(tokens, cache.keys[0]):
            assert torch.equal(k, self.made[tuple(row[:3].tolist())])
        return super().logits_window(tokens_window, start, cache, tokens=tokens)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_kv_cache_is_cut_once_per_change_of_rows(cache, monkeypatch):
    """Rows finishing at different times: the cache keeps only the rows still active, copied once
    each time a row finishes (not at every step), and every row keeps reading its own keys."""
    from diffinfer.nets.char_transformer import KVCache

    kept = []
    select = KVCache.select
    monkeypatch.setattr(KVCache, "select", lambda self, idx: kept.append(len(idx)) or select(self, idx))
    m = _RowChecked(_net(), mask_id=11)
    canvas = torch.zeros(4, 16, dtype=torch.long)
    canvas[:, :3] = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 1, 2]])
    for row, n in enumerate([2, 5, 9, 13]):
        canvas[row, 3:3 + n] = 11
    out = decode(m, canvas=canvas, policy="threshold", seed=0, cache=cache)
    assert (out.tokens != 11).all()
    assert out.nfe_per_row.tolist() == [2, 5, 9, 13]  # one token per step: rows finish apart
    assert kept == [3, 2, 1]  # one copy per finished row
