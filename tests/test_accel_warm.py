"""Warm and mid-path starts (``sample(init=, t_start=, init_error=)``, ``accel.warm``)
against exact Gaussian-mixture oracles (derivation: ``diffinfer/accel/warm.py``).

- An estimate ``x0 + s e`` of exactly distributed ``x0``, noised to any ``t* >= t_s``
  (``sigma/alpha(t_s) = s``) and solved with the exact denoiser, gives exactly ``p0``.
- At ``t* = t_s`` the output given one estimate is the Bayes posterior ``p(x0 | x_hat)``
  (a linear-Gaussian measurement with ``A = I``, closed form for a mixture).
- The noising is the exact forward transition (bits and moments).
Tolerances: multiples of the floor of two exact sample sets of the same size
(``toys.random_problem.floors``); seeds fixed before tuning. Each exactness test has a
negative control (a start below the error level; a later start than the posterior's)
that the same tolerance rejects.
"""
import math

import pytest
import torch

import diffinfer as di
from diffinfer.accel import warm
from diffinfer.loop import truncate_grid
from diffinfer.rng import make_rng, stream_seed
from diffinfer.toys.gaussian_mixture import GaussianMixture
from diffinfer.toys.posterior import linear_gaussian_posterior
from diffinfer.toys.random_problem import floors, random_problem, score

F64 = torch.float64
N = 1000
SEEDS = (0, 1, 2, 3)
#: in floors (the floor is the worst of 8 exact pairs; on these priors the worst of 30 further
#: exact sets reaches 1.9 floors, so 2.5 is "as close as exact sampling gets")
TOL = 2.5


def _ratios(x, target, fl):
    """Sliced Wasserstein and component masses in floors. (The largest covariance-entry
    error is heavy-tailed at N = 1000: one input set of prior 2 sits at 1.0 floor and its
    warm-started outputs at up to 3 floors, while at N = 20000 they sit at 1.1; it is checked
    in the noising test, where the law is Gaussian.)"""
    sc = score(x, target, seed=3)
    return {k: sc[k] / fl[k] for k in ("sw", "mass")}


def _corrupted(prior, s, seed):
    x0 = prior.sample(N, seed=100 + seed)
    return x0 + s * torch.randn(N, prior.dim, dtype=F64, generator=torch.Generator().manual_seed(7 + seed))


@pytest.mark.parametrize("seed", SEEDS)
def test_output_law_is_exact_for_an_exactly_distributed_estimate(seed):
    prior = random_problem(seed).prior
    den = prior.denoiser(di.VP())
    fl = floors(prior, N)
    # an exact estimate (s = 0) from a fixed mid-path time, and a corrupted one from the rule (c = 1, 2)
    exact = prior.sample(N, seed=100 + seed)
    runs = [di.sample(den, init=exact, t_start=0.5, solver="dpmpp-2m", steps=20, seed=1)]
    for c in (1.0, 2.0):
        runs.append(warm.warm_start(den, _corrupted(prior, 0.3, seed), 0.3, c=c, solver="dpmpp-2m", steps=20, seed=1))
    for r in runs:
        assert r.nfe < 20  # the truncated grid: fewer steps than the full solve
        worst = max(_ratios(r.x, prior, fl).values())
        assert worst <= TOL, (seed, r.ts[0], _ratios(r.x, prior, fl))


def test_a_start_below_the_error_level_is_detectably_wrong():
    """The negative control: the rule's t* is the smallest exact start; starting at the
    level of 0.3 s (ignoring the error) leaves the error in the samples."""
    worst = []
    for seed in SEEDS:
        prior = random_problem(seed).prior
        den = prior.denoiser(di.VP())
        fl = floors(prior, N)
        t_early = warm.t_start_for(den.process, 0.3 * 0.3)
        r = di.sample(den, init=_corrupted(prior, 0.3, seed), t_start=t_early, solver="dpmpp-2m", steps=20, seed=1)
        worst.append(max(_ratios(r.x, prior, fl).values()))
    assert max(worst) > 2 * TOL, worst


@pytest.mark.parametrize("seed", (0, 1, 2))
def test_the_rule_start_samples_the_posterior_given_the_estimate(seed):
    """At t* = t_s a stochastic solver from one estimate samples p(x0 | x_hat = x0 + s e),
    the closed-form mixture posterior with A = I and noise s; at 3 t_s's level it does not."""
    prior = random_problem(seed).prior
    den = prior.denoiser(di.VP())
    s = 0.5
    xhat = prior.sample(1, seed=50 + seed) + s * torch.randn(1, prior.dim, dtype=F64,
                                                             generator=torch.Generator().manual_seed(seed))
    post = linear_gaussian_posterior(prior, torch.eye(prior.dim, dtype=F64), xhat[0], s)
    fl = floors(post, N)
    init = xhat.expand(N, -1).contiguous()
    r = warm.warm_start(den, init, s, c=1.0, solver="dpmpp-2m-sde", steps=50, seed=1)
    assert max(_ratios(r.x, post, fl).values()) <= TOL, _ratios(r.x, post, fl)
    later = warm.warm_start(den, init, s, c=3.0, solver="dpmpp-2m-sde", steps=50, seed=1)
    assert max(_ratios(later.x, post, fl).values()) > 2 * TOL


