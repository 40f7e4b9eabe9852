"""Feature caching (diffinfer.accel.cache, DeepCache): exact when refreshing every call, the
schedule's number of deep evaluations, the cached call equal to the network with its deep
output replaced by hand, and the cache carried through resampling (``select``)."""
import pytest
import torch

import diffinfer as di
from diffinfer import accel
from diffinfer.guidance import ClassifierFreeGuidance
from diffinfer.loop import iterate
from diffinfer.nets import DiT, UNet
from diffinfer.scaling.smc import reselect

F64 = torch.float64
B = 4


def _perturb(net, seed):
    """Random weights everywhere (the nets zero-initialise their output and modulation layers,
    which would make every block an identity and the test vacuous)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net.eval()


def _ours(kind, seed=0):
    torch.manual_seed(seed)
    if kind == "unet":
        net = UNet(in_channels=1, channels=(8, 16, 16), emb_dim=16, num_classes=3)
    else:
        net = DiT(in_channels=1, image_size=8, patch=2, d_model=16, depth=5, n_heads=2, emb_dim=16, num_classes=3)
    net = _perturb(net.double(), seed)
    return di.Denoiser(net, di.VP("linear"), "eps").bind(label=torch.arange(B) % 3)


def _diffusers(kind, seed=0):
    diffusers = pytest.importorskip("diffusers")
    from diffinfer.integrations.diffusers import from_diffusers
    torch.manual_seed(seed)
    common = dict(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16, 16),
                  norm_num_groups=4)
    if kind == "diffusers-unet2d":
        model = diffusers.UNet2DModel(down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3,
                                      **common)
        cond = {}
    else:
        model = diffusers.UNet2DConditionModel(
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
            attention_head_dim=2, **common)
        cond = {"encoder_hidden_states": torch.randn(B, 3, 8, generator=torch.Generator().manual_seed(seed),
                                                     dtype=F64)}
    _perturb(model.double(), seed)
    sched = diffusers.DDIMScheduler(clip_sample=False)
    return from_diffusers(model, sched, cond=cond)


KINDS = ["unet", "dit", "diffusers-unet2d", "diffusers-unet2d-condition"]


def _model(kind, seed=0):
    return _ours(kind, seed) if kind in ("unet", "dit") else _diffusers(kind, seed)


def _net(den):
    net = den.net
    return getattr(net, "model", net)


def _noise(n=B, seed=1):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _deep_probe(den):
    """A submodule that runs only when the deep part runs (inside the first skipped module)."""
    plan = accel.plan_for(_net(den))
    first = plan.modules[0]
    if hasattr(first, "modulation"):  # a DiT block (its attention's projections are not called as modules)
        return first.modulation
    return next(m for m in first.modules() if isinstance(m, torch.nn.Conv2d))


def _count_calls(module):
    n = [0]
    module.register_forward_hook(lambda *a: n.__setitem__(0, n[0] + 1))
    return n


@pytest.mark.parametrize("kind", KINDS)
def test_refreshing_every_call_is_bitwise_the_uncached_model(kind):
    den = _model(kind)
    x = _noise()
    with torch.no_grad():
        ref = di.sample(den, x, solver="dpmpp-2m", steps=6).x
        cached = accel.FeatureCache(den, every=1)
        out = di.sample(cached, x, solver="dpmpp-2m", steps=6).x
        lazy = accel.FeatureCache(den, every=3)
        approx = di.sample(lazy, x, solver="dpmpp-2m", steps=6).x
    assert torch.equal(out, ref)
    assert cached.stats.full == 6 and cached.stats.cached == 0
    assert not torch.equal(approx, ref)  # caching changes something: the stubs are live
    assert lazy.stats.full == 2 and lazy.stats.cached == 4


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("schedule, steps, expected", [
    ({"every": 2}, 7, 4), ({"every": 3}, 7, 3), ({"steps": [3, 4]}, 7, 3), ({"steps": [0, 6]}, 7, 2),
])
def test_deep_evaluations_follow_the_schedule(kind, schedule, steps, expected):
    den = _model(kind)
    probe = _count_calls(_deep_probe(den))
    cached = accel.FeatureCache(den, **schedule)
    with torch.no_grad():
        res = di.sample(cached, _noise(), solver="ddim", steps=steps)
    assert res.nfe == steps
    assert probe[0] == expected == cached.stats.full
    assert cached.stats.cached == steps - expected
    # Heun (two calls a step, the second at the next grid point): the schedule counts calls
    probe[0] = 0
    heun = accel.FeatureCache(den, **schedule)
    with torch.no_grad():
        res = di.sample(heun, _noise(), solver="heun", steps=4)
    assert probe[0] == sum(heun.scheduled(n) for n in range(res.nfe)) == heun.stats.full


def _hand_cached_output(kind, den, x1, t1, x2, t2):
    """The second of two calls with the deep part's output at call 1 put in by hand (forward
    hooks that replace the deepest skipped module's output): the definition of a cached call."""
    net = _net(den)
    plan = accel.plan_for(net)
    first, last = plan.modules[0], plan.modules[-1]
    seen = {}
    h1 = first.register_forward_pre_hook(lambda m, a, *k: seen.__setitem__("in", a[0] if a else None))
    h2 = last.register_forward_hook(lambda m, a, o: seen.__setitem__("out", o))
    with torch.no_grad():
        den.predict(x1, t1)
        stored = dict(seen)
        if plan.mode == "replay":
            h3 = last.register_forward_hook(lambda m, a, o: stored["out"])
        else:  # residual: this call's input to the first skipped block plus the stored change
            h3 = last.register_forward_hook(lambda m, a, o: seen["in"] + (stored["out"] - stored["in"]))
        out = den.predict(x2, t2).x0
    for h in (h1, h2, h3):
        h.remove()
    return out


