"""Agreement with diffusers' schedulers on the same grid, starting noise and model.

The model is the exact Gaussian-mixture denoiser; diffusers gets its eps (or flow velocity)
prediction. Our ``DiscreteVP`` is built from the same betas and our grid from diffusers'
own sigmas, each mapped to our ``t`` by ``t_from_logsnr(-2 log sigma)`` (its final sigma 0
is our ``t = 0``), so no interpolation convention differs. Both run in float32; the
tolerance is float32 round-off accumulated over the steps.
"""
import math

import pytest
import torch

from diffinfer import DiscreteVP, RectifiedFlow, sample
from diffinfer.toys import GaussianMixture

diffusers = pytest.importorskip("diffusers")

TOL = 2e-5  # float32 round-off (~1e-7 relative per op) over <= 25 steps on O(1) values


def _mixture() -> GaussianMixture:
    means = torch.tensor([[1.0, 0.0, 0.5], [-0.5, 0.8, 0.0], [-0.5, -0.8, -0.5]], dtype=torch.float64)
    return GaussianMixture(means, 0.09 * torch.eye(3, dtype=torch.float64).expand(3, 3, 3).clone())


def _grid_from_sigmas(process, sigmas) -> torch.Tensor:
    """Our ``t`` for each diffusers sigma (``sigma = sigma/alpha``); sigma 0 is ``t = 0``."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64)
    ts = torch.zeros_like(sig)
    pos = sig > 0
    ts[pos] = process.t_from_logsnr(-2.0 * torch.log(sig[pos]))
    return ts


def _noise(n=6, d=3, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def _run_vp_scheduler(sched, den, ts, x):
    """diffusers' loop on VP-scaled samples with the exact eps prediction; the trajectory."""
    traj = [x]
    for i, step_t in enumerate(sched.timesteps):
        eps = den.eps(x, ts[i])
        x = sched.step(eps, step_t, x).prev_sample
        traj.append(x)
    return traj


def _sched_kwargs():
    return dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")


@pytest.mark.parametrize("steps", [10, 20])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
@pytest.mark.parametrize("solver,sched_name,sched_opts,our_opts", [
    ("dpmpp-2m", "DPMSolverMultistepScheduler", dict(solver_order=2, algorithm_type="dpmsolver++"), {}),
    ("dpmpp-3m", "DPMSolverMultistepScheduler", dict(solver_order=3, algorithm_type="dpmsolver++"),
     dict(third_order="diffusers")),
    ("unipc", "UniPCMultistepScheduler", dict(solver_order=2, solver_type="bh1"), dict(order=2, variant="bh1")),
    ("unipc", "UniPCMultistepScheduler", dict(solver_order=2, solver_type="bh2"), dict(order=2, variant="bh2")),
    ("unipc", "UniPCMultistepScheduler", dict(solver_order=3, solver_type="bh1"), dict(order=3, variant="bh1")),
    ("unipc", "UniPCMultistepScheduler", dict(solver_order=3, solver_type="bh2"), dict(order=3, variant="bh2")),
])
def test_multistep_matches_diffusers(steps, final, solver, sched_name, sched_opts, our_opts):
    """Every intermediate sample agrees. diffusers' UniPC bh1 step to sigma = 0 returns NaN
    (``B(h) = -h = -inf`` times a zero residual); ours returns the denoised estimate there,
    so that one final comparison is against the last model evaluation instead."""
    process = DiscreteVP(beta_schedule="linear")
    den = _mixture().denoiser(process)
    sched = getattr(diffusers, sched_name)(**_sched_kwargs(), final_sigmas_type=final, **sched_opts)
    sched.set_timesteps(steps)
    ts = _grid_from_sigmas(process, sched.sigmas)
    assert ts.numel() == steps + 1 and (float(ts[-1]) == 0.0) == (final == "zero")
    x_T = _noise()
    ours = sample(den, x_T.clone(), solver=solver, ts=ts, return_trajectory=True, **our_opts).trajectory
    theirs = _run_vp_scheduler(sched, den, ts, x_T.clone())
    assert all(torch.isfinite(x).all() for x in ours)
    last = len(ours) - 1
    if not torch.isfinite(theirs[-1]).all():
        assert solver == "unipc" and our_opts["variant"] == "bh1" and final == "zero"
        theirs[-1] = den.x0(ours[-2], ts[-2])  # the model's estimate at the last uncorrected point
    for k in range(last + 1):
        assert (ours[k] - theirs[k]).abs().max().item() < TOL, f"step {k}"


@pytest.mark.parametrize("steps", [10, 25])
def test_ddim_matches_diffusers(steps):
    process = DiscreteVP(beta_schedule="linear")
    den = _mixture().denoiser(process)
    sched = diffusers.DDIMScheduler(**_sched_kwargs(), set_alpha_to_one=True, clip_sample=False)
    sched.set_timesteps(steps)
    acp = sched.alphas_cumprod.to(torch.float64)[sched.timesteps.long()]
    ts = torch.cat([process.t_from_logsnr(torch.log(acp / (1 - acp))), torch.zeros(1, dtype=torch.float64)])
    x_T = _noise()
    ours = sample(den, x_T.clone(), solver="ddim", ts=ts).x
    x = x_T.clone()
    for i, step_t in enumerate(sched.timesteps):
        x = sched.step(den.eps(x, ts[i]), step_t, x, eta=0.0).prev_sample
    assert (ours - x).abs().max().item() < TOL


@pytest.mark.parametrize("steps", [10, 25])
def test_euler_matches_diffusers(steps):
    """EulerDiscreteScheduler works on ``x / alpha`` (variance exploding scaling)."""
    process = DiscreteVP(beta_schedule="linear")
    den = _mixture().denoiser(process)
    sched = diffusers.EulerDiscreteScheduler(**_sched_kwargs())
    sched.set_timesteps(steps)
    ts = _grid_from_sigmas(process, sched.sigmas)
    x_T = _noise()
    ours = sample(den, x_T.clone(), solver="euler", ts=ts).x
    x = x_T.clone() / process.alpha(ts[0]).float()  # x_ve
    for i, step_t in enumerate(sched.timesteps):
        x_vp = sched.scale_model_input(x, step_t)
        x = sched.step(den.eps(x_vp, ts[i]), step_t, x).prev_sample
    assert (ours - x).abs().max().item() < TOL


@pytest.mark.parametrize("steps,shift", [(10, 1.0), (20, 3.0)])
def test_flow_match_euler_matches_diffusers(steps, shift):
    """FlowMatchEulerDiscreteScheduler: ``sigma`` is our ``t`` and the model's output is
    the velocity ``eps - x0`` = our ``dx/dt``."""
    process = RectifiedFlow()
    den = _mixture().denoiser(process)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sched.set_timesteps(steps)
    ts = sched.sigmas.to(torch.float64)
    x_T = _noise()
    ours = sample(den, x_T.clone(), solver="euler", ts=ts).x
    x = x_T.clone()
    for i, step_t in enumerate(sched.timesteps):
        x = sched.step(den.velocity(x, ts[i]), step_t, x).prev_sample
    assert (ours - x).abs().max().item() < TOL
    assert math.isclose(float(ts[-1]), 0.0)
