"""Forecasting feature caches (``FeatureCache(order=m)``, TaylorSeer): the Lagrange weights
reproduce polynomials exactly, a cache whose skipped part is a polynomial in time is exact
at the forecast order (and not below it), per-row histories survive partial refreshes and
``select``, and the whole-network UNet plan (``depth=0``) is exact when refreshing every call."""
import pytest
import torch
from torch import nn

import diffinfer as di
from diffinfer import accel
from diffinfer.accel.cache import lagrange_weights

from test_accel_cache import _count_calls, _model, _noise, _ours, _perturb, _run_with_resampling

F64 = torch.float64
B = 4


@pytest.mark.parametrize("seed", range(5))
def test_lagrange_weights_reproduce_polynomials_through_each_rows_valid_nodes(seed):
    g = torch.Generator().manual_seed(seed)
    S, R = 4, 6
    times = torch.rand(S, R, generator=g, dtype=F64)  # distinct with probability one
    filled = torch.tensor([1, 2, 3, 4, 4, 2])  # valid slots per row
    valid = torch.arange(S)[:, None] < filled[None, :]  # [S, R]
    t = float(torch.rand((), generator=g, dtype=F64)) * 1.5
    coef = torch.randn(S, R, generator=g, dtype=F64)  # row r: a polynomial of degree filled[r] - 1
    degree = (filled - 1)[None, :]

    def poly(tau):  # [.., R]
        powers = torch.stack([tau ** k for k in range(S)])  # [S, ..., R]
        keep = (torch.arange(S)[:, None] <= degree)  # [S, R]
        return (coef.reshape((S,) + (1,) * (powers.dim() - 2) + (R,)) * powers
                * keep.reshape((S,) + (1,) * (powers.dim() - 2) + (R,))).sum(0)

    w = lagrange_weights(times, valid, t)  # [S, R]
    values = poly(times)  # [S, R]
    got = (w * values).sum(0)
    torch.testing.assert_close(got, poly(torch.full((R,), t, dtype=F64)), rtol=0, atol=1e-9)
    assert torch.equal(w[~valid], torch.zeros_like(w[~valid]))
    torch.testing.assert_close(w.sum(0), torch.ones(R, dtype=F64), rtol=0, atol=1e-10)  # constants


class _PolyBlock(nn.Module):
    """A 'deep' block whose output is a polynomial in time: ``h + p(t)`` (residual) or ``p(t)``
    broadcast over ``h`` (replay), with fixed random coefficients of degree ``degree``."""

    def __init__(self, degree: int, residual: bool, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.coef = torch.randn(degree + 1, 1, 1, 8, 8, generator=g, dtype=F64)
        self.residual = residual

    def forward(self, h, t):
        tt = t.reshape(-1, 1, 1, 1).to(h.dtype)  # [B, 1, 1, 1]
        p = sum(c * tt ** k for k, c in enumerate(self.coef))  # [B, 1, 8, 8]
        return h + p if self.residual else p + 0 * h


class _PolyNet(nn.Module):
    """``net(x, t) = 0.3 x + block(tanh(x), t)``: the block is what the cache skips."""

    def __init__(self, degree: int, residual: bool):
        super().__init__()
        self.block = _PolyBlock(degree, residual)

    def forward(self, x, t):
        return 0.3 * x + self.block(torch.tanh(x), t)


def _poly_cache(degree, residual, **options):
    net = _PolyNet(degree, residual)
    den = di.Denoiser(net, di.VP("linear"), "eps")
    plan = accel.CachePlan(net, (net.block,), "residual" if residual else "replay", "poly block")
    return den, accel.FeatureCache(den, plan=plan, **options)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("variable", ["t", "logsnr"])
def test_a_polynomial_deep_part_is_forecast_exactly_at_its_order(residual, variable):
    """Refreshes at calls 0-2 then every third call: from the third call on each forecast has
    three nodes, so a quadratic-in-t block is exact at order 2 (to round-off) and not at order 1."""
    steps = 12
    sched = [0, 1, 2, 5, 8, 11]
    den, exact = _poly_cache(2, residual, steps=sched, order=2)
    _, low = _poly_cache(2, residual, steps=sched, order=1)
    x = _noise()
    with torch.no_grad():
        ref = di.sample(den, x, solver="dpmpp-2m", steps=steps).x
        if variable == "t":
            got = di.sample(exact, x, solver="dpmpp-2m", steps=steps).x
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-9)
            assert exact.stats.cached == steps - len(sched)
        else:  # a polynomial in t is not one in log-SNR: the forecast is close, not exact
            _, in_logsnr = _poly_cache(2, residual, steps=sched, order=2, variable="logsnr")
            got = di.sample(in_logsnr, x, solver="dpmpp-2m", steps=steps).x
            assert 1e-12 < (got - ref).abs().max() < (di.sample(low, x, solver="dpmpp-2m", steps=steps).x
                                                       - ref).abs().max()
        coarse = di.sample(low, x, solver="dpmpp-2m", steps=steps).x
    assert (coarse - ref).abs().max() > 1e-6