@pytest.mark.parametrize("kind", ["unet", "dit", "diffusers-unet2d"])
def test_a_cached_call_is_the_network_with_its_deep_output_replaced(kind):
    den = _model(kind)
    x1, x2 = _noise(seed=1), _noise(seed=2)
    expected = _hand_cached_output(kind, den, x1, 0.7, x2, 0.6)
    cached = accel.FeatureCache(den, every=2)
    with torch.no_grad():
        cached.predict(x1, 0.7)
        got = cached.predict(x2, 0.6).x0
        fresh = den.predict(x2, 0.6).x0
    assert cached.stats.full == 1 and cached.stats.cached == 1
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert (got - fresh).abs().max() > 1e-6


def _run_with_resampling(den, x, idx, at, solver="dpmpp-2m", steps=8):
    ts = di.grids.default(den.process, steps)  # the same grid as di.sample(..., ts=ts) below
    for step in iterate(den, di.solvers.get(solver), x, ts):
        if step.i == at:
            reselect(step, idx, step.den.select(idx))
    return step.x


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("schedule", [{"every": 3}, {"threshold": 0.02}])
def test_resampled_particles_continue_exactly_as_if_run_in_that_order(kind, schedule):
    """SMC's resampling (``reselect`` with ``Step.den = den.select(idx)``) mid-run: every
    particle ends where it would have, had the batch ``x_T[idx]`` been solved from the start
    with the same refresh schedule (cached features gathered, not mixed up or reset)."""
    den = _model(kind)
    x = _noise()
    idx = torch.tensor([2, 2, 0, 3])
    with torch.no_grad():
        resampled = _run_with_resampling(accel.FeatureCache(den, **schedule), x, idx, at=3)
        from_scratch = di.sample(accel.FeatureCache(den.select(idx), **schedule), x[idx], solver="dpmpp-2m",
                                 ts=di.grids.default(den.process, 8)).x
    assert torch.equal(resampled, from_scratch)


