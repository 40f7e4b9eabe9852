"""Noise optimisation: exact gradients through the sampler, checkpointed or not."""
import pytest
import torch

from diffinfer import VP
from diffinfer.scaling.noise_opt import differentiable_sample, optimize_noise
from diffinfer.toys.tilted import tilted_example

F64 = torch.float64


def _grad(den, reward, z, solver, ck):
    z = z.clone().requires_grad_(True)
    reward(differentiable_sample(den, z, solver, 8, use_checkpoint=ck)).sum().backward()
    return z.grad


@pytest.mark.parametrize("solver", ["euler", "heun", "dpmpp-2m"])
def test_checkpointing_gives_the_same_gradient(solver):
    prior, reward, _ = tilted_example()
    den = prior.denoiser(VP())
    z = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    g1, g2 = _grad(den, reward, z, solver, True), _grad(den, reward, z, solver, False)
    assert torch.allclose(g1, g2, atol=1e-12) and float(g1.abs().max()) > 1e-3


def test_gradient_matches_finite_differences():
    prior, reward, _ = tilted_example()
    den = prior.denoiser(VP())
    z = torch.randn(1, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    g = _grad(den, reward, z, "heun", True)
    for d in range(2):
        e = torch.zeros_like(z)
        e[0, d] = 1e-6
        f = lambda zz: float(reward(differentiable_sample(den, zz, "heun", 8)).sum())  # noqa: E731
        assert (f(z + e) - f(z - e)) / 2e-6 == pytest.approx(float(g[0, d]), rel=1e-5, abs=1e-8)


def test_optimisation_raises_the_reward():
    prior, reward, _ = tilted_example()
    den = prior.denoiser(VP())
    x_T = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    res = optimize_noise(den, reward, x_T, steps=10, iterations=15, lr=0.1)
    h = res.info["history"]
    assert h[-1] > h[0] + 0.2 and torch.allclose(reward(res.x), res.reward)
    assert res.nfe > 15 * 8 * 10  # forward passes plus recomputation
    with pytest.raises(ValueError, match="deterministic"):
        differentiable_sample(den, x_T, "ddpm", 5)


@pytest.mark.parametrize("use_checkpoint", [False, True])
def test_noise_optimisation_counts_backward_passes(use_checkpoint):
    """Cost per iteration and row: S forward evaluations (+ S recomputed with checkpointing),
    2 NFE per evaluation the backward pass goes through, 3 verifier calls per gradient row;
    then one plain sample and scoring (``verifiers.GradientCounter``'s accounting)."""
    prior, reward, _ = tilted_example()
    den = prior.denoiser(VP())
    B, S, iters = 4, 6, 3
    x_T = torch.randn(B, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
    res = optimize_noise(den, reward, x_T, steps=S, iterations=iters, use_checkpoint=use_checkpoint)
    exact = iters * B * (S + 2 * S) + B * S
    if use_checkpoint:  # torch recomputes the checkpointed steps whose activations backward needs
        assert exact < res.nfe <= exact + iters * B * S
    else:
        assert res.nfe == exact
    assert res.verifier_calls == iters * B * 3 + B


def test_noise_opt_by_name_spends_at_most_its_budget():
    """``scaling.run("noise-opt", ...)``: ``(C - (S + 1)) // (3 (S + 1))`` Adam steps, each
    ``3 S`` NFE and 3 verifier calls, then one plain sample: the cost is exact."""
    from diffinfer.scaling import run
    prior, reward, _ = tilted_example()
    den = prior.denoiser(VP())
    S, budget = 5, 100
    res = run("noise-opt", den, reward, budget, (2,), steps=S, seed=2, dtype=F64)
    iters = (budget - (S + 1)) // (3 * (S + 1))
    assert len(res.info["history"]) == iters + 1
    assert res.nfe == iters * 3 * S + S and res.verifier_calls == iters * 3 + 1 and res.cost <= budget
    with pytest.raises(ValueError, match="one-evaluation"):
        run("noise-opt", den, reward, budget, (2,), steps=S, solver="heun")
