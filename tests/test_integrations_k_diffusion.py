"""k-diffusion bridge: from_k_diffusion / as_k_diffusion round trips (always) and k-diffusion's
own samplers on our models (skipped when k-diffusion is absent)."""
import pytest
import torch

import diffinfer as di
from diffinfer.integrations.k_diffusion import as_k_diffusion, from_k_diffusion, k_sigmas, load_k_diffusion
from diffinfer.toys import ring2d


def _x_T(den, ts, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=torch.float64) * float(den.process.sigma(ts[0]))


def test_as_k_diffusion_is_the_model_in_ve_variables():
    den = ring2d().denoiser(di.VP())
    model = as_k_diffusion(den)
    t = torch.tensor(0.4, dtype=torch.float64)
    x = _x_T(den, t.reshape(1))
    a, s = float(den.process.alpha(t)), float(den.process.sigma(t))
    out = model(x / a, torch.full((x.shape[0],), s / a, dtype=torch.float64))
    torch.testing.assert_close(out, den.x0(x, t))
    # on a grid, the sampler's sigma maps to the grid point's time exactly
    ts = di.grids.logsnr(den.process, 6)
    gridded = as_k_diffusion(den, ts)
    assert torch.equal(gridded.t_of(k_sigmas(den.process, ts)[:-1].float()), ts[:-1])


def test_from_k_diffusion_round_trip():
    edm = ring2d().denoiser(di.EDM())
    den = from_k_diffusion(as_k_diffusion(edm), sigma_min=0.002, sigma_max=80.0)
    assert isinstance(den.process, di.EDM) and den.prediction == "x0"
    ts = di.grids.karras(den.process, 8)
    x_T = _x_T(den, ts)
    a = di.sample(den, x_T=x_T, solver="dpmpp-2m", ts=ts).x
    b = di.sample(edm, x_T=x_T, solver="dpmpp-2m", ts=ts).x
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sampler,solver,opts", [("sample_euler", "euler", {}),
                                                 ("sample_dpmpp_2m", "dpmpp-2m", {"lower_order_final": False})])
def test_k_diffusion_samplers_on_our_model_match_ours(sampler, solver, opts):
    ks, reason = load_k_diffusion()
    if ks is None:
        pytest.skip(reason)
    den = ring2d().denoiser(di.VP())
    ts = di.grids.logsnr(den.process, 8)
    x_T = _x_T(den, ts)
    out = getattr(ks, sampler)(as_k_diffusion(den, ts), x_T / float(den.process.alpha(ts[0])),
                               k_sigmas(den.process, ts), disable=True)
    ref = di.sample(den, x_T=x_T, solver=solver, ts=ts, **opts).x
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_k_diffusion_sampler_on_a_k_diffusion_model():
    """A k-diffusion-style model (VE variables) sampled by k-diffusion and by diffinfer."""
    ks, reason = load_k_diffusion()
    if ks is None:
        pytest.skip(reason)
    k_model = as_k_diffusion(ring2d().denoiser(di.EDM()))
    den = from_k_diffusion(k_model, 0.002, 80.0)
    ts = di.grids.karras(den.process, 10)
    x_T = _x_T(den, ts)
    out = ks.sample_heun(k_model, x_T, k_sigmas(den.process, ts), disable=True)
    ref = di.sample(den, x_T=x_T, solver="heun", ts=ts, variable="sigma").x
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
