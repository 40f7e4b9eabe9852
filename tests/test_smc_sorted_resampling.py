"""State-ordered (SQMC-style) systematic resampling: ``hilbert`` and ``sorted``.

Gerber & Chopin 2015 (``diffinfer/scaling/hilbert.py``). Checked: the Hilbert index is a
bijection with neighbouring consecutive cells (exact, small grids); every particle gets
``floor`` or ``ceil`` of ``n w_i`` copies whatever the order (property test); a set the
order visits in ``r`` contiguous runs gets ``n`` times its weight to within ``r`` copies
(exact), so the resampled fraction of a separated cluster varies far less over seeds than
under plain systematic resampling; SQMC's point sets are stratified; QMC noise lowers the
spread of a component mass; TDS resampling in these orders at every step (also SQMC) still
targets the chain's exact posterior on a coarse grid and the posterior within the suite's
bar; MCGdiff and FK-steering SMC take them; bad input.
"""
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffinfer import VP
from diffinfer.scaling.hilbert import hilbert_index, hilbert_order, principal_order
from diffinfer.scaling.mcgdiff import mcgdiff
from diffinfer.scaling.smc import (ORDERED, RESAMPLERS, get_resampler, hilbert_resample, smc, sorted_resample,
                                   systematic_resample)
from diffinfer.scaling.sqmc import sqmc_points
from diffinfer.scaling.twisted import tds
from diffinfer.toys import GaussianMixture
from diffinfer.toys.posterior import linear_gaussian_posterior
from diffinfer.toys.random_problem import component_masses, floors, random_problem, score
from diffinfer.toys.tilted import LinearGaussianReward, mode_fractions, tilted_example

F64 = torch.float64
ORDERED_RESAMPLERS = [hilbert_resample, sorted_resample]


@pytest.mark.parametrize("dim,bits", [(2, 1), (2, 3), (3, 2), (4, 2), (5, 1), (2, 5)])
def test_hilbert_index_is_a_bijection_along_neighbouring_cells(dim, bits):
    side = 1 << bits
    cells = torch.tensor(list(itertools.product(range(side), repeat=dim)), dtype=torch.int64)  # [side^D, D]
    h = hilbert_index(cells, bits)
    assert torch.equal(torch.sort(h).values, torch.arange(side ** dim))  # a bijection onto 0 .. side^D - 1
    path = cells[torch.argsort(h)]  # the cells in curve order
    steps = (path[1:] - path[:-1]).abs().sum(1)
    assert bool((steps == 1).all())  # consecutive indices: grid neighbours
    assert int(h[0]) == 0 and torch.equal(cells[int(torch.argmin(h))], torch.zeros(dim, dtype=torch.int64))


@settings(max_examples=60, deadline=None)
@given(w=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40).filter(lambda v: sum(v) > 1e-3),
       n=st.integers(1, 120), dim=st.integers(1, 5), seed=st.integers(0, 2 ** 16))
def test_offspring_counts_are_floor_or_ceil(w, n, dim, seed):
    """Systematic resampling's property, kept in any order: each particle gets ``floor`` or
    ``ceil`` of ``n w_i`` copies (so the resampler is unbiased for every particle)."""
    w = torch.tensor(w, dtype=F64)
    w = w / w.sum()
    x = torch.randn(w.numel(), dim, dtype=F64, generator=torch.Generator().manual_seed(seed))
    log_w = torch.log(w)
    for resampler in ORDERED_RESAMPLERS:
        idx = resampler(log_w, n, torch.Generator().manual_seed(seed), x=x)
        assert idx.shape == (n,) and idx.dtype == torch.long
        counts = torch.bincount(idx, minlength=w.numel()).double()
        assert bool(((counts - n * w).abs() < 1 + 1e-9).all()), (resampler.__name__, counts, n * w)


