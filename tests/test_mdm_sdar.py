"""Block diffusion (SDAR / BD3-LM): the block-causal mask, the block-by-block evaluation, the
exact block cache (bitwise the same decode as no cache, far fewer positions computed) and the
block-diffusion loss, each against an exact reference."""
import importlib

import pytest
import torch

from diffinfer.mdm import decode, shift_right
from diffinfer.mdm.block_diffusion import BlockCausalModel, block_diffusion_loss, pair_mask
from diffinfer.mdm.model import as_masked_model
from diffinfer.nets.char_transformer import CharTransformer
from diffinfer.train import masked_diffusion_loss

torch.set_num_threads(1)
V, MASK = 11, 10


def _net(dtype=torch.float64, max_len=40, **kw):
    torch.manual_seed(0)  # the same weights for every attention pattern
    return CharTransformer(V, d_model=32, n_layers=2, n_heads=4, max_len=max_len, **kw).to(dtype).eval()


def _tokens(B=3, L=30, seed=1):
    return torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_block_one_is_the_causal_model_and_a_whole_block_the_bidirectional_one(dtype):
    x = _tokens()
    with torch.no_grad():
        assert torch.equal(_net(dtype, attention="block-causal", block=1)(x), _net(dtype, causal=True)(x))
        assert torch.equal(_net(dtype, attention="block-causal", block=30)(x), _net(dtype)(x))
        assert torch.equal(_net(dtype, attention="block-causal", block=64)(x), _net(dtype)(x))


def test_default_attention_is_unchanged():
    a, b = _net(), _net(attention="bidirectional")
    assert a.attention == "bidirectional" and a.block is None and not a.causal
    assert _net(causal=True).attention == "causal"
    assert a.state_dict().keys() == b.state_dict().keys()
    x = _tokens()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_block_causal_mask_semantics():
    """Token i sees token j iff j // K <= i // K: changing a token of block 3 leaves blocks 0-2
    bitwise unchanged and changes every position of block 3 and later."""
    net, x = _net(attention="block-causal", block=4), _tokens()
    y = x.clone()
    y[:, 13] = (y[:, 13] + 1) % V
    with torch.no_grad():
        a, b = net(x), net(y)
    assert torch.equal(a[:, :12], b[:, :12])
    assert ((a[:, 12:] - b[:, 12:]).abs().amax(-1) > 0).all()


def test_forward_blocks_equals_the_masked_forward_and_extends_bitwise():
    net, x = _net(attention="block-causal", block=4), _tokens()
    with torch.no_grad():
        full = net(x)
        blocks, cache = net.forward_blocks(x)
        assert (blocks - full).abs().max() < 1e-12  # float64 round-off: other reduction shapes
        assert cache.length == 30
        for s in (4, 8, 28):  # cache of [0, s), then the rest: the same bits
            head, c = net.forward_blocks(x[:, :s])
            tail, c2 = net.forward_blocks(x[:, s:], s, c)
            assert torch.equal(torch.cat([head, tail], 1), blocks)
            assert all(torch.equal(k1, k2) for k1, k2 in zip(c2.keys, cache.keys))
        with pytest.raises(ValueError, match="multiple of the block"):
            net.forward_blocks(x[:, 6:], 6, net.forward_blocks(x[:, :6])[1])
        with pytest.raises(ValueError, match="block-causal"):
            _net().forward_blocks(x)


def test_bad_attention_options():
    with pytest.raises(ValueError, match="valid: bidirectional, causal, block-causal"):
        _net(attention="sliding")
    with pytest.raises(ValueError, match="block >= 1"):
        _net(attention="block-causal")
    with pytest.raises(ValueError, match="only for attention='block-causal'"):
        _net(block=4)
    with pytest.raises(ValueError, match="contradicts"):
        _net(causal=True, attention="block-causal", block=4)


