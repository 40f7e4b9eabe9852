"""Noise optimisation: gradient ascent on a differentiable reward through the sampler.

Karunratanakul et al. 2024, "Optimizing Diffusion Noise Can Serve As Universal Motion
Priors" (DNO) and Novack et al. 2024, "DITTO: Diffusion Inference-Time T-Optimization":
treat the starting noise ``x_T`` as the parameter, run the whole (deterministic) sampler,
and back-propagate ``reward(x_0)`` to ``x_T``. Each solver step is wrapped in
``torch.utils.checkpoint`` (DITTO section 3.3), so memory holds one step's activations
plus the ``x_i`` between steps instead of the whole graph; the steps are recomputed in the
backward pass (counted in the NFE, as are the backward passes: ``verifiers.GradientCounter``'s
accounting, 2 NFE per row and model evaluation, 3 verifier calls per differentiable reward
row). ``norm_project`` keeps the noise on the sphere of
radius ``sqrt(D)`` (DNO), where Gaussian noise concentrates.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .. import solvers as solver_registry
from ..denoiser import DenoiserBase
from ..loop import rollout
from ..solvers.base import Solver
from .common import ScalingResult, Tap, grid
from .verifiers import GradientCounter


class CheckpointedSteps(Solver):
    """``solver`` with each step run under ``torch.utils.checkpoint`` when the sample needs
    a gradient: the step's activations are recomputed in the backward pass instead of kept
    (DITTO section 3.3). States are immutable records, so the recomputation sees exactly the
    state the forward step saw."""

    def __init__(self, solver: Solver):
        self.solver = solver
        self.name, self.order, self.stochastic = solver.name, solver.order, solver.stochastic
        self.evals_per_step = solver.evals_per_step

    def init(self, den, x, ts, rng=None):
        return self.solver.init(den, x, ts, rng)

    def step(self, den, x: Tensor, i: int, state):
        if not x.requires_grad:
            return self.solver.step(den, x, i, state)
        holder = {}

        def run(x_in):
            x_out, new_state = self.solver.step(den, x_in, i, state)
            holder.setdefault("state", new_state)  # keep the first (forward) state
            return x_out

        return checkpoint(run, x, use_reentrant=False), holder["state"]


def differentiable_sample(den: DenoiserBase, x_T: Tensor, solver="euler", steps: int = 20, ts=None,
                          use_checkpoint: bool = True) -> Tensor:
    """Run a deterministic solver from ``x_T`` keeping the autograd graph (``[B, ...]``).

    With ``use_checkpoint`` each step is recomputed in the backward pass instead of stored.
    """
    solver = solver_registry.get(solver)
    if solver.stochastic:
        raise ValueError(f"noise optimisation needs a deterministic solver (checkpointed steps are "
                         f"recomputed and must repeat exactly); {solver.name!r} is stochastic")
    ts = grid(den.process, steps, ts)
    x, _ = rollout(den, CheckpointedSteps(solver) if use_checkpoint else solver, x_T, ts)
    return x


def optimize_noise(den: DenoiserBase, reward, x_T: Tensor, solver="euler", steps: int = 20, ts=None,
                   iterations: int = 20, lr: float = 0.05, use_checkpoint: bool = True,
                   norm_project: bool = True) -> ScalingResult:
    """Maximise ``reward(sample(x_T))`` over ``x_T`` ``[B, ...]`` with Adam.

    ``reward`` must be differentiable (``[B]`` out). Returns the final samples; ``info``
    has the reward ``history`` (mean per iteration, before each update) and ``x_T``.
    """
    if int(iterations) < 0 or not lr > 0:
        raise ValueError(f"need iterations >= 0 and lr > 0, got {iterations}, {lr}")
    tap = Tap(den)
    tap.needs_grad = True  # differentiates through the whole solve
    scale = float(den.process.sigma(grid(den.process, steps, ts)[0]))
    z = (x_T.detach() / scale).clone().requires_grad_(True)  # unit-variance noise
    radius = math.sqrt(z[0].numel())
    opt = torch.optim.Adam([z], lr=lr)
    grad_reward = GradientCounter(reward)
    history, backward_rows = [], 0
    for _ in range(int(iterations)):
        opt.zero_grad()
        with torch.enable_grad():
            rows0 = tap.rows
            x0 = differentiable_sample(tap, z * scale, solver, steps, ts, use_checkpoint)
            backward_rows += tap.rows - rows0  # the evaluations the backward pass goes through
            r = grad_reward(x0)
            (-r.sum()).backward()
        history.append(float(r.detach().mean()))
        opt.step()
        if norm_project:
            with torch.no_grad():
                flat = z.reshape(z.shape[0], -1)
                flat.mul_(radius / flat.norm(dim=1, keepdim=True))
    with torch.no_grad():
        x0 = differentiable_sample(tap, z.detach() * scale, solver, steps, ts, False)
        r = reward(x0)
    history.append(float(r.mean()))
    nfe = tap.rows + GradientCounter.NFE_PER_ROW * backward_rows
    calls = GradientCounter.VERIFIER_CALLS_PER_ROW * grad_reward.rows + x0.shape[0]
    return ScalingResult(x=x0, reward=r, nfe=nfe, verifier_calls=calls, method="noise-opt",
                         info={"history": history, "x_T": z.detach() * scale})