def test_resampling_under_classifier_free_guidance_gathers_both_halves():
    """The cache outside CFG sees a network batch of ``2B`` rows (``[x, x]``); a selection
    gathers the conditional and the unconditional rows of each particle."""
    den = _ours("unet")
    net = den.net
    base = di.Denoiser(net, den.process, "eps")
    y = torch.tensor([0, 1, 2, 1])
    idx = torch.tensor([3, 0, 0, 1])
    make = lambda labels: accel.FeatureCache(  # noqa: E731
        ClassifierFreeGuidance(base.bind(label=labels), scale=2.0, null_label=3), every=2)
    x = _noise()
    with torch.no_grad():
        resampled = _run_with_resampling(make(y), x, idx, at=2)
        from_scratch = di.sample(make(y[idx]), x[idx], solver="dpmpp-2m", steps=8).x
        exact = di.sample(accel.FeatureCache(ClassifierFreeGuidance(base.bind(label=y), 2.0, 3), every=1), x,
                          solver="dpmpp-2m", steps=8).x
        uncached = di.sample(ClassifierFreeGuidance(base.bind(label=y), 2.0, 3), x, solver="dpmpp-2m", steps=8).x
    assert torch.equal(resampled, from_scratch)
    assert torch.equal(exact, uncached)
    with pytest.raises(TypeError, match="must wrap guidance"):
        ClassifierFreeGuidance(accel.FeatureCache(base.bind(label=y), every=2), 2.0, 3)


def test_a_new_run_starts_with_an_empty_cache():
    """Sampling twice with one cached model gives the same samples (the second solve starts
    at a higher time, so the first run's features are dropped); so does a row-permuted batch
    at the same grid point without ``select``-ing (a new batch, not a continuation)."""
    den = _ours("unet")
    cached = accel.FeatureCache(den, every=3)
    x = _noise()
    with torch.no_grad():
        a = di.sample(cached, x, solver="ddim", steps=5).x
        b = di.sample(cached, x, solver="ddim", steps=5).x
        assert cached.stats.full == 4
        ts = di.grids.default(den.process, 5)
        point = di.grids.Grid.of(den.process, ts).point(2)
        cached.predict(x, ts[2])  # a tensor time, then the same time as a grid point: a new run
        before = cached.stats.full
        cached.predict(x.flip(0), point)
        cached.predict(x.flip(0), float(ts[2]))  # same time, not the same grid point: a new run
        assert cached.stats.full == before + 2
    assert torch.equal(a, b)


def test_row_decisions_never_depend_on_the_other_rows():
    """With a threshold each row refreshes on its own signal: a row's sample is the same alone
    or in a batch (up to the network's batched round-off), and threshold 0 refreshes every
    row whose feature moved (bitwise the uncached model), infinity only the first call."""
    den = _ours("unet")
    x = _noise()
    with torch.no_grad():
        batch = di.sample(accel.FeatureCache(den, threshold=0.03), x, solver="dpmpp-2m", steps=10).x
        alone = torch.cat([di.sample(accel.FeatureCache(den.select(torch.tensor([i])), threshold=0.03), x[i:i + 1],
                                     solver="dpmpp-2m", steps=10).x for i in range(B)])
        zero = accel.FeatureCache(den, threshold=0.0)
        exact = di.sample(zero, x, solver="dpmpp-2m", steps=10).x
        never = accel.FeatureCache(den, threshold=float("inf"))
        di.sample(never, x, solver="dpmpp-2m", steps=10)
        uncached = di.sample(den, x, solver="dpmpp-2m", steps=10).x
    torch.testing.assert_close(batch, alone, rtol=0, atol=1e-10)
    assert torch.equal(exact, uncached)
    assert never.stats.full == 1 and never.stats.cached == 9


def test_smc_runs_with_a_cached_model():
    den = _ours("unet")
    cached = accel.FeatureCache(den.select(torch.zeros(6, dtype=torch.long)), every=2)
    reward = lambda x: -x.reshape(x.shape[0], -1).pow(2).mean(1)  # noqa: E731
    with torch.no_grad():
        res = di.scaling.smc(cached, reward, n_particles=6, shape=(1, 8, 8), solver="ddpm", steps=6, seed=0,
                             dtype=F64, ess_threshold=1.0)
    assert res.info["resampled"], "the test needs at least one resampling"
    assert torch.isfinite(res.x).all()
    assert cached.stats.cached > 0


