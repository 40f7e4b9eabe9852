"""Bridges (diffinfer.bridges): the Brownian bridge's exact transition, the bridge sampler
against the exact law of jointly Gaussian pairs, energy guidance, the model view.

Oracles are independent of the code under test: the bridge as a Gaussian process
(``Cov(x_u, x_v) = sigma^2 min(u, v) (1 - max(u, v))``) conditioned by the textbook formula,
and the sampler's exact output law with the exact (linear) denoiser propagated as
mean / covariance (``toys.gaussian_pair.bridge_sampler_law``, weights written from the
bridge's formulas, not from ``step_weights``). Monte Carlo moments are judged against the floor of two exact sample
sets of the same size (``toys.random_problem.floors``); float64 throughout."""
import math

import pytest
import torch

from diffinfer import grids
from diffinfer.bridges import (BridgeDenoiser, BridgeSampler, BrownianBridge, EnergyGuidance, bridge_loss,
                               check_bridge_model, translate)
from diffinfer.denoiser import Denoiser
from diffinfer.loop import iterate
from diffinfer.rng import make_rng
from diffinfer.toys.gaussian_mixture import GaussianMixture
from diffinfer.toys.gaussian_pair import GaussianPair, bridge_sampler_law as sampler_law

F64 = torch.float64
K_FLOOR = 2.0  # a Monte Carlo distance may be this many floors (fixed before running)
SEEDS = (0, 1, 2)


def gaussian(mean: torch.Tensor, cov: torch.Tensor) -> GaussianMixture:
    return GaussianMixture(mean.reshape(1, -1).to(F64), cov.to(F64)[None])


def moments(x: torch.Tensor, law: GaussianMixture) -> dict:
    """``toys.random_problem.score``'s mean and covariance errors (without its sliced
    Wasserstein distance, whose sorts would dominate these tests' time)."""
    x = x.reshape(x.shape[0], -1).to(F64)
    return {"mean": float((x.mean(0) - law.mean()).norm()),
            "cov": float((torch.cov(x.T) - law.covariance()).abs().max())}


def moment_floors(law: GaussianMixture, n: int, repeats: int = 8, seed: int = 10_000) -> dict:
    """``toys.random_problem.floors`` for ``moments``: the largest error of an exact set of
    size ``n`` over ``repeats`` sets."""
    out = {"mean": 0.0, "cov": 0.0}
    for r in range(repeats):
        for k, v in moments(law.sample(n, seed=seed + r), law).items():
            out[k] = max(out[k], v)
    return out


def within_floors(x: torch.Tensor, law: GaussianMixture, seed: int = 0):
    fl = moment_floors(law, x.shape[0])
    sc = moments(x, law)
    assert sc["mean"] <= K_FLOOR * fl["mean"] and sc["cov"] <= K_FLOOR * fl["cov"], (sc, fl)
    return sc, fl


def oracle_model(pair: GaussianPair, sig: float = 1.0) -> BridgeDenoiser:
    bridge = BrownianBridge(sig)
    return BridgeDenoiser(pair.denoiser_net(bridge), bridge, "x0")


def one_source(pair: GaussianPair, n: int, seed: int) -> torch.Tensor:
    _, x1 = pair.sample(1, seed=seed)
    return x1[0]


