"""Time grids: descending tensors with the stated spacing; bad grids are refused."""
import math

import pytest
import torch

import diffinfer as di
from diffinfer import grids

F64 = torch.float64


@pytest.mark.parametrize("name", grids.names())
def test_every_builder_descends_and_ends_at_zero(any_process, name):
    ends = torch.tensor([any_process.t_min, any_process.t_max], dtype=F64)
    if name in ("logsnr", "karras") and not bool(torch.isfinite(any_process.logsnr(ends)).all()):
        with pytest.raises(ValueError, match="infinite"):
            grids.get(name, any_process, 7)
        ts = grids.get(name, any_process, 7, t_max=0.99, t_min=1e-3)
        assert float(ts[-1]) == 0.0 and bool((ts[1:] < ts[:-1]).all())
        return
    ts = grids.get(name, any_process, 7)
    assert ts.dtype == F64 and ts.shape == (8,)
    assert bool((ts[1:] < ts[:-1]).all())
    assert float(ts[-1]) == 0.0 and abs(float(ts[0]) - any_process.t_max) < 1e-12 or name == "flow-shift"


def test_logsnr_grid_is_uniform_in_logsnr():
    p = di.VP()
    ts = grids.logsnr(p, 9, final_zero=False)
    lam = p.logsnr(ts)
    d = lam[1:] - lam[:-1]
    torch.testing.assert_close(d, torch.full_like(d, float(d[0])), rtol=1e-9, atol=1e-9)


def test_karras_matches_edm_formula():
    """EDM eq. 5: sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, then 0."""
    p, n, rho = di.EDM(), 10, 7.0
    ts = grids.karras(p, n)
    i = torch.arange(n, dtype=F64)
    ref = (80 ** (1 / rho) + i / (n - 1) * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho
    torch.testing.assert_close(p.sigma(ts[:-1]), ref, rtol=1e-9, atol=1e-12)
    assert float(ts[-1]) == 0.0


def test_flow_shift_matches_sd3_formula():
    p = di.RectifiedFlow()
    ts = grids.flow_shift(p, 4, shift=3.0)
    u = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=F64)
    torch.testing.assert_close(ts, 3 * u / (1 + 2 * u))


def test_quadratic_and_uniform():
    p = di.RectifiedFlow()
    torch.testing.assert_close(grids.uniform(p, 4), torch.tensor([1, 0.75, 0.5, 0.25, 0], dtype=F64))
    q = grids.quadratic(p, 4)
    torch.testing.assert_close(q, torch.tensor([1, 0.5625, 0.25, 0.0625, 0], dtype=F64))


def test_one_step_goes_straight_to_zero():
    torch.testing.assert_close(grids.logsnr(di.VP(), 1), torch.tensor([1.0, 0.0], dtype=F64))


def test_bad_grids_are_refused():
    with pytest.raises(ValueError, match="strictly descend"):
        grids.validate([0.1, 0.5, 0.0])
    with pytest.raises(ValueError, match="strictly descend"):
        grids.validate([0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        grids.validate([1.5, 0.5])
    with pytest.raises(ValueError, match="finite"):
        grids.validate([1.0, math.nan])
    with pytest.raises(ValueError, match="valid: flow-shift, karras"):
        grids.get("cosine", di.VP(), 4)
    with pytest.raises(ValueError, match="positive integer"):
        grids.uniform(di.VP(), 0)
    with pytest.raises(ValueError, match="strictly descend"):
        di.sample(di.Denoiser(lambda x, t: x, di.VP()), shape=(2, 2), ts=[0.2, 0.9, 0.0], solver="euler")
