"""Structured pruning (diffinfer.accel.prune): the surgery is exact, the importance score
finds a dead unit, the learned masks train through the checkpointed sampler, and the pruned
network runs with every solver."""
import pytest
import torch
from torch import nn

import diffinfer as di
from diffinfer.accel import prune as P
from diffinfer.accel.network import count_parameters, replace_network
from diffinfer.nets import DiT, MLPDenoiser, UNet

F64 = torch.float64


def _randomised(net: nn.Module, seed: int) -> nn.Module:
    """``net`` in float64 with every parameter redrawn (zero-initialised output layers and
    adaLN gates would otherwise hide a wrong surgery)."""
    g = torch.Generator().manual_seed(seed)
    net = net.double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=F64))
    return net.eval()


def small_unet(seed=0):
    return _randomised(UNet(in_channels=1, channels=(16, 32), emb_dim=32, num_classes=10), seed)


def small_dit(seed=0):
    return _randomised(DiT(in_channels=1, image_size=8, patch=2, d_model=16, depth=2, n_heads=2, mlp_ratio=2.0,
                           emb_dim=32, num_classes=0), seed)


def small_mlp(seed=0):
    return _randomised(MLPDenoiser(3, hidden=24, depth=2), seed)


def _inputs(kind, seed=1, n=6):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=F64)
    if kind == "mlp":
        return (torch.randn(n, 3, generator=g, dtype=F64), t), {}
    x = torch.randn(n, 1, 8, 8, generator=g, dtype=F64)
    return (x, t), ({"label": torch.arange(n) % 11} if kind == "unet" else {})


NETS = {"unet": small_unet, "dit": small_dit, "mlp": small_mlp}


def _dead(net, site, unit):
    """Zero the outgoing weights (the consumer's input columns) of one unit."""
    consumer = net.get_submodule(site.name).get_submodule(site.consumer)
    with torch.no_grad():
        consumer.weight[:, unit * site.unit_size:(unit + 1) * site.unit_size] = 0.0


@pytest.mark.parametrize("kind", list(NETS))
def test_pruning_nothing_is_bitwise_the_original(kind):
    net = NETS[kind]()
    sites = P.find_sites(net)
    keep = torch.ones(P.n_units(sites), dtype=torch.bool)
    (x, t), cond = _inputs(kind)
    new = P.prune(net, keep, sites)
    assert new is not net and count_parameters(new) == count_parameters(net)
    with torch.no_grad():
        assert torch.equal(new(x, t, **cond), net(x, t, **cond))


def test_pruning_nothing_is_bitwise_the_bundled_digits_model():
    den = di.zoo.load("digits")
    sites = P.find_sites(den.net)
    assert [s.name for s in sites] == ["down.0", "down.1", "down.2", "mid", "up.0", "up.1", "up.2"]
    assert all(s.n_units == 8 for s in sites)  # one GroupNorm group (8 per block) per unit
    new = P.pruned_denoiser(den, torch.ones(P.n_units(sites), dtype=torch.bool), sites)
    g = torch.Generator().manual_seed(0)
    x, t, y = torch.randn(4, 1, 8, 8, generator=g), torch.rand(4, generator=g), torch.arange(4)
    assert torch.equal(new.bind(label=y).raw(x, t), den.bind(label=y).raw(x, t))


@pytest.mark.parametrize("kind", list(NETS))
def test_removal_is_the_masked_network_and_a_dead_unit_changes_nothing(kind):
    """Removing units computes what the network computes with their channels multiplied by
    0 before the consumer (an independent reference: a hook, no surgery), for live units;
    and removing a unit whose outgoing weights are zero leaves the output unchanged."""
    net = NETS[kind]()
    sites = P.find_sites(net)
    (x, t), cond = _inputs(kind)
    g = torch.Generator().manual_seed(3)
    keep = torch.rand(P.n_units(sites), generator=g) > 0.4
    for s in sites:  # every site keeps a unit
        keep[s.offset] = True
    with torch.no_grad():
        with P.masked(net, sites, keep.to(F64)):
            reference = net(x, t, **cond)
        pruned = P.prune(net, keep, sites)
        out = pruned(x, t, **cond)
    assert out.shape == reference.shape
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-12 * float(reference.abs().max()))
    assert (out - net(x, t, **cond)).abs().max() > 1e-3  # the removed units did matter

    site = sites[-1]
    _dead(net, site, 1)
    keep = torch.ones(P.n_units(sites), dtype=torch.bool)
    keep[site.offset + 1] = False
    with torch.no_grad():
        full, cut = net(x, t, **cond), P.prune(net, keep, sites)(x, t, **cond)
    torch.testing.assert_close(cut, full, rtol=0, atol=1e-12 * float(full.abs().max()))