PROCESSES = {"vp": lambda: di.VP(), "vp-cosine": lambda: di.VP("cosine"), "ve": lambda: di.VE(),
             "edm": lambda: di.EDM(), "flow": lambda: di.RectifiedFlow()}


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_noising_is_the_exact_forward_transition(name):
    """x_{t*} = alpha init + sqrt(sigma^2 - alpha^2 s^2) z with z from each row's stream
    (bits), and its law N(alpha init, (sigma^2 - alpha^2 s^2) I) (moments within floors)."""
    proc = PROCESSES[name]()
    mix = GaussianMixture(torch.zeros(1, 3, dtype=F64), torch.eye(3, dtype=F64)[None])
    den = mix.denoiser(proc)
    s = 0.2
    t_star = warm.t_start_for(proc, s, c=1.5)
    n = 2000
    init = torch.tensor([[0.5, -1.0, 2.0]], dtype=F64).expand(n, -1).contiguous()
    r = di.sample(den, init=init, t_start=t_star, init_error=s, solver="ddim", steps=3, seed=3,
                  return_trajectory=True)
    x_t = r.trajectory[0]
    c = proc.at(t_star)
    a, sig = float(c.alpha), float(c.sigma)
    std = math.sqrt(sig ** 2 - (a * s) ** 2)
    z = make_rng(3, n, "cpu").randn((3,), dtype=F64)
    torch.testing.assert_close(x_t, a * init + std * z, rtol=1e-12, atol=1e-12)
    # moments against the closed form, within the floor of two exact Gaussian sets
    law = GaussianMixture((a * init[:1]), (std ** 2 * torch.eye(3, dtype=F64))[None])
    fl = floors(law, n)
    sc = score(x_t, law, seed=0)
    assert sc["mean"] <= TOL * fl["mean"] and sc["cov"] <= TOL * fl["cov"], (sc, fl)


@pytest.mark.parametrize("name", sorted(PROCESSES))
@pytest.mark.parametrize("c", (1.0, 2.5))
def test_the_rule_matches_the_noise_level_to_the_error(name, c):
    proc = PROCESSES[name]()
    for s in (0.05, 0.3, 1.0):
        t = warm.t_start_for(proc, s, c)
        co = proc.at(t)
        assert float(co.sigma / co.alpha) == pytest.approx(c * s, rel=1e-7)


def test_measured_error_is_the_error_std():
    x0 = torch.randn(4000, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
    e = torch.randn(4000, 5, dtype=F64, generator=torch.Generator().manual_seed(1))
    # the RMS of 20000 standard normals: 0.3 within 4 standard errors (0.3 / sqrt(2 * 20000))
    assert abs(warm.measure_error(x0 + 0.3 * e, x0) - 0.3) < 4 * 0.3 / math.sqrt(2 * 20000)
    with pytest.raises(ValueError, match="differ in shape"):
        warm.measure_error(x0, x0[:, :3])


def test_the_rule_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="error must be a finite std > 0"):
        warm.t_start_for(di.VP(), 0.0)
    with pytest.raises(ValueError, match="c must be >= 1"):
        warm.t_start_for(di.VP(), 0.1, c=0.5)
    with pytest.raises(ValueError, match="exceeds the process's largest sigma/alpha"):
        warm.t_start_for(di.EDM(), 500.0)


def test_the_grid_is_truncated_at_t_start():
    proc = di.VP()
    den = GaussianMixture(torch.zeros(1, 2, dtype=F64)).denoiser(proc)
    full = di.grids.resolve(proc, 20, None)
    r = di.sample(den, init=torch.zeros(4, 2, dtype=F64), t_start=0.4, solver="dpmpp-2m", steps=20, seed=0)
    assert float(r.ts[0]) == 0.4
    torch.testing.assert_close(r.ts[1:], full[full < 0.4], rtol=0, atol=0)
    assert r.nfe == len(r.ts) - 1 < 20
    torch.testing.assert_close(truncate_grid(full, float(full[3])), full[3:], rtol=0, atol=0)


