"""Tractable-model steering (Liu et al. 2024) against exact Gaussian-mixture conditionals."""
import pytest
import torch

import diffinfer as di
from diffinfer.inverse_steering import TractableSteering, mixture_from_sklearn
from diffinfer.toys import GaussianMixture
from diffinfer.toys import random_problem as rp
from diffinfer.toys.posterior import linear_gaussian_posterior

F64 = torch.float64
TAU = 1e-3  # the inpainting measurement's noise: a near-exact conditioning
N = 500
#: seeds fixed before measuring: the first four of 0..19 whose exact conditional keeps two
#: components of mass >= 0.05 under the mask below (a one-mode answer tests the masses little)
SEEDS = (1, 5, 8, 10)
#: a sampler within this many floors (the largest of 8 distances between two exact sample
#: sets of size N) counts as exact; one exact pair exceeds its own floor rarely
K_FLOOR = 1.5


def _problem(seed):
    """The seed's prior, a mask observing ``D // 2`` coordinates (drawn from the seed), ``y``
    (the prior draw ``x_true`` on them) and the exact conditional of the missing ones."""
    pr = rp.random_problem(seed)
    D = pr.dim
    obs = torch.zeros(D, dtype=torch.bool)
    obs[torch.randperm(D, generator=torch.Generator().manual_seed(seed))[: D // 2]] = True
    post = linear_gaussian_posterior(pr.prior, torch.eye(D, dtype=F64)[obs], pr.x_true[obs], TAU)
    U = (~obs).nonzero().squeeze(1)
    target = GaussianMixture(post.means[:, U], post.covs[:, U][:, :, U], post.weights)
    y = torch.where(obs, pr.x_true, torch.zeros_like(pr.x_true))
    return pr, obs, y, U, target, post


def test_seed_choice_rule():
    """The fixed seeds are the ones the rule in ``SEEDS``'s comment picks."""
    picked = [s for s in range(20) if int((_problem(s)[4].weights >= 0.05).sum()) >= 2][:4]
    assert tuple(picked) == SEEDS


@pytest.mark.parametrize("seed", [1, 3])
def test_posterior_target_is_exact_conditional_denoiser(seed):
    """The steering target ``E[x0_U | x_t, y_O]`` equals the exact posterior mixture's ideal
    denoiser (``toys``) on the missing coordinates, at several ``t`` (float64)."""
    pr, obs, y, U, _, post = _problem(seed)
    p = di.VP()
    x0 = post.sample(16, seed=4)
    st = TractableSteering(pr.prior.denoiser(p), pr.prior, obs.to(F64), y.expand(16, -1), noise_std=TAU)
    for t in (0.05, 0.3, 0.7, 0.95):
        xt = p.add_noise(x0, torch.randn(x0.shape, dtype=F64, generator=torch.Generator().manual_seed(5)), t)
        mine = st._target(xt, torch.tensor(t, dtype=F64))
        exact = post.posterior_mean(xt, p, t)[:, U]
        assert torch.allclose(mine, exact, atol=1e-4), float((mine - exact).abs().max())


def test_conditional_target_and_weight_zero():
    """``target='conditional'`` is ``E[x_U | y_O]``; ``weight=0`` returns the model's ``x0``
    with the observed entries replaced by ``y``."""
    pr, obs, y, U, target, _ = _problem(5)
    den = pr.prior.denoiser(di.VP())
    x = torch.randn(8, pr.dim, dtype=F64, generator=torch.Generator().manual_seed(0))
    pred = TractableSteering(den, pr.prior, obs.to(F64), y, target="conditional", noise_std=TAU).predict(x, 0.4)
    assert torch.allclose(pred.x0[:, U], target.mean().expand(8, -1), atol=1e-10)
    assert torch.equal(pred.x0[:, obs], y[obs].expand(8, -1))
    pred0 = TractableSteering(den, pr.prior, obs.to(F64), y, weight=0.0).predict(x, 0.4)
    ref = den.predict(x, 0.4).x0
    assert torch.allclose(pred0.x0[:, U], ref[:, U], atol=1e-12)
    c = di.VP().at(0.4)
    assert torch.allclose(pred0.eps, (x - float(c.alpha) * pred0.x0) / float(c.sigma), atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_steered_sampler_is_exact_when_tractable_is_prior(seed):
    """Exact denoiser + the same mixture as the tractable model, ``weight=1``: the PF-ODE
    (Heun, 40 steps) samples ``p(x_U | x_O = y_O)``: sliced Wasserstein and component
    masses within ``K_FLOOR`` floors; a mismatched tractable model (one Gaussian with the
    prior's moments) is beyond them."""
    pr, obs, y, U, target, _ = _problem(seed)
    fl = rp.floors(target, N, repeats=8)
    den = pr.prior.denoiser(di.VP())
    x = di.sample(TractableSteering(den, pr.prior, obs.to(F64), y, noise_std=TAU), shape=(N, pr.dim),
                  solver="heun", steps=40, seed=0, dtype=F64).x
    assert torch.equal(x[:, obs], y[obs].expand(N, -1))
    sc = rp.score(x[:, U], target)
    assert sc["sw"] <= K_FLOOR * fl["sw"], (sc, fl)
    assert sc["mass"] <= K_FLOOR * fl["mass"], (sc, fl)
    single = GaussianMixture(pr.prior.mean()[None], pr.prior.covariance()[None])
    xm = di.sample(TractableSteering(den, single, obs.to(F64), y, noise_std=TAU), shape=(N, pr.dim),
                   solver="heun", steps=40, seed=0, dtype=F64).x
    assert rp.score(xm[:, U], target)["sw"] > K_FLOOR * fl["sw"]


def test_stochastic_solver_exact():
    """The same with DDPM (200 steps, ancestral): a stochastic solver, one seed."""
    pr, obs, y, U, target, _ = _problem(SEEDS[0])
    fl = rp.floors(target, N, repeats=8)
    st = TractableSteering(pr.prior.denoiser(di.VP()), pr.prior, obs.to(F64), y, noise_std=TAU)
    x = di.sample(st, shape=(N, pr.dim), solver="ddpm", steps=200, seed=0, dtype=F64).x
    sc = rp.score(x[:, U], target)
    assert sc["sw"] <= K_FLOOR * fl["sw"] and sc["mass"] <= K_FLOOR * fl["mass"], (sc, fl)


def test_per_row_observations_and_select():
    """Rows with different ``y`` are steered independently: a batch equals its rows run alone."""
    pr, obs, _, U, _, _ = _problem(1)
    den = pr.prior.denoiser(di.VP())
    ys = pr.prior.sample(4, seed=3) * obs
    x = torch.randn(4, pr.dim, dtype=F64, generator=torch.Generator().manual_seed(1))
    st = TractableSteering(den, pr.prior, obs.to(F64), ys)
    both = st.predict(x, 0.5).x0
    for i in range(4):
        alone = TractableSteering(den, pr.prior, obs.to(F64), ys[i]).predict(x[i:i + 1], 0.5).x0
        assert torch.allclose(both[i:i + 1], alone, atol=1e-12)
    sub = st.select(torch.tensor([2, 0]))
    assert torch.allclose(sub.predict(x[[2, 0]], 0.5).x0, both[[2, 0]], atol=1e-12)


def test_sklearn_mixture_converts():
    """A fitted scikit-learn mixture becomes the same density (log-likelihoods agree)."""
    mixture = pytest.importorskip("sklearn.mixture")
    data = rp.random_problem(2).prior.sample(400, seed=0).numpy()
    for kind in ("full", "diag", "spherical", "tied"):
        gm = mixture.GaussianMixture(3, covariance_type=kind, random_state=0).fit(data)
        ours = mixture_from_sklearn(gm).log_prob(torch.as_tensor(data[:50]))
        assert torch.allclose(ours, torch.as_tensor(gm.score_samples(data[:50])), atol=1e-8), kind


def test_bad_input():
    pr, obs, y, _, _, _ = _problem(1)
    den = pr.prior.denoiser(di.VP())
    m = obs.to(F64)
    with pytest.raises(ValueError, match="entries"):
        TractableSteering(den, pr.prior, torch.ones(pr.dim + 1), y)
    with pytest.raises(ValueError, match="y must be"):
        TractableSteering(den, pr.prior, m, torch.zeros(3, pr.dim + 2))
    bad = y.clone()
    bad[obs.nonzero()[0]] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        TractableSteering(den, pr.prior, m, bad)
    with pytest.raises(ValueError, match="only 0 and 1"):
        TractableSteering(den, pr.prior, m * 0.5, y)
    with pytest.raises(ValueError, match="valid: posterior, conditional"):
        TractableSteering(den, pr.prior, m, y, target="mean")
    with pytest.raises(ValueError, match="weight"):
        TractableSteering(den, pr.prior, m, y, weight=1.5)
    with pytest.raises(TypeError, match="tractable model"):
        TractableSteering(den, object(), m, y)
    with pytest.raises(ValueError, match="rows for a batch"):
        TractableSteering(den, pr.prior, m, torch.zeros(3, pr.dim)).predict(torch.zeros(2, pr.dim, dtype=F64), 0.5)
    nan_den = di.Denoiser(lambda x, t: torch.full_like(x, float("nan")), di.VP(), prediction="x0", check=False)
    with pytest.raises(ValueError, match="NaN"):
        TractableSteering(nan_den, pr.prior, m, y).predict(torch.zeros(2, pr.dim, dtype=F64), 0.5)