def test_given_uniforms_reproduce_systematic():
    """``u=`` (SQMC's first coordinates) at the systematic points ``(U + j) / n`` gives
    exactly the systematic draw: the ordered CDF is inverted the same way."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(40, 3, dtype=F64, generator=g)
    log_w = torch.randn(40, dtype=F64, generator=g)
    for resampler in ORDERED_RESAMPLERS:
        U = torch.rand((), dtype=F64, generator=torch.Generator().manual_seed(2))
        u = (U + torch.arange(25, dtype=F64)) / 25
        assert torch.equal(resampler(log_w, 25, torch.Generator().manual_seed(2), x=x),
                           resampler(log_w, 25, None, x=x, u=u))


def _clusters(n, dim, seed):
    """``n`` particles, half in each of two clusters 10 sds apart (randomly interleaved in
    index order), with uneven random weights: ``x [n, dim]``, ``log_w [n]``, mask of cluster A."""
    g = torch.Generator().manual_seed(seed)
    in_a = torch.rand(n, generator=g) < 0.5
    centre = torch.zeros(n, dim, dtype=F64)
    centre[:, 0] = torch.where(in_a, -5.0, 5.0).double()
    x = centre + torch.randn(n, dim, dtype=F64, generator=g)
    log_w = 0.7 * torch.randn(n, dtype=F64, generator=g)
    return x, log_w, in_a


def _runs(mask_in_order):
    """The number of contiguous runs of ``True`` in a boolean sequence."""
    m = mask_in_order.long()
    return int(m[0]) + int(((m[1:] - m[:-1]) == 1).sum())


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_a_cluster_gets_its_weight_to_within_its_runs(dim):
    """A set visited by the order in ``r`` contiguous runs gets ``n`` times its weight to
    within ``r`` copies (each run is one interval of the systematic grid); for two separated
    clusters both orders keep each cluster in few runs."""
    n = 500
    for seed in range(5):
        x, log_w, in_a = _clusters(n, dim, seed)
        w = torch.softmax(log_w, 0)
        target = n * float(w[in_a].sum())
        for resampler, order in [(hilbert_resample, hilbert_order), (sorted_resample, principal_order)]:
            runs = _runs(in_a[order(x, w)])
            assert runs <= 2  # the clusters are separated along the first principal axis
            for s in range(10):
                idx = resampler(log_w, n, torch.Generator().manual_seed(s), x=x)
                assert abs(int(in_a[idx].sum()) - target) < runs, (resampler.__name__, seed, s)


def test_ordered_resampling_has_lower_variance_than_systematic():
    """The resampled fraction of cluster A over 200 generator seeds: its sd under plain
    systematic resampling (index order: clusters interleaved) is of the binomial order
    ``sqrt(W (1 - W) / n)`` (at least a third of it), under the ordered resamplers below one
    copy, ``1 / n`` (the previous test's bound)."""
    n = 400
    x, log_w, in_a = _clusters(n, 2, 7)
    w = torch.softmax(log_w, 0)
    big_w = float(w[in_a].sum())
    binomial_sd = math.sqrt(big_w * (1 - big_w) / n)

    def sd(resampler):
        fr = torch.tensor([float(in_a[resampler(log_w, n, torch.Generator().manual_seed(s), x=x)].double().mean())
                           for s in range(200)], dtype=F64)
        assert abs(float(fr.mean()) - big_w) < 4 * binomial_sd / math.sqrt(200) + 1.0 / n  # unbiased
        return float(fr.std())

    plain = sd(systematic_resample)
    assert plain > binomial_sd / 3
    for resampler in ORDERED_RESAMPLERS:
        assert sd(resampler) < 1.0 / n < plain / 5


def test_copies_stay_together_and_orders_are_permutations():
    x = torch.randn(50, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    x = torch.cat([x, x[:10]])  # ten particles twice
    w = torch.full((60,), 1 / 60, dtype=F64)
    for order in (hilbert_order(x, w), principal_order(x, w)):
        assert torch.equal(torch.sort(order).values, torch.arange(60))
        pos = torch.empty(60, dtype=torch.long)
        pos[order] = torch.arange(60)
        assert bool(((pos[:10] - pos[50:]).abs() == 1).all())  # equal states are adjacent


def test_plain_resamplers_ignore_x():
    """Passing the state to the plain resamplers changes nothing (bitwise)."""
    log_w = torch.randn(30, dtype=F64, generator=torch.Generator().manual_seed(3))
    x = torch.randn(30, 2, dtype=F64)
    for name in ("systematic", "multinomial"):
        r = get_resampler(name)
        assert torch.equal(r(log_w, 30, torch.Generator().manual_seed(1)),
                           r(log_w, 30, torch.Generator().manual_seed(1), x=x))


#: the TDS bar of tests/test_scaling_posterior_smc.py: 2 floors in sliced Wasserstein, 0.03 in mass
SW_BAR, MASS_BAR = 2.0, 0.03


#: a coarse grid: the chain's law is far from the prior, so a wrong resampling weight shows
COARSE = torch.tensor([1.0, 0.6, 0.3, 0.15, 0.0], dtype=F64)


@pytest.mark.parametrize("resample,qmc", [("hilbert", None), ("sorted", None), ("hilbert", "sqmc")])
def test_tds_with_ordered_resampling_targets_the_chain_posterior(resample, qmc):
    """Resampling at every step on a 4-step grid: the mean of TDS's equal-weight output
    matches the mean of ``p_chain(x0) p(y | x0)`` (self-normalised importance sampling of
    40,000 plain DDPM chain draws by the likelihood; as tests/test_scaling_posterior_smc.py)
    within 4 sds, with the run's smallest ESS as its sample size."""
    from diffinfer import sample
    p = random_problem(2)
    den = p.prior.denoiser(VP())
    x0 = sample(den, shape=(40_000, p.dim), solver="ddpm", ts=COARSE, seed=123, dtype=F64).x
    w = torch.softmax(p.reward(x0), 0)
    ref, ref_ess = (w.unsqueeze(1) * x0).sum(0), float(1 / (w * w).sum())
    res = tds(den, p.reward, 4000, (p.dim,), ts=COARSE, seed=1, dtype=F64, resample=resample, ess_threshold=1.0,
              qmc=qmc, transition="ddpm")
    assert len(res.info["resampled"]) == 3
    sd = math.sqrt(float(torch.diagonal(p.target.covariance()).max()))
    tol = 4 * sd * math.sqrt(1 / min(res.info["ess"]) + 1 / ref_ess)
    assert float((res.x.mean(0) - ref).abs().max()) < tol, ((res.x.mean(0) - ref).tolist(), tol)


@pytest.mark.parametrize("seed", [0])
@pytest.mark.parametrize("resample,qmc", [("hilbert", None), ("sorted", None), ("hilbert", "sqmc")])
def test_tds_with_ordered_resampling_reaches_the_posterior(seed, resample, qmc):
    """Resampling at every step (the most the order can matter), plain and SQMC, on the
    DDPM chain (the resampler's test, not the transition's)."""
    p = random_problem(seed)
    f = floors(p.target, 1000)
    den = p.prior.denoiser(VP())
    res = tds(den, p.reward, 1000, (p.dim,), steps=100, seed=0, dtype=F64, resample=resample, ess_threshold=1.0,
              qmc=qmc, transition="ddpm")
    assert len(res.info["resampled"]) == 99  # every step but the last resampled
    s = score(res.x, p.target)
    assert s["sw"] / f["sw"] <= SW_BAR and s["mass"] <= MASS_BAR, (s["sw"] / f["sw"], s["mass"])


def test_qmc_noise_lowers_the_spread_of_a_component_mass():
    """A two-component prior under a weak measurement (the weights stay nearly even, so TDS
    is close to i.i.d. sampling; the DDPM chain): over 16 sampler seeds the sd of the first component's
    resampled mass is of the binomial order ``sqrt(W (1 - W) / N)`` for plain TDS (above half
    of it) and below half of it with QMC driving noise (path RQMC and SQMC). The mean is
    off by the 10-step chain's bias, the same for all three, and not tested here."""
    prior = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=F64),
                            torch.stack([0.5 * torch.eye(2, dtype=F64)] * 2), torch.tensor([0.3, 0.7], dtype=F64))
    meas = LinearGaussianReward(torch.tensor([[0.3, 0.3]], dtype=F64), torch.tensor([0.2], dtype=F64), 3.0)
    target = linear_gaussian_posterior(prior, meas.A, meas.y, meas.noise_std)
    den = prior.denoiser(VP())
    n = 512
    big_w = float(target.weights[0])
    binomial_sd = math.sqrt(big_w * (1 - big_w) / n)

    def sd(**options):
        m = [float(component_masses(target, tds(den, meas, n, (2,), steps=10, seed=r, dtype=F64, transition="ddpm",
                                                **options).x)[0])
             for r in range(16)]
        return float(torch.tensor(m).std())

    assert sd(qmc=None, resample="systematic") > binomial_sd / 2
    assert sd(qmc="path") < binomial_sd / 2
    assert sd(qmc="sqmc", resample="hilbert") < binomial_sd / 2