@pytest.mark.parametrize("kind", list(NETS))
def test_pruned_shapes_and_parameter_counts(kind):
    net = NETS[kind]()
    sites = P.find_sites(net)
    keep = torch.ones(P.n_units(sites), dtype=torch.bool)
    keep[torch.tensor([s.offset for s in sites])] = False  # the first unit of every site
    new = P.prune(net, keep, sites)
    assert count_parameters(net) - count_parameters(new) == sum(s.unit_params for s in sites)
    for s in sites:
        module = new.get_submodule(s.name)
        if s.kind == "resblock":
            k = s.width - s.unit_size
            assert module.conv1.out_channels == k and module.conv2.in_channels == k
            assert module.emb.out_features == 2 * k
            assert module.norm2.num_groups == s.n_units - 1 and module.norm2.num_channels == k
        else:
            j = int(s.consumer)
            assert module[j - 2].out_features == module[j].in_features == s.width - s.unit_size
    assert P.find_sites(new)[0].width == sites[0].width - sites[0].unit_size


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_importance_ranks_a_planted_dead_unit_last(kind):
    net = NETS[kind]()
    sites = P.find_sites(net, group=2)
    site = sites[len(sites) // 2]
    _dead(net, site, 2)
    den = di.Denoiser(net, di.VP(), "eps").bind(**({"label": torch.arange(5) % 10} if kind == "unet" else {}))
    x0 = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=F64)
    scores = P.importance(den, x0, sites, times=3)
    dead = site.offset + 2
    assert scores[dead] == 0.0
    others = torch.cat([scores[:dead], scores[dead + 1:]])
    assert bool((others > 0).all())
    assert int(torch.argsort(scores)[0]) == dead
    costs = P.unit_costs(sites)
    keep = P.select(scores, sites, remove=float(costs[dead] / costs.sum()))  # room for one unit: the dead one goes
    assert (~keep).nonzero().flatten().tolist() == [dead]


def test_importance_levels_are_stratified_and_conditioning_follows_the_rows():
    den = di.Denoiser(small_unet(), di.VP(), "eps")
    x0 = torch.randn(3, 1, 8, 8, dtype=F64)
    x_t, t, rows = P.noisy_batch(den, x0, times=4)
    assert x_t.shape == (12, 1, 8, 8) and rows.tolist() == [0, 1, 2] * 4
    p = den.process
    expected = p.t_min + (p.t_max - p.t_min) * (torch.arange(4, dtype=F64) + 0.5) / 4
    assert torch.equal(t, expected.repeat_interleave(3))
    # labels bound to the model go with their rows at every level: same scores as one row at a time
    y = torch.tensor([1, 5, 7])
    sites = P.find_sites(den.net)[:1]
    full = P.importance(den.bind(label=y), x0, sites, times=2, batch=5)
    assert torch.allclose(full, P.importance(den.bind(label=y), x0, sites, times=2, batch=1024), rtol=1e-12, atol=0)


def test_select_respects_budget_sites_and_random_matches_counts():
    net = small_unet()
    sites = P.find_sites(net)
    costs = P.unit_costs(sites)
    scores = torch.rand(P.n_units(sites), generator=torch.Generator().manual_seed(0), dtype=F64)
    for remove in (0.0, 0.3, 0.6, 0.95):
        keep = P.select(scores, sites, remove)
        removed = float(costs[~keep].sum())
        assert removed <= remove * float(costs.sum()) * (1 + 1e-12)
        assert all(int(s.units(keep).sum()) >= 1 for s in sites)
        rnd = P.random_like(keep, sites, seed=1)
        assert [int(s.units(rnd).sum()) for s in sites] == [int(s.units(keep).sum()) for s in sites]
        assert count_parameters(P.prune(net, rnd, sites)) == count_parameters(P.prune(net, keep, sites))
    # at 30 % the lowest score-per-parameter units go first
    keep = P.select(scores, sites, 0.3)
    key = scores / costs
    assert float(key[~keep].max()) <= float(key[keep].max())


