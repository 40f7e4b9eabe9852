"""Denoising Task Routing (Park et al. 2023) in the DiT: the masks' properties from the paper,
routing off is the plain DiT, what a routed block does to active and inactive channels, and a
short digits training run (seconds) with and without routing."""
import pytest
import torch

from diffinfer.nets.dit import DiT, DiTBlock
from diffinfer.nets.routing import TaskRouting

F64 = torch.float64


def _times(n=201):
    return torch.linspace(0, 1, n, dtype=F64)


@pytest.mark.parametrize("channels,beta,alpha", [(48, 0.8, 1.0), (64, 0.5, 4.0), (37, 0.3, 2.0), (10, 1.0, 1.0)])
def test_each_mask_activates_the_fraction_beta_as_one_window(channels, beta, alpha):
    r = TaskRouting(channels, beta, alpha)
    m = r.mask(_times(), dtype=F64)  # [T, C]
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert (m.sum(1) == int(channels * beta)).all()
    # contiguous: exactly one 0 -> 1 step along the channels (counting a leading 1)
    starts = torch.diff(torch.cat([torch.zeros(m.shape[0], 1, dtype=F64), m], 1), dim=1) == 1
    assert (starts.sum(1) == 1).all()
    # the window starts at the first channel for t = 0 (data) and ends at the last for t = 1 (noise)
    assert m[0, 0] == 1 and m[-1, -1] == 1
    o = r.offsets(_times())
    assert o[0] == 0 and o[-1] == channels - int(channels * beta)


def test_the_offsets_are_the_papers_formula():
    """o(t) = round(t^alpha (C - C_beta)), and at t = k / (T - 1) the authors' tasks 0..T-1."""
    import numpy as np
    C, beta, alpha, T = 64, 0.8, 4.0, 1000
    r = TaskRouting(C, beta, alpha)
    t = torch.arange(T, dtype=F64) / (T - 1)
    last = C - int(C * beta)
    expected = np.round(np.linspace(0, 1, T) ** alpha * last).astype(np.int64)
    assert (r.offsets(t).numpy() == expected).all()


@pytest.mark.parametrize("alpha", [1.0, 4.0])
def test_overlap_decreases_with_the_time_gap_and_matches_the_closed_form(alpha):
    r = TaskRouting(64, 0.6, alpha)
    t = _times(101)
    m = r.mask(t, dtype=F64)
    shared = m @ m.T  # [T, T] channels active for both
    for i in range(0, 101, 10):
        row = shared[i]
        closed = r.overlap(t[i].expand(101), t)
        assert torch.equal(row.to(torch.int64), closed)
        # non-increasing as t' moves away from t on either side, and full at t' = t
        assert row[i] == r.active
        assert (torch.diff(row[i:]) <= 0).all() and (torch.diff(row[:i + 1]) >= 0).all()
    # far-apart tasks share fewer channels than neighbours (strictly, for a sliding window)
    assert shared[0, -1] < shared[0, 1]


def test_alpha_above_one_gives_high_noise_tasks_more_specific_channels():
    """Task weights: with alpha > 1 neighbouring tasks at high t share fewer channels than at low t."""
    r = TaskRouting(64, 0.5, 4.0)
    h = 0.05
    low = r.overlap(torch.tensor([0.05], dtype=F64), torch.tensor([0.05 + h], dtype=F64))
    high = r.overlap(torch.tensor([0.9], dtype=F64), torch.tensor([0.9 + h], dtype=F64))
    assert int(high) < int(low)


def test_same_time_same_mask_and_per_row_masks():
    r = TaskRouting(32, 0.75, 2.0)
    t = torch.tensor([0.3, 0.7, 0.3, 0.0], dtype=F64)
    m = r.mask(t)
    assert torch.equal(m[0], m[2]) and not torch.equal(m[0], m[1])
    assert torch.equal(r.mask(t[1:2])[0], m[1])


@pytest.mark.parametrize("bad", [{"beta": 0.0}, {"beta": 1.5}, {"alpha": 0.0}, {"t_max": -1.0}, {"beta": 0.01}])
def test_bad_options_are_refused(bad):
    with pytest.raises(ValueError):
        TaskRouting(32, **{"beta": 0.8, **bad})


def test_times_outside_the_range_and_unknown_options_are_refused():
    r = TaskRouting(16, 0.5)
    with pytest.raises(ValueError, match="routing times"):
        r.mask(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="routing times"):
        r.mask(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="unknown routing options.*valid"):
        DiT(d_model=16, depth=1, n_heads=2, emb_dim=16, routing={"betta": 0.5})
    # t_max rescales a network's time input (e.g. integer timesteps 0..999)
    r1000 = TaskRouting(16, 0.5, t_max=999.0)
    assert torch.equal(r1000.mask(torch.tensor([999.0, 0.0])), r.mask(torch.tensor([1.0, 0.0])))


