"""transformers adapters on tiny random-weight configs built offline (no hub access)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from diffinfer.integrations.transformers import DiffusionLMModel, MaskedLMModel  # noqa: E402
from diffinfer.mdm import decode  # noqa: E402

torch.set_num_threads(1)


def _bert(mask_token_id=None):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    if mask_token_id is not None:
        cfg.mask_token_id = mask_token_id
    return transformers.BertForMaskedLM(cfg).eval()


def _llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=4, intermediate_size=64, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_masked_lm_mask_id_from_config_or_argument():
    with pytest.raises(ValueError, match="no mask token"):
        MaskedLMModel(_bert())
    assert MaskedLMModel(_bert(mask_token_id=39)).mask_id == 39
    assert MaskedLMModel(_bert(), mask_id=5).mask_id == 5
    with pytest.raises(ValueError, match="outside the vocabulary"):
        MaskedLMModel(_bert(), mask_id=40)


def test_masked_lm_logits_and_padding():
    net = _bert(mask_token_id=39)
    m = MaskedLMModel(net)
    x = torch.randint(0, 39, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(m.logits(x), net(input_ids=x).logits)
        # a padded row with its attention mask gives the same logits on its real positions
        padded = torch.cat([x[:1, :6], torch.full((1, 4), 39)], dim=1)
        attn = torch.tensor([[1] * 6 + [0] * 4])
        torch.testing.assert_close(m.logits(padded, attention_mask=attn)[:, :6], net(input_ids=x[:1, :6]).logits,
                                   rtol=1e-4, atol=1e-5)


def test_masked_lm_decodes_a_batch_of_prompts():
    m = MaskedLMModel(_bert(mask_token_id=39))
    out = decode(m, prompt=[[1, 2, 3], [4, 5]], length=8, policy="threshold", threshold=0.5, block=4, seed=0)
    assert (out.tokens[0, :11] != 39).all() and (out.tokens[1, :10] != 39).all()
    assert out.tokens[0, :3].tolist() == [1, 2, 3]


@pytest.mark.parametrize("shift", [False, True])
def test_diffusion_lm_shift(shift):
    net = _llama()
    m = DiffusionLMModel(net, mask_id=39, shift=shift)
    x = torch.randint(0, 39, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        raw = net(input_ids=x).logits
    out = m.logits(x)
    if shift:  # position i reads the network's output at i - 1 (Dream)
        torch.testing.assert_close(out[:, 1:], raw[:, :-1])
        torch.testing.assert_close(out[:, 0], raw[:, 0])
    else:
        torch.testing.assert_close(out, raw)
    res = decode(m, prompt=[1, 2, 3], length=6, policy="low-confidence", steps=3, batch=2, seed=0)
    assert (res.tokens != 39).all() and res.nfe == 3


# --- bring your own model: causal refusal, context length, suppression, BatchEncoding, KV cache --
def test_masked_lm_refuses_a_causal_model():
    with pytest.raises(ValueError, match=r"causal language model.*DiffusionLMModel\(model, mask_id=\.\.\., shift=True\)"):
        MaskedLMModel(_llama(), mask_id=39)


def test_context_length_from_max_position_embeddings():
    m = DiffusionLMModel(_llama(), mask_id=39)
    assert m.max_len == 64 and MaskedLMModel(_bert(mask_token_id=39)).max_len == 64
    with pytest.raises(ValueError, match="context holds 64"):
        decode(m, prompt=list(range(10)), length=60, seed=0)


def test_token_suppression_and_logits_processors():
    net = _bert(mask_token_id=39)
    x = torch.randint(0, 39, (2, 8), generator=torch.Generator().manual_seed(0))
    m = MaskedLMModel(net, suppress_tokens=[5, 6])
    out = m.logits(x)
    assert torch.isinf(out[..., [5, 6]]).all() and torch.isfinite(out[..., :5]).all()
    res = decode(m, length=12, batch=3, seed=0, temperature=1.0)
    assert not ((res.tokens == 5) | (res.tokens == 6)).any()
    # a LogitsProcessorList: each position's scores with its row's canvas as input_ids
    seen = []

    class Record(transformers.LogitsProcessor):
        def __call__(self, input_ids, scores):
            seen.append(input_ids.shape)
            return scores

    procs = transformers.LogitsProcessorList([transformers.SuppressTokensLogitsProcessor([7]), Record()])
    m2 = MaskedLMModel(net, logits_processor=procs)
    out2 = m2.logits(x)
    assert torch.isinf(out2[..., 7]).all() and seen == [torch.Size([16, 8])]
    with torch.no_grad():
        ref = net(input_ids=x).logits
    torch.testing.assert_close(out2[..., :7], ref[..., :7])
    with pytest.raises(ValueError, match="mask token"):
        MaskedLMModel(net, suppress_tokens=[39])


def test_batch_encoding_prompt_drops_padding():
    m = MaskedLMModel(_bert(mask_token_id=39))
    ref = decode(m, prompt=[[1, 2, 3], [4, 5]], length=6, policy="low-confidence", seed=0)
    for ids, attn in ([[1, 2, 3, 0], [4, 5, 0, 0]], [[1, 1, 1, 0], [1, 1, 0, 0]]), \
                     ([[1, 2, 3], [0, 4, 5]], [[1, 1, 1], [0, 1, 1]]):  # right and left padding
        enc = transformers.BatchEncoding({"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(attn)})
        out = decode(m, prompt=enc, length=6, policy="low-confidence", seed=0)
        assert torch.equal(out.tokens, ref.tokens)


@pytest.mark.parametrize("shift", [False, True])
def test_kv_cache_through_past_key_values(shift):
    m = DiffusionLMModel(_llama(), mask_id=39, shift=shift)
    assert m.supports_kv_cache
    x = torch.randint(0, 39, (2, 12), generator=torch.Generator().manual_seed(2))
    full, cache = m.logits_with_cache(x)
    torch.testing.assert_close(full, m.logits(x))
    for start, end in ((4, 12), (4, 8), (0, 6)):  # prefix and dual windows (causal attention: exact)
        win = m.logits_window(x[:, start:end], start, cache, tokens=x)
        torch.testing.assert_close(win, full[:, start:end], rtol=1e-4, atol=1e-5)
    sub = cache.select(torch.tensor([1]))
    torch.testing.assert_close(m.logits_window(x[1:, 6:], 6, sub, tokens=x[1:]), full[1:, 6:], rtol=1e-4, atol=1e-5)
    ref = decode(m, prompt=[1, 2, 3], length=8, block=4, steps=8, batch=2, seed=0)
    for mode in ("prefix", "dual"):
        out = decode(m, prompt=[1, 2, 3], length=8, block=4, steps=8, batch=2, seed=0, cache=mode)
        assert torch.equal(out.tokens, ref.tokens), mode


def test_no_kv_cache_for_encoder_models():
    m = MaskedLMModel(_bert(mask_token_id=39))
    assert not m.supports_kv_cache
    with pytest.raises(ValueError, match="key/value-cache"):
        decode(m, length=6, batch=1, cache="prefix", block=3, seed=0)