# --- loss -----------------------------------------------------------------------------------
def _per_block_loss(net, x, t, masked, K, shift=False):
    """The block-diffusion bound one block at a time: block b noisy, earlier blocks clean, later
    blocks all masks (unseen by a block-causal net), one plain forward per block (with the shift:
    ``shift_right`` of that forward, as the decode protocol applies it)."""
    B, L = x.shape
    total = torch.zeros(B, dtype=torch.float64)
    for b in range(-(-L // K)):
        s, e = b * K, min(L, b * K + K)
        inp = torch.full_like(x, MASK)
        inp[:, :s] = x[:, :s]
        inp[:, s:e] = torch.where(masked[:, s:e], torch.full_like(x[:, s:e], MASK), x[:, s:e])
        out = shift_right(net(inp)) if shift else net(inp)
        logp = out[:, s:e].log_softmax(-1)
        ce = -logp.gather(-1, x[:, s:e, None])[..., 0]  # [B, e-s]
        total += (ce * masked[:, s:e]).sum(1) / t[:, b]
    return total.mean() / L


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("K", [1, 4, 7, 30])
def test_loss_equals_the_per_block_bound(K, shift):
    net, x = _net(attention="block-causal", block=K), _tokens()
    nb = -(-30 // K)
    t = 0.05 + 0.9 * torch.rand(3, nb, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        loss = block_diffusion_loss(net, x, MASK, torch.Generator().manual_seed(3), t=t, shift=shift)
        masked = torch.rand(3, 30, generator=torch.Generator().manual_seed(3)) < t.repeat_interleave(K, 1)[:, :30]
        ref = _per_block_loss(net, x, t, masked, K, shift)
    assert masked.any() and abs(float(loss) - float(ref)) < 1e-12


def test_loss_with_one_block_is_the_masked_diffusion_loss():
    x = _tokens()
    t = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    with torch.no_grad():
        a = block_diffusion_loss(_net(attention="block-causal", block=30), x, MASK,
                                 torch.Generator().manual_seed(4), t=t[:, None])
        b = masked_diffusion_loss(_net(), x, MASK, t=t, generator=torch.Generator().manual_seed(4))
    assert abs(float(a) - float(b)) < 1e-6  # masked_diffusion_loss rounds the logits to float32


def test_pair_mask_small():
    m = pair_mask(4, 2).int()
    assert m.tolist() == [[1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0],
                          [0, 0, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0],
                          [0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 0, 0],
                          [0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1]]


# --- decoding with the exact block cache ----------------------------------------------------
class Recorder(BlockCausalModel):
    """Keeps every output of the network (position range, logits)."""

    def __init__(self, net, shift=False):
        super().__init__(net, MASK, shift)
        self.calls = []

    def raw_logits(self, tokens):
        out = super().raw_logits(tokens)
        self.calls.append((0, out))
        return out

    def logits_blocks(self, window, start, cache):
        out, kv = super().logits_blocks(window, start, cache)
        self.calls.append((start, out))
        return out, kv


def _prompts():
    return [torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6, 7, 8, 9, 1])]  # not block-aligned


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("K,block,policy,steps,shift", [(4, 4, "low-confidence", 16, False), (4, 8, "random", 8, False),
                                                        (5, 3, "entropy", 24, False), (4, 4, "threshold", None, False),
                                                        (4, 4, "low-confidence", 16, True), (5, 3, "random", 12, True),
                                                        (4, 4, "random", 24, "aligned"), (4, 8, "entropy", 24, "aligned")])
def test_block_cache_decodes_bitwise_like_no_cache(dtype, K, block, policy, steps, shift, monkeypatch):
    """Same tokens; at every step the same logits bits over the positions the cached call computes
    and, as the driver reads them (shift applied), over each row's decode block; the prompt rows
    are not aligned with the blocks ("aligned": no prompt, with the shift; the cache then runs ahead
    of position 0 and a block's first logits come from the finished block)."""
    dec = importlib.import_module("diffinfer.mdm.decode")  # the module (the package exports the function)
    read, orig = [], dec.filter_logits
    monkeypatch.setattr(dec, "filter_logits", lambda logits, *a: (read.append(logits.clone()),
                                                                  orig(logits, *a))[1])
    net = _net(dtype, attention="block-causal", block=K)
    opts = {"threshold": 0.3} if policy == "threshold" else {}
    runs, seen = {}, {}
    for cache in ("none", "block"):
        m = Recorder(net, shift)
        read.clear()
        seen[cache] = []
        opts["callback"] = lambda i, tok, info, c=cache: seen[c].append((read[-1], info["block_start"].clone(),
                                                                         info["block_end"].clone()))
        prompt = None if shift == "aligned" else _prompts()
        res = decode(m, prompt, length=24, batch=2, policy=policy, steps=steps, block=block, cache=cache,
                     seed=7, temperature=1.0, **opts)
        runs[cache] = (m, res)
    (plain, rp), (cached, rc) = runs["none"], runs["block"]
    if shift == "aligned":
        assert max(start for start, _ in cached.calls) >= 2 * K
    assert torch.equal(rp.tokens, rc.tokens) and rp.nfe == rc.nfe == len(plain.calls) == len(cached.calls)
    assert all(MASK not in row for row in rc.generated())
    for (s0, full), (start, window) in zip(plain.calls, cached.calls):
        assert s0 == 0 and start % K == 0
        assert torch.equal(full[:, start:start + window.shape[1]], window)
    assert cached.positions < plain.positions
    assert len(seen["none"]) == len(seen["block"]) == rc.steps
    for (lp, s0, e0), (lc, s1, e1) in zip(seen["none"], seen["block"]):
        assert torch.equal(s0, s1) and torch.equal(e0, e1)
        for b in range(len(s0)):
            assert torch.equal(lp[b, s0[b]:e0[b]], lc[b, s0[b]:e0[b]])


def test_block_cache_computes_the_predicted_positions():
    """Aligned blocks of 4, one token per step: block 1 computes [0, 4) four times; each later
    block computes the finished block and itself once (8), then itself three times (4 each)."""
    m = BlockCausalModel(_net(attention="block-causal", block=4), MASK)
    res = decode(m, length=16, batch=2, policy="random", steps=16, block=4, cache="block", seed=0)
    assert res.nfe == 16 and m.positions == 2 * (4 * 4 + 3 * (8 + 3 * 4))
    u = BlockCausalModel(m.net, MASK)
    decode(u, length=16, batch=2, policy="random", steps=16, block=4, seed=0)
    assert u.positions == 2 * 16 * 16


def test_block_cache_follows_rows_that_finish():
    """Rows that stop at an end-of-sequence token leave the cache; the others decode as without it.
    (The batch then shrinks, so the bitwise promise rests on row-independent CPU kernels, which
    hold here; the documented promise is for a fixed set of rows.)"""
    net = _net(attention="block-causal", block=4)
    a = decode(BlockCausalModel(net, MASK), batch=6, length=24, block=4, eos_id=0, seed=3)
    b = decode(BlockCausalModel(net, MASK), batch=6, length=24, block=4, eos_id=0, seed=3, cache="block")
    assert (a.nfe_per_row < a.nfe_per_row.max()).any()  # some rows did finish early
    assert torch.equal(a.tokens, b.tokens)


def test_block_cache_refuses_other_models_and_as_masked_model_routes():
    bi = _net()
    with pytest.raises(ValueError, match="block-causal"):
        decode(bi, length=8, mask_id=MASK, cache="block")
    assert isinstance(as_masked_model(_net(attention="block-causal", block=4), MASK), BlockCausalModel)
    with pytest.raises(ValueError, match="guidance"):
        decode(_net(attention="block-causal", block=4), [1, 2], length=8, mask_id=MASK, cache="block", cfg=1.0)


# --- the bundled model ----------------------------------------------------------------------
def test_bundled_shakespeare_block_decodes_exactly_with_the_cache():
    from diffinfer import zoo
    text = zoo.load("shakespeare-block")
    assert text.net.attention == "block-causal" and text.net.block == 16 and text.shift_logits
    m = as_masked_model(text)
    assert isinstance(m, BlockCausalModel) and m.shift_logits and m.block_size == 16
    prompt = text.encode("HAMLET:\nTo be, or not to be")  # 27 characters: not block-aligned
    a = decode(text, prompt, length=37, block=37, steps=20, seed=1, policy="low-confidence")
    b = decode(text, prompt, length=37, block=37, steps=20, seed=1, policy="low-confidence", cache="block")
    assert torch.equal(a.tokens, b.tokens)
    c = decode(m, prompt, length=48, block=16, steps=24, seed=2, cache="block")
    u = BlockCausalModel(text.net, text.mask_id, True)
    d = decode(u, prompt, length=48, block=16, steps=24, seed=2)
    assert torch.equal(c.tokens, d.tokens) and m.positions < u.positions / 2


def test_bundled_shakespeare_block_beats_the_unigram_entropy():
    """Held-out block-diffusion bound (an upper bound on the NLL) below the held-out unigram
    entropy (3.31 nats), i.e. the model uses context; 8 windows, 2 draws."""
    from diffinfer import zoo
    from diffinfer.mdm.block_diffusion import block_elbo
    from diffinfer.zoo.quality import heldout_windows, unigram_entropy
    text = zoo.load("shakespeare-block")
    x = heldout_windows(8, 128, seed=0)
    assert block_elbo(text.net, x, text.mask_id, draws=2, shift=True) < unigram_entropy(x) - 0.3