# --- the DiT ------------------------------------------------------------------------------
def _net(routing=None, seed=0, **kw):
    torch.manual_seed(seed)
    net = DiT(d_model=32, depth=2, n_heads=4, emb_dim=32, num_classes=10, routing=routing, **kw).to(F64)
    with torch.no_grad():  # leave the zero init so every layer matters
        g = torch.Generator().manual_seed(seed + 1)
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=F64))
    return net


def _inputs(B=5):
    g = torch.Generator().manual_seed(7)
    return (torch.randn(B, 1, 8, 8, generator=g, dtype=F64), torch.rand(B, generator=g, dtype=F64),
            torch.arange(B) % 10)


def test_routing_adds_no_parameters_and_draws_no_random_numbers():
    """Off by default; the state dict (what a checkpoint holds) and the initial weights are
    the plain DiT's, so existing checkpoints load either way."""
    plain, routed = _net(None), _net({"beta": 0.5})
    assert plain.routing is None
    a, b = plain.state_dict(), routed.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    routed.load_state_dict(a)


@pytest.mark.parametrize("moe", [None, {"n_experts": 4, "top_k": 2, "n_shared": 1}])
def test_full_window_is_bitwise_the_plain_dit(moe):
    """beta = 1 activates every channel: (1 - 1) x + Block(1 x) is the plain block, bit for bit."""
    x, t, y = _inputs()
    plain = _net(None, moe=moe)
    full = _net({"beta": 1.0}, moe=moe)
    assert torch.equal(plain(x, t, y), full(x, t, y))
    partial = _net({"beta": 0.5}, moe=moe)
    assert not torch.allclose(plain(x, t, y), partial(x, t, y))


def test_a_routed_block_on_active_and_inactive_channels():
    """out = (1 - m) x + Block(m x): the active channels are the plain block's output on the
    masked input, bit for bit; the inactive channels of the input reach the output only through
    the skip (a change there moves the output by exactly that change, only there)."""
    torch.manual_seed(0)
    D = 16
    block = DiTBlock(D, 2, 2.0, 8, None).to(F64)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.2 * torch.randn_like(p))
    g = torch.Generator().manual_seed(3)
    h = torch.randn(3, 4, D, generator=g, dtype=F64)
    emb = torch.randn(3, 8, generator=g, dtype=F64)
    r = TaskRouting(D, 0.5, 1.0)
    m = r.mask(torch.tensor([0.0, 0.5, 1.0], dtype=F64), dtype=F64).unsqueeze(1)  # [3, 1, D]
    out = block(h, emb, m)
    on = m.expand_as(h).bool()
    assert torch.equal(out[on], block(m * h, emb)[on])
    delta = torch.randn(h.shape, generator=g, dtype=F64) * (1 - m)  # only inactive channels
    out2 = block(h + delta, emb, m)
    torch.testing.assert_close(out2 - out, delta, rtol=0, atol=1e-12)
    assert torch.equal(out2[on], out[on])


def test_each_row_uses_its_own_times_mask():
    """A row's output alone equals its output in a batch of other times (masks per row)."""
    net = _net({"beta": 0.5, "alpha": 2.0})
    x, t, y = _inputs(4)
    full = net(x, t, y)
    for i in range(4):
        torch.testing.assert_close(net(x[i:i + 1], t[i:i + 1], y[i:i + 1]), full[i:i + 1], rtol=0, atol=1e-12)


def test_short_training_runs_both_ways_from_the_same_start():
    """A few steps on the digits: both variants train (loss falls) from identical initial
    weights and batches; the losses differ (the routing is in effect)."""
    from diffinfer.zoo.routing_digits import train_dit
    torch.set_num_threads(1)
    _, plain = train_dit(None, steps=12, seed=0, batch=32)
    _, dtr = train_dit({"beta": 0.8}, steps=12, seed=0, batch=32)
    for losses in (plain, dtr):
        assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert plain != dtr


def test_cli_demo_and_bad_option(capsys, tmp_path):
    from diffinfer.cli import main
    with pytest.raises(SystemExit) as e:
        main(["structured", "routing", "--beta", "1.5"])
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("diffinfer") and "--beta" in err[0], err
    code = main(["structured", "routing", "--steps", "2", "--samples", "16", "--out", str(tmp_path / "r.png")])
    assert code == 0
    out = capsys.readouterr().out
    assert "FD" in out and "plain" in out and "DTR" in out
    assert (tmp_path / "r.png").is_file()
