"""SuperDiff superposition and the Ito density estimator against exact mixture densities."""
import pytest
import torch

from diffinfer import VP, grids
from diffinfer.compose import ito_log_density, superpose
from diffinfer.toys.gaussian_mixture import GaussianMixture
from diffinfer.toys.tilted import mode_fractions

F64 = torch.float64
P = VP()


def _models():
    g1 = GaussianMixture([[-1.0, 1.0], [-1.0, -1.0]], 0.05 * torch.eye(2, dtype=F64).expand(2, 2, 2))
    g2 = GaussianMixture([[1.0, 1.0], [0.5, -1.0]], 0.08 * torch.eye(2, dtype=F64).expand(2, 2, 2))
    return g1, g2


def test_ito_estimate_converges_to_the_exact_log_density_change():
    g1, _ = _models()
    den = g1.denoiser(P)
    errs = []
    for steps in [25, 100, 400]:
        e = 0.0
        for seed in range(3):
            x_T = torch.randn(200, 2, dtype=F64, generator=torch.Generator().manual_seed(seed))
            x, delta = ito_log_density(den, x_T, steps=steps, seed=seed)
            ts = grids.default(P, steps)
            exact = g1.marginal(P, ts[-2]).log_prob(x) - g1.marginal(P, ts[0]).log_prob(x_T)
            e += float((delta - exact).abs().mean()) / 3
        errs.append(e)
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[2] < 0.25 * errs[0], errs  # at least order 1/2 in the step size


def test_or_samples_the_equal_mixture():
    g1, g2 = _models()
    mix = GaussianMixture(torch.cat([g1.means, g2.means]), torch.cat([g1.covs, g2.covs]))
    res = superpose(g1.denoiser(P), g2.denoiser(P), (2000, 2), mode="or", steps=150, seed=0, dtype=F64)
    assert float((res.x.mean(0) - mix.mean()).abs().max()) < 0.06
    assert float((torch.cov(res.x.T) - mix.covariance()).abs().max()) < 0.08
    assert float((mode_fractions(mix, res.x) - 0.25).abs().max()) < 0.04
    assert bool(((res.kappa >= 0) & (res.kappa <= 1)).all())
    assert res.nfe == 2 * 150  # both models once per Euler-Maruyama step, plus the final Tweedie step


def test_and_keeps_the_two_log_densities_equal():
    g1, g2 = _models()
    d1, d2 = g1.denoiser(P), g2.denoiser(P)
    gaps = {}
    for mode in ("or", "and"):
        res = superpose(d1, d2, (500, 2), mode=mode, steps=150, seed=1, dtype=F64)
        exact1 = g1.marginal(P, res.t_end).log_prob(res.x_end)
        exact2 = g2.marginal(P, res.t_end).log_prob(res.x_end)
        gaps[mode] = float((exact1 - exact2).abs().median())
        if mode == "and":
            assert torch.allclose(res.log_q[:, 0], res.log_q[:, 1], atol=1e-6)  # by construction
    assert gaps["and"] < 1.0 and gaps["and"] < 0.1 * gaps["or"], gaps


def test_errors():
    g1, g2 = _models()
    with pytest.raises(ValueError, match="valid: or, and"):
        superpose(g1.denoiser(P), g2.denoiser(P), (4, 2), mode="xor")
    with pytest.raises(ValueError, match="share one process"):
        superpose(g1.denoiser(P), g2.denoiser(VP("cosine")), (4, 2))
