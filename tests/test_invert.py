"""Inversion round trips: DDIM inversion (tolerance per step count) and the DPM-Encoder (exact)."""
import pytest
import torch

import diffinfer as di
from diffinfer import grids
from diffinfer.invert import ddim_invert, dpm_decode, dpm_encode
from diffinfer.toys import GaussianMixture, ring2d

F64 = torch.float64


def _round_trip_error(den, x, steps, iters):
    inv = ddim_invert(den, x, steps=steps, fixed_point_iters=iters)
    assert inv.nfe == steps * (1 + iters) and len(inv.trajectory) == steps + 1
    out = di.sample(den, inv.x_T, solver="ddim", ts=inv.ts).x
    return float((out - x).abs().max())


def test_ddim_inversion_error_shrinks_with_steps():
    """Classic inversion (eps read at the lower point): max error below 0.5 / 0.15 / 0.05
    at 10 / 50 / 200 steps on the ring, and at least halving per 4x more steps."""
    gm, p = ring2d(), di.VP()
    den, x = gm.denoiser(p), gm.sample(100, seed=1)
    errs = {n: _round_trip_error(den, x, n, 0) for n in (10, 50, 200)}
    print(f"\nDDIM inversion round-trip max error by steps: {errs}")
    assert errs[10] < 0.5 and errs[50] < 0.15 and errs[200] < 0.05
    assert errs[50] < 0.5 * errs[10] and errs[200] < 0.5 * errs[50]


@pytest.mark.parametrize("process", [di.VP(), di.RectifiedFlow(), di.EDM()], ids=["vp", "rf", "edm"])
def test_fixed_point_inversion_round_trip_is_tight(process):
    """With 30 fixed-point iterations per step at 100 steps, the round trip is exact to 1e-8."""
    gm = ring2d()
    den, x = gm.denoiser(process), gm.sample(50, seed=2)
    assert _round_trip_error(den, x, 100, 30) < 1e-8


def test_ddim_inversion_of_an_eps_network():
    """The same round trip through an eps-prediction view of the exact model (float64)."""
    gm, p = ring2d(), di.VP()
    exact = gm.denoiser(p)
    eps_net = di.Denoiser(lambda x, t: exact.eps(x, t), p, prediction="eps")
    x = gm.sample(50, seed=3)
    assert _round_trip_error(eps_net, x, 50, 20) < 1e-6


STOCHASTIC = [("ddpm", {}), ("ddim", {"eta": 0.5}), ("dpmpp-2m-sde", {}), ("euler-maruyama", {})]


@pytest.mark.parametrize("solver,options", STOCHASTIC, ids=[s for s, _ in STOCHASTIC])
def test_dpm_encoder_round_trip_is_exact(solver, options):
    if solver not in di.solvers.names():
        pytest.skip(f"solver {solver!r} not registered")
    gm, p = ring2d(), di.VP()
    den, x = gm.denoiser(p), gm.sample(64, seed=4)
    latent = dpm_encode(den, x, solver=solver, steps=20, seed=5, **options)
    assert len(latent.noises) == 20 and latent.nfe == 20  # one evaluation per step
    out = dpm_decode(den, latent)
    assert float((out - x).abs().max()) < 1e-12
    # the latent is a function of each row's stream: a row alone encodes the same
    alone = dpm_encode(den, x[3:4], solver=solver, steps=20, seed=(5, [3]), **options)
    torch.testing.assert_close(alone.noises[7], latent.noises[7][3:4], rtol=1e-12, atol=1e-12)


def test_dpm_encoder_noises_tend_to_standard_normal_for_the_exact_model():
    """With the exact denoiser, DDPM's reverse kernel tends to the true one as steps shrink,
    so the encoded noises tend to N(0, I) (CycleDiffusion's latent is Gaussian): mean 0,
    and the excess std shrinks at least 3x per 4x more steps."""
    gm, p = ring2d(), di.VP()
    den, x = gm.denoiser(p), gm.sample(2000, seed=6)
    excess = []
    for steps in (10, 40):
        z = torch.cat([n.reshape(-1) for n in dpm_encode(den, x, solver="ddpm", steps=steps, seed=7).noises[:-1]])
        assert abs(float(z.mean())) < 0.02
        excess.append(float(z.std()) - 1.0)
    print(f"\nDPM-Encoder noise std - 1 at 10 / 40 steps: {excess}")
    assert 0 < excess[1] < excess[0] / 3


def test_dpm_decode_with_a_translated_model_translates():
    """CycleDiffusion: decode another model's latent. A prior shifted by d gives (almost) the
    input shifted by d: the steps commute with the shift except for x_T's alpha(t_0) d."""
    gm, p = ring2d(), di.VP()
    d = torch.tensor([0.5, -0.3], dtype=F64)
    shifted = GaussianMixture(gm.means + d, gm.covs, gm.weights)
    x = gm.sample(64, seed=8)
    latent = dpm_encode(gm.denoiser(p), x, solver="ddpm", steps=30, seed=9)
    out = dpm_decode(shifted.denoiser(p), latent)
    err = float((out - (x + d)).abs().max())
    print(f"\ntranslated decode: max |out - (x + d)| = {err:.2e} (|d| = {float(d.norm()):.2f})")
    assert err < 0.1 * float(d.norm())


def test_dpm_encoder_errors():
    gm, p = ring2d(), di.VP()
    den, x = gm.denoiser(p), gm.sample(4, seed=0)
    with pytest.raises(ValueError, match="stochastic"):
        dpm_encode(den, x, solver="heun")
    with pytest.raises(ValueError, match="above t = 0"):
        dpm_encode(den, x, ts=grids.uniform(p, 10))
    if "pc" in di.solvers.names():
        with pytest.raises(ValueError, match="needs one"):
            dpm_encode(den, x, solver="pc", steps=5)
    with pytest.raises(ValueError, match="fixed_point_iters"):
        ddim_invert(den, x, fixed_point_iters=-1)