class _TwoCalls(di.DenoiserBase):
    def __init__(self, den):
        self.den, self.process, self._counter = den, den.process, den._counter

    def predict(self, x, t):
        a, b = self.den.predict(x, t), self.den.predict(x, t)
        return di.Prediction(0.5 * (a.x0 + b.x0), 0.5 * (a.eps + b.eps))


def test_clear_errors():
    den = _ours("unet")
    with pytest.raises(ValueError, match="schedule"):
        accel.FeatureCache(den)
    with pytest.raises(ValueError, match="every must"):
        accel.FeatureCache(den, every=0)
    with pytest.raises(ValueError, match="depth"):
        accel.FeatureCache(den, every=2, depth=4)
    with pytest.raises(ValueError, match="start"):
        accel.FeatureCache(_ours("dit"), every=2, start=3, stop=2)
    mlp = di.Denoiser(di.nets.MLPDenoiser(2), di.VP())
    with pytest.raises(TypeError, match="supported: diffinfer.nets.UNet"):
        accel.FeatureCache(mlp, every=2)
    with pytest.raises(RuntimeError, match="one network call per prediction"):
        with torch.no_grad():
            accel.FeatureCache(_TwoCalls(den), every=2).predict(_noise(), 0.5)
    # the network is left as it was after an error and after use
    assert all("forward" not in m.__dict__ for m in den.net.modules())


def test_accel_loads_lazily():
    """``import diffinfer`` does not load ``diffinfer.accel``; ``di.accel`` loads no submodule
    until a name is used; an unknown name raises AttributeError."""
    import subprocess
    import sys
    code = ("import sys, diffinfer as di; assert 'diffinfer.accel' not in sys.modules; "
            "a = di.accel; assert 'diffinfer.accel.cache' not in sys.modules; "
            "a.FeatureCache; assert 'diffinfer.accel.cache' in sys.modules; "
            "assert not hasattr(a, 'nonexistent')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))


def test_threshold_refreshes_exactly_the_rows_whose_shallow_feature_moved():
    """Oracle for ``threshold``: the shallow feature entering the deep part depends only on
    ``(x, t)``, so the refresh rows follow from the uncached network's features by the rule
    "relative change since the row's last refresh > delta". Refreshed rows are the uncached
    model's output; the others are not (their deep features are old)."""
    den = _ours("unet")
    plan = accel.plan_for(den.net)
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(B, 1, 8, 8, generator=g, dtype=F64)
    drift = torch.randn(B, 1, 8, 8, generator=g, dtype=F64) * torch.tensor([0.0, 0.02, 0.08, 0.3],
                                                                          dtype=F64).reshape(B, 1, 1, 1)
    calls = [(x0 + n * drift, 0.8 - 0.001 * n) for n in range(8)]
    feats = []
    hook = plan.modules[0].register_forward_pre_hook(lambda m, a: feats.append(a[0].detach().clone()))
    with torch.no_grad():
        plain = [den.predict(x, t).x0 for x, t in calls]
    hook.remove()
    delta = 0.05
    ref, expected = feats[0].clone(), [torch.ones(B, dtype=torch.bool)]
    for f in feats[1:]:
        change = (f - ref).reshape(B, -1).norm(dim=1) / ref.reshape(B, -1).norm(dim=1)
        mask = change > delta
        ref[mask] = f[mask]
        expected.append(mask)
    assert 0 < int(torch.stack(expected[1:]).sum()) < B * 7, "the drifts must refresh some rows, not all"
    cached = accel.FeatureCache(den, threshold=delta)
    with torch.no_grad():
        for (x, t), want, mask in zip(calls, plain, expected):
            got = cached.predict(x, t).x0
            assert torch.equal(got[mask], want[mask])
            stale = (got - want).reshape(B, -1).abs().amax(1) > 0  # [B]
            assert torch.equal(stale, ~mask)
    assert cached.stats.rows_refreshed == int(torch.stack(expected).sum())
    assert cached.stats.full == sum(bool(m.any()) for m in expected)
