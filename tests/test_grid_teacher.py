"""The grid fit's teacher (``grids.teacher_endpoint`` / ``training_set``) against the exact
probability-flow endpoint, on flows whose data has directions of small variance.

A fit can be no better than its teacher: a flow teacher that jumped from its uniform grid's
last level (0.005) straight to ``t_lo = 1e-4`` missed every direction of data standard
deviation ``s`` below ~0.02 by about ``s`` (a multistep extrapolation across a log-SNR gap
many times its previous one), so every grid fitted on a rectified flow chased that bias."""
import math

import pytest
import torch

import diffinfer as di
from diffinfer import grids
from diffinfer.toys import GaussianMixture
from diffinfer.toys.reference import pf_ode_solution

F64 = torch.float64


def _low_variance_mixture(seed: int, s: float) -> GaussianMixture:
    """A random mixture whose components are rank-1 Gaussians plus ``s**2`` isotropic."""
    g = torch.Generator().manual_seed(seed)
    dim = int(torch.randint(3, 10, (), generator=g))
    k = int(torch.randint(2, 5, (), generator=g))
    means = torch.randn(k, dim, generator=g, dtype=F64) * 1.5
    covs = []
    for _ in range(k):
        q, _ = torch.linalg.qr(torch.randn(dim, 1, generator=g, dtype=F64))
        covs.append(q @ q.T * (0.2 + float(torch.rand((), generator=g, dtype=F64))) + s ** 2 * torch.eye(dim, dtype=F64))
    w = torch.rand(k, generator=g, dtype=F64) + 0.2
    return GaussianMixture(means, torch.stack(covs), w / w.sum())


def _exact(den, x_T):
    return den.x0(pf_ode_solution(den, x_T, 1.0, 1e-6, rtol=1e-9, atol=1e-9), 1e-6)


@pytest.mark.parametrize("seed,s", [(0, 0.05), (1, 0.02), (2, 0.01), (3, 0.003), (4, 0.001)])
def test_flow_teacher_resolves_directions_of_small_variance(seed, s):
    mix = _low_variance_mixture(seed, s)
    den = mix.denoiser(di.RectifiedFlow())
    x_T, teacher = grids.training_set(den, n_train=32, shape=(mix.means.shape[1],), seed=100 + seed)
    err = float(((teacher - _exact(den, x_T)) ** 2).mean().sqrt())
    # the jump teacher's error was ~s in these directions; the tail's is a small fraction of s
    assert err < 0.3 * s, (err, s)


def test_geometric_tail_continues_the_last_ratio_down_to_t_end():
    ts = grids.uniform(di.RectifiedFlow(), 50)  # [1, 0.98, ..., 0.02, 0]
    out = grids.geometric_tail(ts, 1e-4)
    assert float(out[-1]) == 0.0 and float(out[-2]) == 1e-4
    assert bool((out[1:] < out[:-1]).all())
    torch.testing.assert_close(out[:ts.numel() - 1], ts[:-1], rtol=0, atol=0)
    tail = out[ts.numel() - 2:-2]  # from the old last level to the point before t_end
    ratios = tail[1:] / tail[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, 0.5), rtol=1e-12, atol=0)
    # the last gap is neither a jump nor a sliver: within a factor sqrt(2) of the ratio's step
    last = float(out[-3] / out[-2])
    assert 2 ** 0.5 <= last <= 2 ** 1.5 + 1e-12
    # a t_end the grid already passes below leaves it unchanged
    torch.testing.assert_close(grids.geometric_tail(ts, 0.05), ts, rtol=0, atol=0)


def test_flow_teacher_reaches_t_lo_and_non_flows_keep_their_builder():
    mix = _low_variance_mixture(7, 0.05)
    den = mix.denoiser(di.RectifiedFlow())
    x_T = torch.randn(4, mix.means.shape[1], generator=torch.Generator().manual_seed(0), dtype=F64)
    expected = grids.geometric_tail(grids.uniform(den.process, 30), 1e-4)
    got = grids.teacher_endpoint(den, x_T, 30, t_end=1e-4)
    torch.testing.assert_close(got, di.sample(den, x_T, solver="dpmpp-3m", ts=expected).x, rtol=0, atol=0)
    vp = mix.denoiser(di.VP("linear"))
    got = grids.teacher_endpoint(vp, x_T, 30, t_end=2e-4)
    ts = grids.logsnr(vp.process, 30, t_min=2e-4)
    torch.testing.assert_close(got, di.sample(vp, x_T, solver="dpmpp-3m", ts=ts).x, rtol=0, atol=0)
    assert math.isfinite(float(got.abs().max()))


def test_geometric_tail_rejects_bad_grids_and_levels():
    with pytest.raises(ValueError, match="descending grid of at least 3 points"):
        grids.geometric_tail(torch.tensor([1.0, 0.0], dtype=F64), 1e-4)
    with pytest.raises(ValueError, match="ending at 0"):
        grids.geometric_tail(torch.tensor([1.0, 0.5, 0.1], dtype=F64), 1e-4)
    with pytest.raises(ValueError, match="descending"):
        grids.geometric_tail(torch.tensor([1.0, 0.2, 0.5, 0.0], dtype=F64), 1e-4)
    with pytest.raises(ValueError, match="t_end must be positive"):
        grids.geometric_tail(grids.uniform(di.RectifiedFlow(), 10), 0.0)


def test_flow_teacher_never_queries_the_model_below_a_large_t_end():
    """A trained flow whose smallest training time is ``t_lo = 0.1``: the teacher stops there."""
    mix = _low_variance_mixture(8, 0.05)
    den = mix.denoiser(di.RectifiedFlow())
    x_T = torch.randn(4, mix.means.shape[1], generator=torch.Generator().manual_seed(1), dtype=F64)
    got = grids.teacher_endpoint(den, x_T, 40, t_end=0.1)
    ts = grids.uniform(den.process, 40, t_min=0.1)
    torch.testing.assert_close(got, di.sample(den, x_T, solver="dpmpp-3m", ts=ts).x, rtol=0, atol=0)
    assert float(ts[-2]) == 0.1