def test_forecast_order_zero_is_the_reusing_cache_bitwise():
    den = _ours("unet")
    x = _noise()
    with torch.no_grad():
        a = di.sample(accel.FeatureCache(den, every=3), x, solver="dpmpp-2m", steps=9).x
        b = di.sample(accel.FeatureCache(den, every=3, order=0), x, solver="dpmpp-2m", steps=9).x
        c = di.sample(accel.FeatureCache(den, every=3, order=2), x, solver="dpmpp-2m", steps=9).x
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("kind", ["unet", "dit"])
@pytest.mark.parametrize("schedule", [{"every": 2, "order": 2}, {"threshold": 0.02, "order": 1}])
def test_forecasting_caches_follow_resampled_particles(kind, schedule):
    """Each particle's refresh history (values and times) is gathered by ``select``."""
    den = _ours(kind)
    x = _noise()
    idx = torch.tensor([2, 2, 0, 3])
    with torch.no_grad():
        resampled = _run_with_resampling(accel.FeatureCache(den, **schedule), x, idx, at=5, steps=10)
        from_scratch = di.sample(accel.FeatureCache(den.select(idx), **schedule), x[idx], solver="dpmpp-2m",
                                 ts=di.grids.default(den.process, 10)).x
    assert torch.equal(resampled, from_scratch)


def test_rows_refreshing_at_different_calls_forecast_from_their_own_history():
    """With a threshold rows refresh at different calls; with forecasting each row's result is
    the same alone or in a batch (its own refresh times), and differs from reuse."""
    den = _ours("unet")
    x = _noise()
    with torch.no_grad():
        cached = accel.FeatureCache(den, threshold=0.05, order=2)
        batch = di.sample(cached, x, solver="dpmpp-2m", steps=12).x
        alone = torch.cat([di.sample(accel.FeatureCache(den.select(torch.tensor([i])), threshold=0.05, order=2),
                                     x[i:i + 1], solver="dpmpp-2m", steps=12).x for i in range(B)])
        reuse = di.sample(accel.FeatureCache(den, threshold=0.05), x, solver="dpmpp-2m", steps=12).x
    assert 0 < cached.stats.rows_refreshed < 12 * B, "the test needs partial refreshes"
    torch.testing.assert_close(batch, alone, rtol=0, atol=1e-10)
    assert (batch - reuse).abs().max() > 1e-6


