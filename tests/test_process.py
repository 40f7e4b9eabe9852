"""Processes: closed-form derivatives, logSNR inverses, SDE coefficients, bad input."""
import pytest
import torch

import diffinfer as di
from diffinfer.grids import Grid
from diffinfer.process import _autograd_derivative, beta_table

F64 = torch.float64


def interior(p):
    lo, hi = max(p.t_min, 1e-3), min(p.t_max, 0.999)
    return torch.linspace(lo, hi, 37, dtype=F64)


def test_derivatives_match_autograd(any_process):
    t = interior(any_process)
    torch.testing.assert_close(any_process.d_alpha(t), _autograd_derivative(any_process.alpha, t), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(any_process.d_sigma(t), _autograd_derivative(any_process.sigma, t), rtol=1e-9, atol=1e-9)


def test_logsnr_inverse_round_trip(any_process):
    t = interior(any_process)
    lam = any_process.logsnr(t)
    assert bool((lam[1:] < lam[:-1]).all()), "logSNR must decrease in t"
    torch.testing.assert_close(any_process.t_from_logsnr(lam), t, rtol=0, atol=1e-7)


def test_vp_is_variance_preserving_and_matches_score_sde():
    p = di.VP("linear")
    t = torch.linspace(0, 1, 11, dtype=F64)
    torch.testing.assert_close(p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones_like(t))
    # Song et al. 2021: log alpha = -1/4 t^2 (b1 - b0) - 1/2 t b0
    torch.testing.assert_close(torch.log(p.alpha(t)), -0.25 * t ** 2 * 19.9 - 0.05 * t)
    # forward SDE of VP: f = -beta/2, g^2 = beta
    c = p.at(t[1:])
    f, g2 = c.f, c.g2
    beta = 0.1 + t[1:] * 19.9
    torch.testing.assert_close(f, -0.5 * beta)
    torch.testing.assert_close(g2, beta)


def test_sde_marginal_variance_ode(any_process):
    """d(sigma^2)/dt = 2 f sigma^2 + g^2 holds by construction; check it numerically."""
    p = any_process
    t = interior(p)
    c = p.at(t)
    f, g2 = c.f, c.g2
    d_var = _autograd_derivative(lambda u: p.sigma(u) ** 2, t)
    torch.testing.assert_close(d_var, 2 * f * p.sigma(t) ** 2 + g2, rtol=1e-8, atol=1e-8)


def test_discrete_vp_hits_table_nodes_and_diffusers_betas():
    betas = beta_table("scaled_linear", 1000, 0.00085, 0.012)
    acp = torch.cumprod(1 - betas, 0)
    p = di.DiscreteVP(acp)
    k = torch.tensor([0, 10, 499, 999])
    t = (k + 1).to(F64) / 1000
    torch.testing.assert_close(p.alpha(t) ** 2, acp[k])
    assert float(p.alpha(torch.tensor(0.0))) == 1.0 and float(p.sigma(torch.tensor(0.0))) == 0.0
    torch.testing.assert_close(p.index(t), k.to(F64))
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    torch.testing.assert_close(sched.alphas_cumprod.to(F64), acp, rtol=1e-6, atol=1e-7)


def test_edm_and_flow_closed_forms():
    t = torch.tensor([0.25, 0.5], dtype=F64)
    e = di.EDM()
    torch.testing.assert_close(e.sigma(t), 80 * t)
    rf = di.RectifiedFlow()
    torch.testing.assert_close(rf.alpha(t) + rf.sigma(t), torch.ones_like(t))
    assert float(rf.logsnr(torch.tensor(1.0))) == float("-inf")


def test_bad_process_input():
    with pytest.raises(ValueError, match="valid: .*rectified-flow"):
        di.get_process("nope")
    with pytest.raises(ValueError, match="cosine"):
        di.VP("quadratic")
    with pytest.raises(ValueError, match="strictly decreasing"):
        di.DiscreteVP(torch.tensor([0.5, 0.9]))
    with pytest.raises(ValueError, match="scaled_linear"):
        beta_table("squared")


def test_grid_memo_host_values_and_sigma_ratios():
    """``Grid.of`` returns the kept grid for equal values (a new one for other values, not
    changed by mutating the caller's tensor); the grid's host columns are its coefficients
    as Python floats and ``on(x).sigma_ratio`` the per-step ratios cast for a sample."""
    p = di.VP("linear")
    ts = torch.linspace(1.0, 0.0, 6, dtype=F64)
    grid = Grid.of(p, ts)
    assert Grid.of(p, ts.clone()) is grid
    assert Grid.of(p, torch.linspace(1.0, 0.1, 6, dtype=F64)) is not grid
    assert Grid.of(di.VP("linear"), ts) is not grid  # per process
    ts[1] = 0.5
    assert grid.t[1] != 0.5 and Grid.of(p, ts) is not grid
    c = grid.coefficients
    for name in ("alpha", "sigma", "d_alpha", "d_sigma", "lam"):
        assert list(getattr(grid, name)) == getattr(c, name).tolist()
    assert list(grid.t) == grid.ts.tolist()
    assert grid.lam[-1] == float("inf")  # t = 0: sigma = 0
    x = torch.zeros(2, 3, dtype=torch.float32)
    ratios = grid.on(x).sigma_ratio
    assert len(ratios) == 5 and all(r.dtype == torch.float32 and r.dim() == 0 for r in ratios)
    torch.testing.assert_close(torch.stack(ratios), (c.sigma[1:] / c.sigma[:-1]).float())
    assert grid.on(x).sigma_ratio is ratios
    for _ in range(Grid.MEMO_SIZE):  # the oldest grid is dropped
        Grid.of(p, torch.rand(4, dtype=F64).sort(descending=True).values)
    assert Grid.of(p, grid.ts) is not grid

def test_zero_terminal_snr_table():
    """A DDPM table rescaled to zero terminal SNR (Lin et al. 2024): alpha(1) = 0 as a flow's,
    derivatives match finite differences, the inverse log-SNR round-trips, sampling runs."""
    acp = torch.cumprod(1 - di.process.beta_table("linear"), 0)
    a = acp.sqrt()
    a = (a - a[-1]) * a[0] / (a[0] - a[-1])
    a[-1] = 0.0
    p = di.DiscreteVP(a * a)
    assert p.zero_terminal and float(p.alpha(1.0)) == 0.0 and float(p.sigma(1.0)) == 1.0
    t = torch.tensor([0.2003, 0.9985, 0.9995, 1.0], dtype=torch.float64)  # off the nodes (kinks)
    assert torch.isfinite(p.d_alpha(t)).all() and torch.isfinite(p.d_sigma(t)).all()
    h = 1e-7
    tt = t[:3]
    torch.testing.assert_close(p.d_alpha(tt), (p.alpha(tt + h) - p.alpha(tt - h)) / (2 * h), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(p.d_sigma(tt), (p.sigma(tt + h) - p.sigma(tt - h)) / (2 * h), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(p.t_from_logsnr(p.logsnr(t)), t)
    ts = di.grids.default(p, 6)
    assert float(ts[0]) == 1.0  # uniform, as a flow: log-SNR spacing is infinite at t = 1
    den = di.Denoiser(lambda x, t: 0.1 * x, p, "v")
    assert torch.isfinite(di.sample(den, shape=(3, 2), solver="dpmpp-2m", steps=6, seed=0).x).all()
