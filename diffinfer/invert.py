"""Inversion: map data back to the noise that a sampler turns into it.

- ``ddim_invert``: deterministic DDIM inversion (Song et al. 2021, section 4.3; Dhariwal &
  Nichol 2021, appendix F): run the DDIM ODE step upward. The step from ``t`` up to
  ``t_up`` must use ``eps`` at ``(x_up, t_up)`` for the sampler to return exactly; the
  classic inversion uses ``eps(x_t, t_up)`` instead (error shrinks with the step size), and
  ``fixed_point_iters > 0`` refines ``x_up`` by fixed-point iteration on that implicit
  equation (as in Pan et al. 2023, "Effective Real Image Editing with Accelerated Iterative
  Diffusion Inversion", and Garibi et al. 2024, "ReNoise"), which makes the round trip
  exact up to the iteration's tolerance.
- ``dpm_encode`` / ``dpm_decode``: the DPM-Encoder of Wu & De la Torre, "A Latent Space of
  Stochastic Diffusion Models for Zero-Shot Image Editing and Guidance" (CycleDiffusion,
  ICCV 2023): draw the chain ``x_{t_0}, ..., x_{t_N} = x`` from the forward posteriors
  ``q(x_{t_{i+1}} | x_{t_i}, x)`` and store, for each step of a stochastic solver, the noise
  ``z_i`` that makes the solver's step land on ``x_{t_{i+1}}``. Decoding replays those
  noises through the solver (with any model or condition); with the encoding model it
  reproduces ``x`` exactly (up to floating-point round-off in one step).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from . import solvers as solver_registry
from . import grids
from .denoiser import DenoiserBase
from .grids.grid import GridPoint
from .loop import iterate
from .rng import SampleRNG, make_rng
from .solvers.ddim import ddim, ddim_from_prediction


@dataclass
class Inversion:
    """``x_T``: the noise at ``ts[0]``; ``trajectory``: ``[x_{t_N}, ..., x_{t_0}]`` upward;
    ``nfe``: network calls."""

    x_T: Tensor
    ts: Tensor
    nfe: int
    trajectory: list[Tensor]


def ddim_invert(den: DenoiserBase, x0: Tensor, steps: int = 50, ts: Tensor | None = None,
                fixed_point_iters: int = 0) -> Inversion:
    """Invert deterministic DDIM on the descending grid ``ts`` (default ``grids.default``).

    Walks the grid upward: from ``x`` at ``t`` to ``t_up`` with ``eps`` from the model,
    ``x0 = (x - s eps) / a``, ``x_up = a_up x0 + s_up eps`` (the DDIM step, solved for its
    start). ``eps`` comes from ``(x, t_up)`` and, for each fixed-point iteration, from the
    current ``(x_up, t_up)``; a step up to ``alpha(t_up) = 0`` (rectified flow's ``t = 1``)
    reads ``x0`` from the model instead and ``eps = (x - a x0) / s``. ``sample(den, inv.x_T, solver='ddim', ts=ts)`` returns ``x0``.
    NFE: ``steps * (1 + fixed_point_iters)``.
    """
    if fixed_point_iters < 0:
        raise ValueError(f"fixed_point_iters must be >= 0, got {fixed_point_iters}")
    p = den.process
    ts = grids.resolve(p, steps, ts)
    nfe0 = den.nfe
    x = x0
    traj = [x]
    for k in range(ts.numel() - 1, 0, -1):
        t, t_up = ts[k], ts[k - 1]
        c = p.at(t).broadcast(x)
        a, s = c.alpha, c.sigma
        x0_form = float(p.alpha(t_up)) == 0.0  # at pure noise the eps form is degenerate (x_up = eps(x_up))
        x_eval = x
        for _ in range(1 + fixed_point_iters):
            pred = den.predict(x_eval, t_up)  # [B, ...] each
            if x0_form:  # x0 from the model, eps from the DDIM step: x = a x0 + s eps
                x0_hat, eps = pred.x0, (x - a * pred.x0) / s
            else:  # eps from the model, x0 from the DDIM step
                eps = pred.eps
                x0_hat = (x - s * eps) / a
            x_eval = p.add_noise(x0_hat, eps, t_up)  # the DDIM step solved for its start
        x = x_eval
        traj.append(x)
    return Inversion(x_T=x, ts=ts, nfe=den.nfe - nfe0, trajectory=traj)


class ReplayNoise(SampleRNG):
    """A random stream that hands a solver stored noises, one ``[B, ...]`` tensor per
    draw, in order (the DPM-Encoder's latent). ``select`` keeps rows; drawing past the end
    raises."""

    def __init__(self, noises: list[Tensor], cursor: int = 0):
        self.noises, self.cursor = list(noises), cursor
        B = noises[0].shape[0] if noises else 0
        self.generators, self.indices = [None] * B, list(range(B))

    def _next(self, shape) -> Tensor:
        if self.cursor >= len(self.noises):
            raise RuntimeError(f"the solver asked for noise draw {self.cursor + 1}, but only "
                               f"{len(self.noises)} are stored")
        z = self.noises[self.cursor]
        if tuple(z.shape[1:]) != tuple(shape):
            raise ValueError(f"stored noise has shape {tuple(z.shape[1:])}, the solver asked for {tuple(shape)}")
        self.cursor += 1
        return z

    def randn(self, shape, dtype=torch.float32, device=None) -> Tensor:
        return self._next(tuple(shape))

    def randn_like(self, x: Tensor) -> Tensor:
        return self._next(tuple(x.shape[1:])).to(x)

    def rand(self, shape, dtype=torch.float32, device=None) -> Tensor:
        raise RuntimeError("the DPM-Encoder replays Gaussian noise only; this solver draws uniforms")

    def select(self, idx) -> "ReplayNoise":
        idx = torch.as_tensor(idx)
        return ReplayNoise([z[idx] for z in self.noises], self.cursor)

    def fork(self, salt: int) -> "ReplayNoise":
        return self


@dataclass
class DPMLatent:
    """The DPM-Encoder latent: ``x_T`` and one noise ``[B, ...]`` per solver step (zeros
    where a step draws none), with the grid and solver that decode it."""

    x_T: Tensor
    noises: list[Tensor]
    ts: Tensor
    solver: str
    solver_options: dict
    nfe: int


class _SamePointMemo(DenoiserBase):
    """Answers a repeated evaluation at the very same ``x`` (the same tensor object) and
    the same time from memory: ``dpm_encode``'s two probe steps and its replayed step
    evaluate the model at one point, so they cost one NFE, not three."""

    def __init__(self, den: DenoiserBase):
        self._wrap(den)
        self._last = None  # (x, time key, output)

    def _remembered(self, x: Tensor, key, compute):
        last = self._last
        if last is not None and last[0] is x and (last[1] is key or _same_time(last[1], key)):
            return last[2]
        out = compute()
        self._last = (x, key, out)
        return out

    def predict(self, x: Tensor, t):
        return self._remembered(x, t, lambda: self.den.predict(x, t))

    def select(self, idx: Tensor) -> "_SamePointMemo":
        return _SamePointMemo(self.den.select(idx))


def _same_time(a, b) -> bool:
    """Whether two times given to ``_SamePointMemo`` are the same: one grid point, or equal
    times."""
    if isinstance(a, GridPoint) or isinstance(b, GridPoint):
        return isinstance(a, GridPoint) and isinstance(b, GridPoint) and a.grid is b.grid and a.k == b.k
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    return ta.shape == tb.shape and bool(torch.equal(ta.double().cpu(), tb.double().cpu()))


def _probe(solver, den, x, i, state, z) -> tuple[Tensor, int]:
    """One solver step from ``state`` with the noise ``z`` (a copy of the state: nothing is
    changed); returns the new ``x`` and how many draws the step made."""
    replay = ReplayNoise([z, z])
    x_next, _ = solver.step(den, x, i, state.replace(rng=replay))
    return x_next, replay.cursor


def _encoding_noise(solver, den, x, i, state, target: Tensor) -> Tensor:
    """The noise ``z`` with which step ``i`` from ``x`` lands on ``target`` (the step is
    affine in its one draw: two probes give it)."""
    zeros = torch.zeros_like(x)
    m, draws = _probe(solver, den, x, i, state, zeros)
    if draws > 1:
        raise ValueError(f"solver {solver.name!r} draws {draws} noises per step; the DPM-Encoder needs one")
    if draws == 0:
        return zeros
    c = _probe(solver, den, x, i, state, torch.ones_like(x))[0] - m
    if bool((c == 0).any()):
        raise ValueError(f"step {i} of {solver.name!r} has zero noise coefficient; cannot encode")
    return (target - m) / c


def dpm_encode(den: DenoiserBase, x: Tensor, solver="ddpm", steps: int = 50, ts: Tensor | None = None,
               seed=0, **solver_options) -> DPMLatent:
    """Encode ``x`` ``[B, ...]`` into the noises of a stochastic ``solver`` (CycleDiffusion).

    The grid must end above ``t = 0`` (``x`` plays ``x_{t_N}``, as CycleDiffusion's ``x_0``);
    the default is ``grids.default_builder(process)(process, steps, final_zero=False)``.
    The solver's step must be affine in its one noise draw, ``x' = m + c z`` (every
    registered stochastic solver is): ``m`` and ``c`` come from two probe steps, then
    ``z = (x_{t_{i+1}} - m) / c`` and the step is replayed with ``z`` so the encoder walks
    exactly the decoder's path. The three steps evaluate the model at the same point, so
    it runs once (``_SamePointMemo``): NFE 1 per step.
    """
    solver_obj = solver_registry.get(solver, **solver_options)
    if not solver_obj.stochastic:
        raise ValueError(f"the DPM-Encoder needs a stochastic solver (e.g. 'ddpm'); {solver_obj.name!r} is deterministic")
    p = den.process
    if ts is None:
        ts = grids.default_builder(p)(p, steps, final_zero=False)
    ts = grids.validate(ts)
    if float(ts[-1]) == 0.0:
        raise ValueError("the DPM-Encoder needs a grid ending above t = 0 (the last step must be stochastic); "
                         "build it with final_zero=False")
    nfe0 = den.nfe
    rng = make_rng(seed, x.shape[0], x.device)
    # the chain x_{t_0}, ..., x_{t_N} = x from the forward posteriors q(x_{t_{i+1}} | x_{t_i}, x)
    chain = [p.add_noise(x, rng.randn_like(x), ts[0])]
    host = p.at(ts).alpha.tolist(), p.at(ts).sigma.tolist()
    for i in range(ts.numel() - 2):
        (a0, a1), (s0, s1) = host[0][i:i + 2], host[1][i:i + 2]
        eps = (chain[-1] - a0 * x) / s0
        chain.append(ddim_from_prediction(ddim(a0, s0, a1, s1, eta=1.0), x, eps, rng.randn_like(x)))
    chain.append(x)

    den = _SamePointMemo(den)
    state = solver_obj.init(den, chain[0], ts, ReplayNoise([]))
    noises = [_encoding_noise(solver_obj, den, chain[0], 0, state, chain[1])]
    state = state.replace(rng=ReplayNoise([noises[0]]))
    for step in iterate(den, solver_obj, chain[0], ts, state=state):
        i = step.i + 1  # the next step: probe it from here, then replay its noise
        if i < ts.numel() - 1:
            noises.append(_encoding_noise(solver_obj, den, step.x, i, step.state, chain[i + 1]))
            step.state = step.state.replace(rng=ReplayNoise([noises[-1]]))
    return DPMLatent(x_T=chain[0], noises=noises, ts=ts, solver=solver_obj.name,
                     solver_options=solver_obj.options(), nfe=den.nfe - nfe0)


def dpm_decode(den: DenoiserBase, latent: DPMLatent) -> Tensor:
    """Decode a ``DPMLatent`` with ``den`` (the encoding model: exact round trip; another
    model or condition: CycleDiffusion's zero-shot translation). Only steps that draw
    noise consume it, as in encoding."""
    solver = solver_registry.get(latent.solver, **latent.solver_options)
    replay = _StepwiseReplay(latent.noises)
    x = latent.x_T
    for step in iterate(den, solver, x, latent.ts, replay):
        replay.at_step(step.i + 1)
        x = step.x
    return x


class _StepwiseReplay(ReplayNoise):
    """Replays ``noises[i]`` during step ``i`` whatever the earlier steps drew."""

    def at_step(self, i: int) -> None:
        self.cursor = i

    def _next(self, shape) -> Tensor:
        z = super()._next(shape)
        self.cursor = len(self.noises)  # one draw per step
        return z

    def select(self, idx) -> "_StepwiseReplay":
        idx = torch.as_tensor(idx)
        return _StepwiseReplay([z[idx] for z in self.noises], self.cursor)