@pytest.mark.parametrize("solver", ("dpmpp-2m", "ddpm"))
def test_a_start_from_pure_noise_is_the_cold_sample(solver):
    """On rectified flow alpha(1) = 0: a warm start at t* = 1 ignores the estimate and is
    bitwise the cold sample with the same seed (same streams, same grid)."""
    den = GaussianMixture(torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(0))).denoiser(
        di.RectifiedFlow())
    cold = di.sample(den, shape=(5, 2), dtype=F64, solver=solver, steps=6, seed=4).x
    hot = di.sample(den, init=torch.full((5, 2), 7.0, dtype=F64), t_start=1.0, solver=solver, steps=6, seed=4).x
    assert torch.equal(cold, hot)


def _den():
    return GaussianMixture(torch.zeros(1, 3, dtype=F64)).denoiser(di.VP())


@pytest.mark.parametrize("kwargs,match", [
    ({"t_start": 0.0}, r"t_start must be in \(0, 1\]"),
    ({"t_start": -0.2}, r"t_start must be in \(0, 1\]"),
    ({"t_start": 1.5}, r"t_start must be in \(0, 1\]"),
    ({"t_start": float("nan")}, r"t_start must be in \(0, 1\]"),
    ({"t_start": 0.5, "shape": (4, 2)}, r"init has shape \(4, 3\) but shape=\(4, 2\)"),
    ({"t_start": 0.5, "init_error": -1.0}, "init_error must be a finite std >= 0"),
    ({"t_start": 0.01, "init_error": 1.0}, "below the estimate's error level"),
    ({}, "a warm start needs init and t_start"),
])
def test_bad_warm_start_input_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        di.sample(_den(), init=torch.zeros(4, 3, dtype=F64), steps=5, seed=0, **kwargs)


def test_bad_init_is_refused():
    den = _den()
    with pytest.raises(ValueError, match="a warm start needs init and t_start"):
        di.sample(den, t_start=0.5, shape=(2, 3))
    with pytest.raises(ValueError, match="init contains NaN"):
        di.sample(den, init=torch.full((2, 3), float("nan"), dtype=F64), t_start=0.5)
    with pytest.raises(ValueError, match="the model takes"):
        den.shape = (4,)
        di.sample(den, init=torch.zeros(2, 3, dtype=F64), t_start=0.5)
    with pytest.raises(ValueError, match=r"t_start must be in \(0, 0.9946\]"):
        cos = GaussianMixture(torch.zeros(1, 3, dtype=F64)).denoiser(di.VP("cosine"))
        di.sample(cos, init=torch.zeros(2, 3, dtype=F64), t_start=1.0)


# --- chunked sequences ------------------------------------------------------------------
def test_shift_estimate_pads():
    x = torch.arange(10, dtype=F64).reshape(1, 1, 10)
    assert warm.shift_estimate(x, 3, "edge")[0, 0].tolist() == [3, 4, 5, 6, 7, 8, 9, 9, 9, 9]
    assert warm.shift_estimate(x, 3, "zero")[0, 0].tolist() == [3, 4, 5, 6, 7, 8, 9, 0, 0, 0]
    per = torch.tensor([1.0, 2.0, 3.0] * 4, dtype=F64)[None]  # period 3: the pad continues it exactly
    torch.testing.assert_close(warm.shift_estimate(per, 5, 3), torch.roll(per, -5, dims=-1), rtol=0, atol=0)
    with pytest.raises(ValueError, match="stride must be in"):
        warm.shift_estimate(x, 10)
    with pytest.raises(ValueError, match="unknown pad 'mirror'; valid: edge, zero"):
        warm.shift_estimate(x, 2, "mirror")
    with pytest.raises(ValueError, match="pad returned shape"):
        warm.shift_estimate(x, 2, lambda kept, k: kept[..., :1])


def test_chunked_warm_starts_each_chunk_from_the_shifted_previous_one():
    L = 8
    idx = torch.arange(L)
    cov = 0.8 ** (idx[:, None] - idx[None, :]).abs().to(F64)  # an AR(1) window
    den = GaussianMixture(torch.zeros(1, L, dtype=F64), cov[None]).denoiser(di.VP())
    res = warm.chunked(den, (6, L), n_chunks=4, stride=3, t_start=0.3, pad="edge", seed=5,
                       solver="dpmpp-2m", steps=10)
    assert res.sequence.shape == (6, L + 3 * 3)
    prev = res.chunks[0]
    warm_nfe = 0
    for j in range(1, 4):
        r = di.sample(den, init=warm.shift_estimate(prev, 3, "edge"), t_start=0.3, seed=stream_seed(5, j),
                      solver="dpmpp-2m", steps=10)
        assert torch.equal(r.x, res.chunks[j])
        torch.testing.assert_close(res.sequence[:, L + 3 * (j - 1): L + 3 * j], r.x[:, -3:], rtol=0, atol=0)
        prev, warm_nfe = r.x, warm_nfe + r.nfe
    assert res.nfe == 10 + warm_nfe and warm_nfe < 3 * 10
