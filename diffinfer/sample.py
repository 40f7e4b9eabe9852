"""The sampling loop: grid, per-sample seeding, progress, callbacks, trajectory."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from . import solvers as solver_registry
from . import grids
from .denoiser import DenoiserBase
from .rng import SampleRNG

Tensor = torch.Tensor


@dataclass
class SampleResult:
    """``x``: the samples ``[B, ...]``; ``nfe``: network calls; ``wall_time``: seconds;
    ``ts``: the grid used; ``trajectory``: ``[x_T, x_1, ..., x_N]`` if asked for."""

    x: Tensor
    nfe: int
    wall_time: float
    ts: Tensor
    solver: str
    trajectory: list[Tensor] | None = None
    state: dict = field(default_factory=dict, repr=False)


def initial_noise(den: DenoiserBase, shape: Sequence[int], ts: Tensor, rng: SampleRNG,
                  dtype=torch.float32, device="cpu") -> Tensor:
    """``sigma(t_0) * z`` with ``z`` from each row's own stream (``[B, *shape[1:]]``)."""
    z = rng.randn(tuple(shape[1:]), dtype=dtype, device=device)
    return z * float(den.process.sigma(ts[0]))


def make_rng(seed, batch: int, device) -> SampleRNG:
    """Streams for ``batch`` rows: ``seed`` an int (rows 0..B-1), or ``(seed, indices)``
    to give a worker rows ``indices`` of a larger run; ``None`` draws a seed from torch's
    global generator (so ``torch.manual_seed`` still reproduces)."""
    if isinstance(seed, SampleRNG):
        if len(seed) != batch:
            raise ValueError(f"rng has {len(seed)} streams for a batch of {batch}")
        return seed
    indices = None
    if isinstance(seed, tuple):
        seed, indices = seed
        indices = list(indices)
        if len(indices) != batch:
            raise ValueError(f"{len(indices)} stream indices for a batch of {batch}")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return SampleRNG.from_seed(int(seed), batch=batch, indices=indices, device=device)


def sample(den: DenoiserBase, x_T: Tensor | None = None, shape: Sequence[int] | None = None,
           solver="dpmpp-2m", steps: int = 10, ts=None, seed=None, progress: bool = False,
           callback: Callable | None = None, return_trajectory: bool = False,
           dtype=torch.float32, device="cpu", **solver_options) -> SampleResult:
    """Draw samples by running ``solver`` over a time grid.

    Args:
        den: the model view (``Denoiser`` or any wrapper).
        x_T: starting noise ``[B, ...]``; or give ``shape`` (``[B, ...]``) and it is drawn
            as ``sigma(t_0) * z`` with per-sample streams.
        solver: a name from ``diffinfer.solvers.names()`` or a ``Solver``; extra keyword
            options go to it (e.g. ``eta=1.0``).
        steps / ts: a number of steps on ``timesteps.default(process, steps)``, or a grid.
        seed: int; row ``i`` uses stream ``(seed, i)`` for its initial and step noise, so a
            sample is bitwise the same alone or in a batch. ``(seed, indices)`` picks rows.
        callback: ``callback(i, t_next, x, state)`` after each step.
    Returns:
        ``SampleResult`` with samples, NFE, wall time and (optionally) the trajectory.
    """
    if not isinstance(den, DenoiserBase):
        raise TypeError(f"den must be a Denoiser (or wrapper), got {type(den).__name__}")
    solver = solver_registry.get(solver, **solver_options)
    ts = grids.resolve(den.process, steps, ts)
    if x_T is None:
        if shape is None:
            raise ValueError("give x_T or shape")
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2 or min(shape) < 1:
            raise ValueError(f"shape must be [B, ...] with positive sizes, got {shape}")
        rng = make_rng(seed, shape[0], device)
        x = initial_noise(den, shape, ts, rng, dtype=dtype, device=device)
    else:
        if not isinstance(x_T, Tensor) or x_T.dim() < 2:
            raise ValueError("x_T must be a tensor shaped [B, ...]")
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)}")
        if not bool(torch.isfinite(x_T).all()):
            raise ValueError("x_T contains NaN or Inf")
        x = x_T
        rng = make_rng(seed, x.shape[0], x.device) if (solver.stochastic or seed is not None) else None

    nfe0 = den.nfe
    start = time.perf_counter()
    state = solver.init(den, x, ts, rng)
    traj = [x] if return_trajectory else None
    n_steps = ts.numel() - 1
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=n_steps, desc=solver.name, leave=False)
    for i in range(n_steps):
        x, state = solver.step(den, x, i, state)
        if traj is not None:
            traj.append(x)
        if callback is not None:
            callback(i, ts[i + 1], x, state)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(t=f"{float(ts[i + 1]):.3g}", nfe=den.nfe - nfe0)
    if bar is not None:
        bar.close()
    return SampleResult(x=x, nfe=den.nfe - nfe0, wall_time=time.perf_counter() - start, ts=ts,
                        solver=solver.name, trajectory=traj, state=state)