@pytest.mark.parametrize("kind", ["unet", "mlp", "diffusers-unet2d"])
def test_the_whole_network_plan(kind):
    """``network_plan`` (the UNet's ``depth=0``): refreshing every call is bitwise the network; a
    cached call runs nothing of it; an output linear in time is forecast exactly at order 1."""
    if kind != "mlp":
        den = _model(kind)
        x = _noise()
        options = {"depth": 0}
    else:
        torch.manual_seed(0)
        net = _perturb(di.nets.MLPDenoiser(2, hidden=16, depth=2).double(), 0)
        den = di.Denoiser(net, di.VP("linear"), "eps")
        x = torch.randn(B, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
        options = {"plan": accel.network_plan(net)}
    net = getattr(den.net, "model", den.net)
    runs = _count_calls(net.conv_in if kind != "mlp" else net.inp)  # runs only when the network does
    with torch.no_grad():
        ref = di.sample(den, x, solver="dpmpp-2m", steps=6).x
        runs[0] = 0
        every = accel.FeatureCache(den, every=1, **options)
        assert torch.equal(di.sample(every, x, solver="dpmpp-2m", steps=6).x, ref)
        runs[0] = 0
        lazy = accel.FeatureCache(den, every=3, order=1, **options)
        out = di.sample(lazy, x, solver="dpmpp-2m", steps=6).x
    assert runs[0] == 2 == lazy.stats.full and lazy.stats.cached == 4
    assert (out - ref).abs().max() > 1e-6
    assert lazy.plan.modules == (net,)


def test_a_whole_network_linear_in_time_is_forecast_exactly():
    class Linear(nn.Module):
        def forward(self, x, t):
            return 0 * x + (0.5 - 2.0 * t.reshape(-1, 1)).to(x.dtype)

    net = Linear()
    den = di.Denoiser(net, di.VP("linear"), "eps")
    x = torch.randn(B, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    with torch.no_grad():
        ref = di.sample(den, x, solver="dpmpp-2m", steps=9).x
        got = di.sample(accel.FeatureCache(den, steps=[0, 1, 4, 7], order=1, plan=accel.network_plan(net)), x,
                        solver="dpmpp-2m", steps=9).x
        reuse = di.sample(accel.FeatureCache(den, steps=[0, 1, 4, 7], plan=accel.network_plan(net)), x,
                          solver="dpmpp-2m", steps=9).x
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-10)
    assert (reuse - ref).abs().max() > 1e-4


def test_bad_forecast_options_are_errors():
    den = _ours("unet")
    for order in (-1, 4, 1.5):
        with pytest.raises(ValueError, match="forecast order"):
            accel.FeatureCache(den, every=2, order=order)
    with pytest.raises(ValueError, match="valid: t, logsnr"):
        accel.FeatureCache(den, every=2, order=1, variable="sigma")
    with pytest.raises(ValueError, match=r"depth must be in \[0, 3\]"):
        accel.FeatureCache(den, every=2, depth=-1)
    with pytest.raises(ValueError, match="one time per call"):
        accel.FeatureCache(den, every=2, order=1).predict(_noise(), torch.tensor([0.5, 0.5, 0.4, 0.5], dtype=F64))
    with pytest.raises(ValueError, match="use variable='t'"):  # log-SNR is infinite at t = 0
        accel.FeatureCache(den, every=2, order=1, variable="logsnr").predict(_noise(), 0.0)


def _lagrange_at(nodes, t):
    """Extrapolation at ``t`` of the points ``[(t_k, f_k)]`` by Lagrange's formula, written out."""
    out = 0.0
    for k, (tk, fk) in enumerate(nodes):
        w = 1.0
        for j, (tj, _) in enumerate(nodes):
            if j != k:
                w *= (t - tj) / (tk - tj)
        out = out + w * fk
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("pushes", [3, 9])
def test_the_store_forecasts_each_row_from_its_own_last_refreshes(seed, order, pushes):
    """Random partial refreshes (rows refreshing at different calls), then ``forecast`` and
    ``gather``: every row is the polynomial through *its* last ``order + 1`` refreshes."""
    from diffinfer.accel.cache import _Store
    g = torch.Generator().manual_seed(seed)
    R, slots = 5, order + 1
    store, kept = _Store(), [[] for _ in range(R)]
    t = 1.0
    for step in range(pushes):
        if step % 3 != 2:  # every third push is at the previous push's time (it replaces that node)
            t = 1.0 - 0.09 * step - 0.02 * float(torch.rand((), generator=g))
        value = torch.randn(R, 3, generator=g, dtype=F64)
        mask = None if step == 0 else torch.rand(R, generator=g) < 0.5
        store.push([value], t, mask, slots)
        for r in range(R):
            if mask is None or mask[r]:
                if kept[r] and kept[r][-1][0] == t:
                    kept[r][-1] = (t, value[r])
                else:
                    kept[r].append((t, value[r]))
    t_new = 0.05
    got = store.forecast(t_new)[0]  # [R, 3]
    want = torch.stack([_lagrange_at(kept[r][-slots:], t_new) for r in range(R)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-8)
    assert len({len(k) for k in kept}) > 1 or pushes == 3, "the test needs rows with different refresh counts"
    store.rows = R
    idx = torch.tensor([4, 0, 0, 2])
    torch.testing.assert_close(store.gather(idx).forecast(t_new)[0], want[idx], rtol=0, atol=1e-8)


@pytest.mark.parametrize("residual", [False, True])
def test_two_refreshes_at_one_time_keep_one_node(residual):
    """Heun calls the model twice at each inner grid point (corrector, then the next
    predictor): refreshing both must not put two nodes at one time (a division by zero in
    the forecast); the later refresh replaces the earlier one, and the forecast stays exact."""
    sched = [0, 1, 2, 3, 4, 8]  # calls 1 and 2 are both at t_1, calls 3 and 4 at t_2
    den, cached = _poly_cache(2, residual, steps=sched, order=2)
    x = _noise()
    with torch.no_grad():
        ref = di.sample(den, x, solver="heun", steps=6).x
        got = di.sample(cached, x, solver="heun", steps=6).x
    assert cached.stats.cached > 0
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-9)