def test_mcgdiff_and_smc_take_ordered_resamplers():
    p = random_problem(0)
    f = floors(p.target, 1000)
    den = p.prior.denoiser(VP())
    res = mcgdiff(den, p.reward, 1000, (p.dim,), steps=100, seed=0, dtype=F64, resample="hilbert")
    s = score(res.x, p.target)
    assert s["sw"] / f["sw"] <= 2.5 and s["mass"] <= 0.1  # MCGdiff's measured level (test_scaling_posterior_smc)
    prior, reward, target = tilted_example(1.0)
    res = smc(prior.denoiser(VP()), reward, 3000, (2,), solver="ddpm", steps=100, seed=0, dtype=F64,
              resample="hilbert")
    assert float((mode_fractions(target, res.x) - target.weights).abs().max()) < 0.03  # test_scaling_smc's bar


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("ess_threshold", [0.25, 1.0])
def test_tds_with_path_qmc_reaches_the_posterior(seed, ess_threshold):
    """Path RQMC noise at the default threshold and resampling at every step (each
    resampling redraws the remaining noise)."""
    p = random_problem(seed)
    f = floors(p.target, 1000)
    den = p.prior.denoiser(VP())
    res = tds(den, p.reward, 1000, (p.dim,), steps=100, seed=0, dtype=F64, qmc="path", ess_threshold=ess_threshold)
    s = score(res.x, p.target)
    assert s["sw"] / f["sw"] <= SW_BAR and s["mass"] <= MASS_BAR, (s["sw"] / f["sw"], s["mass"])


