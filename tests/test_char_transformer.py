"""CharTransformer: shapes, causality, and the Fast-dLLM key/value-cache forward."""
import pytest
import torch

from diffinfer.nets.char_transformer import CharTransformer

torch.set_num_threads(1)


def _model(causal=False):
    torch.manual_seed(0)
    return CharTransformer(vocab_size=11, d_model=32, n_layers=2, n_heads=4, max_len=24,
                           causal=causal).double().eval()


def _tokens(B=3, L=20, seed=1):
    return torch.randint(0, 11, (B, L), generator=torch.Generator().manual_seed(seed))


def test_shapes_and_errors():
    m = _model()
    x = _tokens()
    assert m(x).shape == (3, 20, 11)
    with pytest.raises(ValueError, match="max_len"):
        m(_tokens(L=30))
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        m(x[0])


def test_causal_ignores_future_bidirectional_does_not():
    x = _tokens()
    y = x.clone()
    y[:, 12] = (y[:, 12] + 1) % 11
    causal, bi = _model(True), _model(False)
    with torch.no_grad():
        assert torch.equal(causal(x)[:, :12], causal(y)[:, :12])
        assert not torch.allclose(bi(x)[:, :12], bi(y)[:, :12])


@pytest.mark.parametrize("start,end", [(8, 20), (8, 14), (0, 20), (19, 20)])
def test_window_forward_equals_full_forward(start, end):
    m, x = _model(), _tokens()
    with torch.no_grad():
        full, cache = m.forward_with_cache(x)
        win = m.forward_window(x[:, start:end], start, cache)
    torch.testing.assert_close(win, full[:, start:end], rtol=1e-10, atol=1e-10)


def test_causal_prefix_cache_is_exact_when_the_suffix_changes():
    m, x = _model(True), _tokens()
    y = x.clone()
    y[:, 10:] = _tokens(seed=7)[:, 10:]
    with torch.no_grad():
        _, cache = m.forward_with_cache(x)
        win = m.forward_window(y[:, 10:], 10, cache)
        torch.testing.assert_close(win, m(y)[:, 10:], rtol=1e-10, atol=1e-10)


def test_window_outside_cache_is_an_error():
    m, x = _model(), _tokens()
    _, cache = m.forward_with_cache(x)
    with pytest.raises(ValueError, match="outside"):
        m.forward_window(x[:, :5], 18, cache)