def test_unit_macs_count_each_site_at_its_resolution():
    net = small_unet()
    sites = P.find_sites(net)
    (x, t), cond = _inputs("unet")
    macs = P.unit_macs(net, sites, x, t, **cond)
    pixels = {"down.0": 64, "down.1": 16, "mid": 16, "up.0": 16, "up.1": 64}
    for s in sites:
        b = net.get_submodule(s.name)
        per_channel = (b.conv1.in_channels * 9 + b.conv2.out_channels * 9) * pixels[s.name] + 2 * b.emb.in_features
        assert bool((s.units(macs) == per_channel * s.unit_size).all()), s.name
    dit = small_dit()
    dsites = P.find_sites(dit)
    dmacs = P.unit_macs(dit, dsites, x, t)
    assert bool((dmacs == (16 + 16) * 16).all())  # (d_model in + d_model out) x 16 tokens, one neuron per unit
    keep = P.select(torch.zeros(P.n_units(sites), dtype=F64), sites, 0.5, costs=macs)
    assert float(macs[~keep].sum()) <= 0.5 * float(macs.sum())


def test_learned_masks_train_through_the_checkpointed_sampler():
    """A few mask steps with per-step checkpointing give the logits of the same steps
    without it (the recomputed steps repeat exactly); without the budget penalty a dead
    unit gets no gradient through the sampler while every live unit does; with it, the
    soft masks move towards the budget."""
    net = small_unet()
    sites = P.find_sites(net)
    site = sites[0]
    _dead(net, site, 3)
    den = di.Denoiser(net, di.VP(), "eps").bind(label=torch.arange(4) % 10)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=F64)
    kw = dict(keep=0.6, steps=2, iterations=3, lr=1.0, solver="ddim", init=3.0, temperature=(1.0, 1.0))
    a = P.learn_masks(den, x_T, sites=sites, use_checkpoint=True, **kw)
    b = P.learn_masks(den, x_T, sites=sites, use_checkpoint=False, **kw)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-9, atol=1e-12)
    assert a.kept < float(torch.sigmoid(torch.tensor(3.0))) and a.history[-1] < a.history[0]
    free = P.learn_masks(den, x_T, sites=sites, penalty=0.0, **{**kw, "iterations": 1})
    dead = site.offset + 3
    assert float(free.logits[dead]) == 3.0
    live = torch.cat([free.logits[:dead], free.logits[dead + 1:]])
    assert bool((live != 3.0).all())
    assert net.conv_out.weight.grad is None  # the network itself is left alone


@pytest.mark.parametrize("solver", di.solvers.names())
def test_pruned_digits_model_runs_with_every_solver(solver):
    den = di.zoo.load("digits")
    sites = P.find_sites(den.net)
    scores = torch.arange(P.n_units(sites), dtype=F64)
    small = P.pruned_denoiser(den, P.select(scores, sites, 0.5), sites)
    assert count_parameters(small.net) < 0.75 * count_parameters(den.net)
    opts = {"steps": 3} if solver != "adaptive" else {"rtol": 1e-2, "atol": 1e-2}
    with torch.no_grad():
        res = di.sample(small.bind(label=torch.arange(3)), shape=(3, 1, 8, 8), solver=solver, seed=0, **opts)
    assert res.x.shape == (3, 1, 8, 8) and bool(torch.isfinite(res.x).all())
    assert res.nfe > 0


def test_clear_errors():
    net = small_unet()
    sites = P.find_sites(net)
    with pytest.raises(ValueError, match="no prunable site"):
        P.find_sites(nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"\[n_units\]"):
        P.prune(net, torch.ones(3, dtype=torch.bool), sites)
    keep = torch.ones(P.n_units(sites), dtype=torch.bool)
    keep[sites[1].offset:sites[1].offset + sites[1].n_units] = False
    with pytest.raises(ValueError, match="lose all its units"):
        P.prune(net, keep, sites)
    with pytest.raises(ValueError, match="remove must be"):
        P.select(torch.zeros(P.n_units(sites)), sites, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        P.select(torch.full((P.n_units(sites),), float("nan")), sites, 0.5)
    with pytest.raises(ValueError, match="divisible"):
        P.find_sites(small_mlp(), group=5)
    with pytest.raises(TypeError, match="Denoiser"):
        replace_network(object(), net)
