"""Tiny networks: shapes, conditioning (null class), zero-initialised outputs, MoE routing
against a per-token reference, and the expert-balance loss's exact values."""
import math

import pytest
import torch

from diffinfer.nets import DiT, MLPDenoiser, MoEMLP, SeriesNet, UNet, UNetClassifier, sinusoidal_embedding

torch.set_num_threads(1)


def _perturb(net, seed=0):
    """Give zero-initialised layers random weights so outputs depend on every input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net


def test_sinusoidal_embedding_closed_form():
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    emb = sinusoidal_embedding(t, 8, scale=1000.0)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(4, dtype=torch.float64) / 4)
    args = 1000.0 * t[:, None] * freqs[None]
    assert torch.allclose(emb, torch.cat([torch.cos(args), torch.sin(args)], 1), atol=1e-4)
    with pytest.raises(ValueError, match=r"\[B\]"):
        sinusoidal_embedding(torch.zeros(2, 2), 8)


@pytest.mark.parametrize("make, shape", [
    (lambda: MLPDenoiser(6, hidden=32, depth=2, num_classes=3), (4, 6)),
    (lambda: UNet(1, (8, 16), emb_dim=16, num_classes=3), (4, 1, 8, 8)),
    (lambda: DiT(1, 8, 2, d_model=16, depth=2, n_heads=2, emb_dim=16, num_classes=3), (4, 1, 8, 8)),
    (lambda: DiT(1, 8, 2, d_model=16, depth=2, n_heads=2, emb_dim=16, num_classes=3,
                 moe={"n_experts": 3, "top_k": 2, "n_shared": 1}), (4, 1, 8, 8)),
    (lambda: SeriesNet(1, channels=8, depth=3, emb_dim=16, num_classes=3), (4, 1, 16)),
])
def test_denoiser_nets_shape_and_null_label(make, shape):
    net = _perturb(make()).eval()
    x, t = torch.randn(shape), torch.rand(shape[0])
    out = net(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # label=None is the null class (index num_classes), and labels change the output
    assert torch.equal(out, net(x, t, label=torch.full((shape[0],), 3)))
    assert not torch.allclose(out, net(x, t, label=torch.zeros(shape[0], dtype=torch.int64)))
    # rows are independent: a sample's output does not depend on its batch mates
    assert torch.allclose(net(x[:1], t[:1]), out[:1], atol=1e-5)
    with pytest.raises(ValueError, match="label"):
        net(x, t, label=torch.full((shape[0],), 4))


@pytest.mark.parametrize("net", [UNet(1, (8, 16), emb_dim=16, num_classes=2),
                                 DiT(1, 8, 2, d_model=16, depth=1, n_heads=2, emb_dim=16),
                                 SeriesNet(1, channels=8, depth=2, emb_dim=8)])
def test_zero_initialised_output(net):
    """Output layers start at zero (DDPM/ADM/DiT adaLN-Zero practice): the untrained net is 0."""
    x = torch.randn(3, 1, 8, 8) if not isinstance(net, SeriesNet) else torch.randn(3, 1, 12)
    assert torch.equal(net(x, torch.rand(3)), torch.zeros_like(x))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="divisible"):
        UNet(1, (8, 16, 16))(torch.randn(1, 1, 6, 6), torch.rand(1))
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        UNet(1, (8,))(torch.randn(1, 2, 8, 8), torch.rand(1))
    with pytest.raises(ValueError, match="unconditional"):
        UNet(1, (8,))(torch.randn(1, 1, 8, 8), torch.rand(1), label=torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match="features"):
        MLPDenoiser(4)(torch.randn(2, 5), torch.rand(2))
    with pytest.raises(ValueError, match="top_k"):
        MoEMLP(4, 8, n_experts=2, top_k=3)


def test_classifier_shapes_and_time_requirement():
    noisy = UNetClassifier(1, (8, 16), emb_dim=16, num_classes=10, time_conditional=True)
    clean = UNetClassifier(1, (8, 16), emb_dim=16, num_classes=10, time_conditional=False)
    x = torch.randn(5, 1, 8, 8)
    assert noisy(x, torch.rand(5)).shape == (5, 10)
    assert clean(x).shape == (5, 10) and clean.features(x).shape == (5, 16)
    with pytest.raises(ValueError, match="noise-conditional"):
        noisy(x)


def test_moe_matches_per_token_reference():
    """Each token's output is the sum of shared experts plus its top-k routed experts
    weighted by renormalised softmax gates (DiT-MoE)."""
    torch.manual_seed(0)
    moe = _perturb(MoEMLP(6, 12, n_experts=4, top_k=2, n_shared=1), seed=1).double()
    h = torch.randn(3, 5, 6, dtype=torch.float64)
    out = moe(h)
    tokens = h.reshape(-1, 6)
    expected = []
    for tok in tokens:
        p = torch.softmax(moe.router(tok), -1)
        top = p.topk(2)
        y = moe.shared[0](tok)
        for g, e in zip(top.values / top.values.sum(), top.indices.tolist()):
            y = y + g * moe.experts[e](tok)
        expected.append(y)
    assert torch.allclose(out.reshape(-1, 6), torch.stack(expected), atol=1e-12)
    # the router gets gradients through the gates
    out.sum().backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0


def test_balance_loss_exact_values():
    """Switch loss ``E * sum_i f_i P_i``: exactly 1 under uniform router probabilities
    (whatever the tie-breaking), exactly ``E`` when one expert takes every token with prob 1."""
    moe = MoEMLP(4, 8, n_experts=4, top_k=1, n_shared=0)
    with torch.no_grad():
        moe.router.weight.zero_()
    moe(torch.randn(10, 4))
    assert abs(float(moe.last_balance_loss) - 1.0) < 1e-6
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[2, 0] = 1e4  # expert 2 always wins with probability ~1 for x[0] > 0
    moe(torch.rand(10, 4) + 0.1)
    assert abs(float(moe.last_balance_loss) - 4.0) < 1e-4
    assert torch.equal(moe.last_load, torch.tensor([0.0, 0.0, 1.0, 0.0]))


def test_dit_aux_loss_dense_and_moe():
    dense = DiT(1, 8, 2, d_model=16, depth=2, n_heads=2, emb_dim=16)
    dense(torch.randn(2, 1, 8, 8), torch.rand(2))
    assert float(dense.aux_loss()) == 0.0
    moe = DiT(1, 8, 2, d_model=16, depth=2, n_heads=2, emb_dim=16, moe={"n_experts": 4, "top_k": 2}, moe_every=2)
    assert len(moe.moe_layers()) == 1
    moe(torch.randn(2, 1, 8, 8), torch.rand(2))
    layer = moe.moe_layers()[0]
    assert float(moe.aux_loss()) == float(layer.last_balance_loss) > 0.0
    assert abs(float(layer.last_load.sum()) - 1.0) < 1e-6