def test_sqmc_points_are_uniform_strata():
    """For ``n = 2^m`` points the first coordinate of a scrambled Sobol set has exactly one
    point in each ``[k/n, (k+1)/n)`` (a net; the jitter stays inside the engine's 2^-30
    cells), ascending; the noise is finite and standard normal per coordinate."""
    g = torch.Generator().manual_seed(5)
    n = 1024
    u, z = sqmc_points(n, 3, g)
    assert u.shape == (n,) and z.shape == (n, 3)
    assert bool((u[1:] >= u[:-1]).all()) and bool(((u > 0) & (u < 1)).all())
    assert torch.equal((u * n).floor().long(), torch.arange(n))
    assert bool(torch.isfinite(z).all())
    # each coordinate of z is a net too: its normal CDF puts one point per stratum
    assert torch.equal(torch.sort((torch.special.ndtr(z) * n).floor().long(), 0).values,
                       torch.arange(n).unsqueeze(1).expand(n, 3))
    u2, _ = sqmc_points(n, 3, g)
    assert not torch.equal(u, u2)  # a fresh scrambling each call


def test_bad_inputs():
    log_w = torch.zeros(5, dtype=F64)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="valid: " + ", ".join(RESAMPLERS)):
        get_resampler("hilbrt")
    p = random_problem(0)
    den = p.prior.denoiser(VP())
    for fn in (tds, mcgdiff):
        with pytest.raises(ValueError, match="valid: multinomial, systematic, hilbert, sorted"):
            fn(den, p.reward, 8, (p.dim,), resample="sortd")
    with pytest.raises(ValueError, match="one row per weight"):
        hilbert_resample(log_w, 5, g, x=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="one row per weight"):
        systematic_resample(log_w, 5, g, x=torch.zeros(6, 2))
    for resampler in ORDERED_RESAMPLERS:
        with pytest.raises(ValueError, match="pass x"):
            resampler(log_w, 5, g)
    with pytest.raises(ValueError, match="D \\* bits <= 63"):
        hilbert_index(torch.zeros(3, 8, dtype=torch.int64), 8)
    with pytest.raises(ValueError, match="cells must lie"):
        hilbert_index(torch.tensor([[4, 0]]), 2)
    with pytest.raises(ValueError, match="resample must be one of hilbert, sorted"):
        tds(den, p.reward, 8, (p.dim,), qmc='sqmc', resample="systematic")
    with pytest.raises(ValueError, match="every step"):
        tds(den, p.reward, 8, (p.dim,), qmc='sqmc', resample="hilbert", ess_threshold=0.5)
    with pytest.raises(ValueError, match="gradient proposal"):
        tds(den, p.reward, 8, (p.dim,), qmc='sqmc', resample="hilbert", proposal="gaussian", covariance="jacobian")
    with pytest.raises(ValueError, match="valid: sqmc, path"):
        tds(den, p.reward, 8, (p.dim,), qmc="sobol")
    with pytest.raises(ValueError, match="dim <= 21201"):
        tds(den, p.reward, 8, (p.dim,), steps=4000, qmc="path")
    with pytest.raises(ValueError, match="u must hold one uniform per draw"):
        hilbert_resample(log_w, 5, g, x=torch.zeros(5, 2), u=torch.rand(4, dtype=F64))
    from diffinfer.scaling.text import text_smc
    with pytest.raises(ValueError, match="token canvases"):
        text_smc(None, None, 4, 3, resample="hilbert")