# --- the process and its exact transition ---------------------------------------------------
def test_coefficients_and_derivatives():
    br = BrownianBridge(1.7)
    t = torch.linspace(0.05, 0.95, 19, dtype=F64)
    c = br.at(t)
    torch.testing.assert_close(c.alpha, 1 - t)
    torch.testing.assert_close(c.sigma, 1.7 * torch.sqrt(t * (1 - t)))
    h = 1e-6
    fd = (br.sigma(t + h) - br.sigma(t - h)) / (2 * h)
    torch.testing.assert_close(c.d_sigma, fd, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(br.t_from_logsnr(br.logsnr(t)), t, rtol=1e-12, atol=1e-12)
    assert float(br.sigma(1.0)) == 0.0 and float(br.sigma(0.0)) == 0.0 and float(br.alpha(1.0)) == 0.0
    x0, x1, eps = torch.randn(3, 4, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
    tb = torch.tensor([0.0, 0.3, 0.8, 1.0], dtype=F64)
    xt = br.marginal(x0, x1, tb, eps)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[3], x1[3])
    torch.testing.assert_close(xt[1], 0.7 * x0[1] + 0.3 * x1[1] + 1.7 * math.sqrt(0.21) * eps[1])


def bridge_cov(sig: float, u: float, v: float) -> float:
    return sig ** 2 * min(u, v) * (1.0 - max(u, v))


@pytest.mark.parametrize("seed", SEEDS)
def test_transition_is_the_gaussian_process_conditional(seed):
    """x_s | x_t, x0, x1 from conditioning the bridge as a Gaussian process (s < t)."""
    g = torch.Generator().manual_seed(seed)
    sig = 0.3 + 2 * float(torch.rand((), dtype=F64, generator=g))
    br = BrownianBridge(sig)
    x0, x1, xt = torch.randn(3, 5, 4, dtype=F64, generator=g)
    for t, s in [(0.9, 0.2), (0.5, 0.49), (0.31, 0.0), (1.0, 0.6), (0.7, 0.35)]:
        m_t, m_s = (1 - t) * x0 + t * x1, (1 - s) * x0 + s * x1
        c_tt, c_st, c_ss = bridge_cov(sig, t, t), bridge_cov(sig, s, t), bridge_cov(sig, s, s)
        if c_tt == 0.0:  # t = 1: x_t = x1 is known; x_s keeps its marginal
            want_mean, want_var, x_at_t = m_s, c_ss, x1
        else:
            want_mean, want_var, x_at_t = m_s + (c_st / c_tt) * (xt - m_t), c_ss - c_st ** 2 / c_tt, xt
        mean, std = br.transition(x_at_t, x0, t, s)  # eta = 1 needs no x1
        torch.testing.assert_close(mean, want_mean, rtol=1e-12, atol=1e-12)
        assert std ** 2 == pytest.approx(want_var, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("eta", (0.0, 0.3, 1.0))
def test_every_eta_maps_the_marginal_to_the_marginal(eta):
    """With the exact x0, x_t ~ N((1-t) x0 + t x1, c_t^2) goes to N((1-s) x0 + s x1, c_s^2)."""
    br = BrownianBridge(1.3)
    for t, s in [(1.0, 0.8), (0.8, 0.5), (0.5, 0.1), (0.9, 0.0), (0.2, 0.19)]:
        w = br.step_weights(t, s, eta)
        assert w.w_x * (1 - t) + w.w_x0 == pytest.approx(1 - s, abs=1e-13)
        assert w.w_x * t + w.w_src == pytest.approx(s, abs=1e-13)
        c_t2, c_s2 = 1.3 ** 2 * t * (1 - t), 1.3 ** 2 * s * (1 - s)
        assert w.w_x ** 2 * c_t2 + w.noise ** 2 == pytest.approx(c_s2, abs=1e-13)
        if t < 1.0:
            assert w.noise == pytest.approx(eta * math.sqrt(1.3 ** 2 * s * (t - s) / t), abs=1e-13)
            assert (w.w_src == 0.0) == (eta == 1.0 or s == 0.0)


def constant_x0_model(x0: torch.Tensor, sig: float = 1.0) -> BridgeDenoiser:
    """A model that knows x0 (a point-mass pair): predicts ``x0`` ``[B, d]``."""
    return BridgeDenoiser(lambda x, t, source: x0.to(x.dtype).expand_as(x), BrownianBridge(sig), "x0")


def test_one_sampler_step_is_the_transition():
    """One step of BridgeSampler(eta=1) from x_t with the exact x0: bit-for-bit mean + std z
    with z each row's stream, and its moments against the closed form within floors."""
    g = torch.Generator().manual_seed(5)
    x0, x1, xt = torch.randn(3, 1, 3, dtype=F64, generator=g)
    n, t, s = 2000, 0.6, 0.25
    den = constant_x0_model(x0, 0.8).bind(source=x1.expand(n, 3))
    x = xt.expand(n, 3).contiguous()
    ts = torch.tensor([t, s, 0.0], dtype=F64)
    step = next(iterate(den, BridgeSampler(1.0), x, ts, make_rng(11, n, "cpu")))
    mean = (1 - s / t) * x0 + (s / t) * xt  # Brownian bridge x_s | x_t, x0
    std = 0.8 * math.sqrt(s * (t - s) / t)
    z = make_rng(11, n, "cpu").randn((3,), dtype=F64)
    torch.testing.assert_close(step.x, mean + std * z, rtol=1e-12, atol=1e-12)
    within_floors(step.x, gaussian(mean, std ** 2 * torch.eye(3, dtype=F64)))


def test_deterministic_step_keeps_the_noise():
    """eta = 0 after the first step: x_s = (1-s) x0 + s x1 + (c_s / c_t) (x_t - (1-t) x0 - t x1)."""
    g = torch.Generator().manual_seed(6)
    x0, x1 = torch.randn(2, 7, 4, dtype=F64, generator=g)
    ts = torch.tensor([1.0, 0.7, 0.4, 0.0], dtype=F64)
    den = constant_x0_model(x0).bind(source=x1)
    steps = list(iterate(den, BridgeSampler(0.0), x1.clone(), ts, make_rng(2, 7, "cpu")))
    c = lambda u: math.sqrt(u * (1 - u))  # noqa: E731
    z = make_rng(2, 7, "cpu").randn((4,), dtype=F64)
    torch.testing.assert_close(steps[0].x, 0.3 * x0 + 0.7 * x1 + c(0.7) * z, rtol=1e-12, atol=1e-12)
    want = 0.6 * x0 + 0.4 * x1 + (c(0.4) / c(0.7)) * (steps[0].x - 0.3 * x0 - 0.7 * x1)
    torch.testing.assert_close(steps[1].x, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(steps[2].x, x0)


# --- the sampler against the Gaussian pair's exact laws -----------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eta", (1.0, 0.0))
def test_sampler_law_is_the_exact_discretised_law(seed, eta):
    """Monte Carlo moments of translate() equal the exact law of the discretised sampler (any
    step count), whose mean is p(x0 | x1)'s exactly (the linear denoiser keeps the mean)."""
    pair = GaussianPair.random(3, seed)
    x1 = one_source(pair, 1, seed + 100)
    n, steps = 1000, 8
    ts = grids.quadratic(BrownianBridge(), steps)
    res = translate(oracle_model(pair), x1.expand(n, -1).contiguous(), ts=ts, eta=eta, seed=seed)
    assert res.nfe == steps
    m, S = sampler_law(pair, x1, 1.0, ts, eta)
    mu, _ = pair.conditional(x1[None])
    torch.testing.assert_close(m, mu[0], rtol=1e-10, atol=1e-10)
    within_floors(res.x, gaussian(m, S), seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eta", (1.0, 0.0))
def test_discretised_law_converges_to_the_conditional(seed, eta):
    """The sampler's exact output covariance tends to Cov[x0 | x1] at first order on the
    default (quadratic) grid: the error falls at least 3x per 4x steps, and is under 1% of
    |P| at 800 steps."""
    pair = GaussianPair.random(3, seed)
    x1 = one_source(pair, 1, seed + 100)
    _, P = pair.conditional(x1[None])
    errs = []
    for steps in (50, 200, 800):
        _, S = sampler_law(pair, x1, 1.0, grids.quadratic(BrownianBridge(), steps), eta)
        errs.append(float((S - P).abs().max() / P.abs().max()))
    assert errs[2] < errs[1] / 3 < errs[0] / 9, errs
    assert errs[2] < 0.01, errs


class OneStreamRNG:
    """All rows' step noise from one generator (the sampler's law does not depend on the
    streams; per-row streams cost one generator call per row and step)."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def randn_like(self, x):
        return torch.randn(x.shape, generator=self.g, dtype=x.dtype)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eta", (1.0, 0.0))
def test_sampler_gives_the_exact_conditional(seed, eta):
    """The sampler from a source x1 with the exact denoiser samples p(x0 | x1) within floors,
    at a step count whose exact discretisation bias is below a quarter floor."""
    pair = GaussianPair.random(3, seed)
    x1 = one_source(pair, 1, seed + 100)
    mu, P = pair.conditional(x1[None])
    law = gaussian(mu[0], P)
    n, steps = 2000, 800
    ts = grids.quadratic(BrownianBridge(), steps)
    fl = moment_floors(law, n)
    _, S = sampler_law(pair, x1, 1.0, ts, eta)
    assert float((S - P).abs().max()) < fl["cov"] / 4, (float((S - P).abs().max()), fl)
    src = x1.expand(n, -1).contiguous()
    *_, last = iterate(oracle_model(pair).bind(source=src), BridgeSampler(eta), src, ts, OneStreamRNG(seed))
    within_floors(last.x, law, seed=seed)


def test_rows_are_bitwise_the_same_alone_or_in_a_batch():
    pair = GaussianPair.random(2, 3)
    _, x1 = pair.sample(5, seed=1)
    full = translate(oracle_model(pair), x1, steps=6, seed=(4, range(5))).x
    alone = translate(oracle_model(pair), x1[3:4], steps=6, seed=(4, [3])).x
    assert torch.equal(full[3:4], alone)


# --- energy guidance ------------------------------------------------------------------------
@pytest.mark.parametrize("seed", (0, 1))
def test_energy_guidance_is_the_exact_tilt(seed):
    """A linear energy E = -r . x0 through the exact denoiser is the exact tilted denoiser at
    t < 1: MC moments equal the exact law (unguided first step, tilted after), which tends to
    N(mu + P r, P)."""
    pair = GaussianPair.random(3, seed)
    x1 = one_source(pair, 1, seed + 100)
    r = torch.randn(3, dtype=F64, generator=torch.Generator().manual_seed(seed + 7))
    n, steps = 1000, 8
    guided = EnergyGuidance(oracle_model(pair).bind(source=x1.expand(n, -1)), lambda x0: -(x0 @ r), scale=1.0)
    ts = grids.quadratic(BrownianBridge(), steps)
    res = translate(guided, x1.expand(n, -1).contiguous(), ts=ts, seed=seed, bind=None)
    m, S = sampler_law(pair, x1, 1.0, ts, 1.0, r=r)
    within_floors(res.x, gaussian(m, S), seed=seed)
    mu_r, P = pair.tilted(x1[None], r)
    m_fine, S_fine = sampler_law(pair, x1, 1.0, grids.quadratic(BrownianBridge(), 800), 1.0, r=r)
    shift = float((P @ r).norm())
    assert float((m_fine - mu_r[0]).norm()) < 0.01 * shift
    assert float((m - mu_r[0]).norm()) > 0.05 * shift  # the first step's unguided draw, visible at 8 steps
    assert float((S_fine - P).abs().max()) < 0.01 * float(P.abs().max())


# --- the model view and its errors ----------------------------------------------------------
def test_bridge_denoiser_converts_in_the_shifted_variable():
    """An eps-predicting network gives the same x0 as the x0 one, and eps satisfies
    x_t = (1-t) x0 + t x1 + c_t eps (the source term included)."""
    pair = GaussianPair.random(3, 4)
    br = BrownianBridge(1.2)
    net0 = pair.denoiser_net(br)

    def eps_net(x, t, source):
        tb = t.reshape(-1, 1)
        return (x - tb * source - (1 - tb) * net0(x, t, source)) / (1.2 * torch.sqrt(tb * (1 - tb)))

    x0, x1 = pair.sample(6, seed=2)
    t = torch.tensor([0.1, 0.3, 0.5, 0.6, 0.8, 0.95], dtype=F64)
    xt = br.marginal(x0, x1, t, torch.randn(6, 3, dtype=F64, generator=torch.Generator().manual_seed(3)))
    p0 = BridgeDenoiser(net0, br, "x0").bind(source=x1).predict(xt, t)
    pe = BridgeDenoiser(eps_net, br, "eps").bind(source=x1).predict(xt, t)
    torch.testing.assert_close(pe.x0, p0.x0, rtol=1e-10, atol=1e-10)
    c = br.at(t)
    torch.testing.assert_close((1 - t)[:, None] * p0.x0 + t[:, None] * x1 + c.sigma[:, None] * p0.eps, xt)
    sel = BridgeDenoiser(net0, br, "x0").bind(source=x1).select(torch.tensor([4, 1]))
    assert isinstance(sel, BridgeDenoiser)
    torch.testing.assert_close(sel.predict(xt[[4, 1]], t[[4, 1]]).x0, p0.x0[[4, 1]])


def test_clear_errors():
    pair = GaussianPair.random(2, 0)
    den = oracle_model(pair)
    x1 = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="eta must be in"):
        BridgeSampler(1.5)
    with pytest.raises(ValueError, match="source"):
        den.predict(x1, 0.5)  # not bound
    with pytest.raises(ValueError, match="shape"):
        den.bind(source=torch.zeros(2, 2, dtype=F64)).predict(x1, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        translate(den, torch.full((3, 2), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match="starts at the source"):
        translate(den, x1, ts=torch.tensor([0.9, 0.5, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="needs the source"):  # eta < 1 below t = 1 cannot know x1
        BridgeSampler(0.0).init(den.bind(source=x1), x1, torch.tensor([0.9, 0.5, 0.0], dtype=F64), make_rng(0, 3, "cpu"))
    with pytest.raises(ValueError, match="BrownianBridge"):
        check_bridge_model(Denoiser(lambda x, t: x, di_vp(), "eps"))
    with pytest.raises(ValueError, match="BridgeDenoiser"):
        check_bridge_model(Denoiser(lambda x, t: x, BrownianBridge(), "eps"))
    with pytest.raises(TypeError, match="BrownianBridge"):
        BridgeDenoiser(lambda x, t, source: x, di_vp(), "x0")
    with pytest.raises(ValueError, match="sigma"):
        BrownianBridge(0.0)
    with pytest.raises(ValueError, match="1 >= t > s"):
        BrownianBridge().step_weights(0.3, 0.5)


def di_vp():
    from diffinfer import VP
    return VP()


def test_bridge_loss_regresses_x0_on_the_marginal():
    br = BrownianBridge(0.9)
    seen = {}

    def net(x, t, source):
        seen.update(x=x, t=t, source=source)
        return torch.zeros_like(x)

    g = torch.Generator().manual_seed(0)
    x0, x1, eps = torch.randn(3, 16, 4, dtype=F64, generator=g)
    t = torch.rand(16, dtype=F64, generator=g)
    loss = bridge_loss(BridgeDenoiser(net, br, "x0"), x0, x1, t=t, eps=eps)
    torch.testing.assert_close(seen["x"], br.marginal(x0, x1, t, eps))
    assert torch.equal(seen["source"], x1) and torch.equal(seen["t"], t)
    torch.testing.assert_close(loss, x0.pow(2).mean())
    with pytest.raises(TypeError):
        bridge_loss(BridgeDenoiser(net, br, "eps"), x0, x1)


def test_gaussian_pair_oracle():
    """Cov[x0 | x1] is the inverse of the joint precision's x0 block; the denoiser is mu at
    t = 1 and the identity (x_t = x0) at t = 0; E[x0 | x_t, x1] matches regression on samples."""
    pair = GaussianPair.random(3, 9)
    prec = torch.linalg.inv(pair.cov)
    torch.testing.assert_close(pair.P, torch.linalg.inv(prec[:3, :3]), rtol=1e-10, atol=1e-12)
    br = BrownianBridge(0.7)
    net = pair.denoiser_net(br)
    x0, x1 = pair.sample(5, seed=1)
    mu, _ = pair.conditional(x1)
    torch.testing.assert_close(net(x1, torch.ones(5, dtype=F64), source=x1), mu)
    torch.testing.assert_close(net(x0, torch.zeros(5, dtype=F64), source=x1), x0, rtol=1e-10, atol=1e-10)
    # least squares of x0 on (x_t, x1) over many draws at t = 0.4: the same linear map
    n, t = 200_000, 0.4
    x0, x1 = pair.sample(n, seed=2)
    xt = br.marginal(x0, x1, t, torch.randn(n, 3, dtype=F64, generator=torch.Generator().manual_seed(3)))
    feats = torch.cat([xt, x1, torch.ones(n, 1, dtype=F64)], 1)
    coef = torch.linalg.lstsq(feats, x0).solution
    probe = feats[:4]
    resid_std = (x0 - feats @ coef).std(0)  # [3]
    se = ((probe @ torch.linalg.inv(feats.T @ feats)) * probe).sum(1).sqrt()[:, None] * resid_std  # [4, 3]
    diff = (probe @ coef - net(xt[:4], torch.full((4,), t, dtype=F64), source=x1[:4])).abs()
    assert bool((diff <= 5 * se).all()), (diff, se)  # the fitted values' standard errors
