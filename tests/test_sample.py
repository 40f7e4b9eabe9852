"""The driver: per-sample seeding, callbacks, trajectory, NFE, bad input."""
import pytest
import torch

import diffinfer as di
from diffinfer.rng import SampleRNG
from diffinfer.toys import ring2d

F64 = torch.float64


def rowwise_denoiser(process):
    """A model that treats every row on its own (so batching cannot change its bits)."""
    def net(x, t):
        return torch.stack([torch.tanh(row) * 0.9 for row in x])
    return di.Denoiser(net, process, prediction="x0")


@pytest.mark.parametrize("solver", ["ddpm", "ddim", "euler"])
def test_same_seed_same_bits_across_batch_sizes(solver):
    den = rowwise_denoiser(di.VP())
    runs = {b: di.sample(den, shape=(b, 3), solver=solver, steps=6, seed=11).x for b in (1, 7, 64)}
    assert torch.equal(runs[1][0], runs[7][0]) and torch.equal(runs[7], runs[64][:7])
    other = di.sample(den, shape=(7, 3), solver=solver, steps=6, seed=12).x
    assert not torch.equal(other, runs[7])


def test_worker_rows_match_the_full_batch():
    den = rowwise_denoiser(di.VP())
    full = di.sample(den, shape=(10, 2), solver="ddpm", steps=5, seed=3).x
    part = di.sample(den, shape=(4, 2), solver="ddpm", steps=5, seed=(3, range(6, 10))).x
    assert torch.equal(full[6:], part)


def test_seed_none_follows_torch_manual_seed():
    den = rowwise_denoiser(di.VP())
    torch.manual_seed(0)
    a = di.sample(den, shape=(3, 2), solver="ddpm", steps=3).x
    torch.manual_seed(0)
    b = di.sample(den, shape=(3, 2), solver="ddpm", steps=3).x
    assert torch.equal(a, b)


def test_callback_trajectory_and_nfe():
    gm = ring2d()
    den = gm.denoiser(di.VP())
    seen = []
    res = di.sample(den, shape=(5, 2), solver="euler", steps=8, seed=0, dtype=F64, return_trajectory=True,
                    callback=lambda i, t, x, state: seen.append((i, float(t), x.shape)))
    assert res.nfe == 8 and den.nfe == 8
    assert [s[0] for s in seen] == list(range(8)) and seen[-1][1] == 0.0
    assert len(res.trajectory) == 9 and torch.equal(res.trajectory[-1], res.x)
    assert res.wall_time > 0 and res.ts.shape == (9,)
    # the last step to t = 0 returns the denoised estimate of the previous point
    torch.testing.assert_close(res.x, gm.denoiser(di.VP())(res.trajectory[-2], res.ts[-2]))


def test_initial_noise_scale_follows_sigma_t_max():
    den = rowwise_denoiser(di.EDM())
    res = di.sample(den, shape=(4000, 1), solver="euler", steps=1, seed=0, return_trajectory=True)
    assert abs(float(res.trajectory[0].std()) - 80.0) < 3.0


def test_heun_and_euler_converge_to_the_same_endpoint():
    gm = ring2d()
    x = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    ends = [di.sample(gm.denoiser(di.VP()), x_T=x, solver=s, steps=n).x for s, n in (("euler", 400), ("heun", 100))]
    torch.testing.assert_close(ends[0], ends[1], atol=2e-2, rtol=0)


def test_rng_select_and_fork():
    rng = SampleRNG.from_seed(0, batch=3)
    copy = rng.select(torch.tensor([1, 1]))
    a = copy.randn((2,))
    assert torch.equal(a[0], a[1])  # both continue row 1's stream
    forked = copy.fork(salt=5).randn((2,))
    assert not torch.equal(forked[0], forked[1])


def test_bad_driver_input():
    den = rowwise_denoiser(di.VP())
    with pytest.raises(ValueError, match="valid: .*euler"):
        di.sample(den, shape=(2, 2), solver="runge")
    with pytest.raises(ValueError, match="give x_T or shape"):
        di.sample(den, solver="euler")
    with pytest.raises(ValueError, match="NaN"):
        di.sample(den, x_T=torch.full((2, 2), float("nan")), solver="euler")
    with pytest.raises(ValueError, match=r"shape \(2, 2\) but shape=\(3, 2\)"):
        di.sample(den, x_T=torch.zeros(2, 2), shape=(3, 2), solver="euler")
    with pytest.raises(ValueError, match="stochastic"):
        di.solvers.get("ddpm").init(den, torch.zeros(2, 2), di.grids.uniform(di.VP(), 3))
    with pytest.raises(TypeError, match="Denoiser"):
        di.sample(lambda x, t: x, shape=(2, 2))
    nan_model = di.Denoiser(lambda x, t: x * float("nan"), di.VP())
    with pytest.raises(di.ModelOutputError, match="t=1"):
        di.sample(nan_model, shape=(2, 2), solver="euler", steps=3, seed=0)
    with pytest.raises(ValueError, match="bad options for solver 'euler'"):
        di.sample(den, shape=(2, 2), solver="euler", eta=1.0)
