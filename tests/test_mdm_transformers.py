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
