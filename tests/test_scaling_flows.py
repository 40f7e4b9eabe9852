"""Flow-to-SDE sampling, path conversion and Rollover Budget Forcing on exact mixtures."""
import pytest
import torch

from diffinfer import VP, RectifiedFlow, sample
from diffinfer.scaling.flows import FlowSDE, PathConversion, rollover_budget_forcing
from diffinfer.toys.tilted import tilted_example

F64 = torch.float64


@pytest.mark.parametrize("solver", [FlowSDE(noise=1.0), FlowSDE(diffusion=lambda t: 0.5 + 0 * t)])
def test_flow_sde_keeps_the_marginals(solver):
    """Any diffusion coefficient samples the same law (within the Euler-Maruyama error)."""
    prior, _, _ = tilted_example()
    den = prior.denoiser(RectifiedFlow())
    x = sample(den, shape=(4000, 2), solver=solver, steps=100, seed=0, dtype=F64).x
    assert float((x.mean(0) - prior.mean()).abs().max()) < 0.05
    assert float((torch.cov(x.T) - prior.covariance()).abs().max()) < 0.05


@pytest.mark.parametrize("process", [RectifiedFlow(), VP()], ids=["rf", "vp"])
@pytest.mark.parametrize("solver", [FlowSDE(noise=0.7), FlowSDE(diffusion=lambda t: 0.3 + t)], ids=["sigma", "callable"])
def test_flow_sde_step_is_the_euler_maruyama_formula(process, solver):
    """One step from host weights equals ``x - h (v - e^2/2 score) + e sqrt(h) z`` evaluated
    with the process's own tensors (float64)."""
    from diffinfer.invert import ReplayNoise
    from diffinfer.grids import resolve
    prior, _, _ = tilted_example()
    den = prior.denoiser(process)
    ts = resolve(process, 6, None)
    x, z = torch.randn(8, 2, dtype=F64), torch.randn(8, 2, dtype=F64)
    for i in range(ts.numel() - 2):
        state = solver.init(den, x, ts, ReplayNoise([z]))
        x_new, _ = solver.step(den, x, i, state)
        t, h = ts[i], float(ts[i] - ts[i + 1])
        x0, eps = den.predict(x, t)
        v = process.d_alpha(t) * x0 + process.d_sigma(t) * eps
        score = -eps / process.sigma(t)
        e = solver.coefficient(process, t)
        torch.testing.assert_close(x_new, x - h * (v - 0.5 * e * e * score) + e * h ** 0.5 * z, rtol=1e-10, atol=1e-10)


def test_flow_sde_without_noise_is_the_euler_step():
    prior, _, _ = tilted_example()
    den = prior.denoiser(RectifiedFlow())
    x_T = torch.randn(16, 2, dtype=F64)
    a = sample(den, x_T=x_T, solver=FlowSDE(noise=0.0), steps=12).x
    b = sample(den, x_T=x_T, solver="euler", steps=12).x
    assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("src,dst", [(RectifiedFlow(), VP()), (VP(), RectifiedFlow()), (VP("cosine"), VP())])
def test_path_conversion_is_exact(src, dst):
    """A mixture's exact model on one path, converted, is its exact model on the other."""
    prior, _, _ = tilted_example()
    conv = PathConversion(prior.denoiser(src), dst)
    x = torch.randn(20, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    for t in [0.02, 0.3, 0.7, 0.95]:
        assert torch.allclose(conv.x0(x, t), prior.posterior_mean(x, dst, t), atol=1e-9)
    assert conv.nfe == 4


def test_rollover_budget_forcing_improves_reward_within_budget():
    prior, reward, _ = tilted_example()
    den = prior.denoiser(RectifiedFlow())
    plain = float(reward(sample(den, shape=(256, 2), solver=FlowSDE(), steps=20, seed=3, dtype=F64).x).mean())
    rewards = []
    for seed in range(4):
        res = rollover_budget_forcing(den, reward, 200, (2,), steps=20, seed=seed, dtype=F64)
        assert res.nfe == sum(res.info["used_per_step"]) + 1  # the start, then one per candidate
        assert sum(res.info["used_per_step"]) <= 200
        assert torch.allclose(reward(res.x), res.reward)
        rewards.append(float(res.reward))
    assert min(rewards) > plain
    with pytest.raises(ValueError, match="deterministic"):
        rollover_budget_forcing(den, reward, 100, (2,), solver="euler")
