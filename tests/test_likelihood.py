"""Probability-flow likelihood against the mixture's exact log-density."""
import pytest
import torch

import diffinfer as di
from diffinfer.likelihood import log_likelihood
from diffinfer.toys import ring2d

F64 = torch.float64


@pytest.mark.parametrize("process", [di.VP(), di.RectifiedFlow(), di.VE(sigma_min=0.01, sigma_max=20.0)],
                         ids=["vp", "rf", "ve"])
def test_exact_divergence_matches_exact_log_density(process):
    gm = ring2d()
    den = gm.denoiser(process)
    x = gm.sample(6, seed=3)
    t_min = 0.01
    exact_prior = lambda y, T: gm.marginal(process, T).log_prob(y)  # noqa: E731
    res = log_likelihood(den, x, steps=80, t_min=t_min, prior=exact_prior)
    torch.testing.assert_close(res.logp, gm.marginal(process, t_min).log_prob(x), atol=1e-4, rtol=0)
    torch.testing.assert_close(res.bpd, -res.logp / (2 * torch.log(torch.tensor(2.0, dtype=F64))))
    assert res.nfe == 80 * 4


def test_default_gaussian_prior_is_close_for_vp():
    gm, p = ring2d(), di.VP()
    x = gm.sample(4, seed=1)
    res = log_likelihood(gm.denoiser(p), x, steps=60, t_min=0.01)
    torch.testing.assert_close(res.logp, gm.marginal(p, 0.01).log_prob(x), atol=5e-3, rtol=0)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_within_its_standard_error(probe):
    gm, p = ring2d(), di.VP()
    den = gm.denoiser(p)
    x = gm.sample(3, seed=2)
    exact = log_likelihood(den, x, steps=30, t_min=0.01).logp
    runs = torch.stack([log_likelihood(den, x, steps=30, t_min=0.01, divergence="hutchinson",
                                       probe=probe, seed=s).logp for s in range(24)])
    se = runs.std(0) / runs.shape[0] ** 0.5
    assert bool(((runs.mean(0) - exact).abs() < 4 * se + 1e-6).all()), (runs.mean(0) - exact, se)
    assert bool((runs.std(0) > 0).all())  # it is an estimate, not the exact value


def test_bad_options():
    den = ring2d().denoiser(di.VP())
    with pytest.raises(ValueError, match="valid: exact, hutchinson"):
        log_likelihood(den, torch.zeros(1, 2, dtype=F64), divergence="skilling")
    with pytest.raises(ValueError, match="valid: rademacher, gaussian"):
        log_likelihood(den, torch.zeros(1, 2, dtype=F64), divergence="hutchinson", probe="sphere")
