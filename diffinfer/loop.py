"""The one driver loop, and ``sample`` on top of it.

``iterate(den, solver, x, ts, rng)`` is a generator over the steps of a solve: it runs
``solver.init`` once and ``solver.step`` per grid interval and yields a ``Step``
(``i, x, state``) after step ``i`` (``x`` now at ``ts[i + 1]``); a consumer may replace the
step's ``x`` and ``state`` before the next one (projection, resampling, branching). Every driver in the package consumes it
(``sample``, inversion, inverse-problem resampling, SMC, search, tree search, flows, noise
optimisation, composition), so none writes its own ``init``/``step`` loop; progress bars,
callbacks and trajectories are thin consumers of the generator (docs/architecture.md).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from . import solvers as solver_registry
from . import grids
from .denoiser import DenoiserBase, GuidanceDivergenceError, networks_under
from .grids.grid import Grid
from .rng import SampleRNG, make_rng
from .solvers.base import Solver, SolverState


@dataclass(slots=True)
class Step:
    """What ``iterate`` yields after step ``i``: the sample ``x`` at ``ts[i + 1]``, the
    solver ``state`` and the model ``den`` that took the step. Unpacks as ``i, x, state``.
    A consumer that assigns ``step.x``, ``step.state`` or ``step.den`` before resuming the
    generator makes the next step start from those (a projection after each step; SMC's
    resampling, which selects rows of all three): that is the only way a driver changes
    the loop's course."""

    i: int
    x: Tensor
    state: SolverState
    den: DenoiserBase

    def __iter__(self):
        return iter((self.i, self.x, self.state))


def iterate(den: DenoiserBase, solver: Solver, x: Tensor, ts: Tensor, rng: SampleRNG | None = None, *,
            start: int = 0, stop: int | None = None, state: SolverState | None = None) -> Iterator[Step]:
    """Run ``solver`` on the grid ``ts`` from index ``start`` to ``stop`` (default: the end),
    yielding a ``Step`` (``i, x, state``) after each step ``i``.

    ``ts``: a descending time tensor or a ``Grid``. Without ``state`` a fresh solver state
    is started on ``ts[start:]`` (the solve begins at ``ts[start]``, with the solver's
    warm-up there); with ``state`` (a state on the grid
    ``ts``, e.g. one yielded earlier or a ``select``-ed copy) the run continues it. Indices
    ``i`` are always positions in ``ts``. The generator keeps nothing but the yielded
    ``Step``: stopping early and resuming from a yielded state gives the same steps.
    """
    if isinstance(ts, Grid):
        ts = ts.ts
    n_steps = len(ts) - 1
    stop = n_steps if stop is None else stop
    if not 0 <= start <= stop <= n_steps:
        raise ValueError(f"need 0 <= start <= stop <= {n_steps}, got start={start}, stop={stop}")
    if state is None:
        state = solver.init(den, x, ts[start:], rng)
        offset = start
    else:
        offset = 0
    check = den.divergence_check  # guided models: no silent divergence
    for i in range(start, stop):
        try:
            x, state = solver.step(den, x, i - offset, state)
            if check is not None:
                check(x, state.grid.ts[i - offset + 1])
        except GuidanceDivergenceError as e:  # name the step a guided model diverged in
            raise e.at_step(i, n_steps) from None
        step = Step(i, x, state, den)
        yield step
        x, state = step.x, step.state
        if step.den is not den:
            den = step.den
            check = den.divergence_check


def rollout(den: DenoiserBase, solver: Solver, x: Tensor, ts: Tensor, start: int = 0, stop: int | None = None,
            rng: SampleRNG | None = None, state: SolverState | None = None) -> tuple[Tensor, SolverState | None]:
    """``iterate`` run through: the sample at ``ts[stop]`` and the last state (``state``
    unchanged when ``start == stop``)."""
    for step in iterate(den, solver, x, ts, rng, start=start, stop=stop, state=state):
        x, state = step.x, step.state
    return x, state


@dataclass
class SampleResult:
    """``x``: the samples ``[B, ...]``; ``nfe``: network calls; ``wall_time``: seconds;
    ``ts``: the grid used; ``trajectory``: ``[x_T, x_1, ..., x_N]`` if asked for; ``state``:
    the solver's final state record."""

    x: Tensor
    nfe: int
    wall_time: float
    ts: Tensor
    solver: str
    trajectory: list[Tensor] | None = None
    state: SolverState | None = None


def initial_noise(den: DenoiserBase, shape: Sequence[int], ts: Tensor, rng: SampleRNG,
                  dtype=torch.float32, device="cpu") -> Tensor:
    """``sigma(t_0) * z`` with ``z`` from each row's own stream (``[B, *shape[1:]]``)."""
    z = rng.randn(tuple(shape[1:]), dtype=dtype, device=device)
    return z * float(den.process.sigma(ts[0]))


def model_placement(den) -> tuple[torch.device | None, torch.dtype | None]:
    """The device and floating dtype of the network under ``den`` (the first floating
    parameter of ``denoiser.networks_under(den)``), or ``None``s."""
    for net in networks_under(den):
        for p in net.parameters():
            if p.is_floating_point():
                return p.device, p.dtype
    return None, None


def truncate_grid(ts: Tensor, t_start: float) -> Tensor:
    """The grid ``ts`` started at ``t_start``: ``[t_start, *ts[ts < t_start]]`` (a mid-path
    start solves only the steps below ``t_start``; ``t_start`` itself is kept exactly, so the
    noise level the solve starts from is the one the sample was noised to)."""
    t_start = float(t_start)
    if not 0.0 < t_start <= float(ts[0]):
        raise ValueError(f"t_start must be in (0, {float(ts[0]):.6g}] (the grid's first time), got {t_start}")
    below = ts[ts < t_start]
    return torch.cat([torch.tensor([t_start], dtype=ts.dtype), below])


def noise_estimate(den: DenoiserBase, init: Tensor, t_start: float, rng: SampleRNG, init_error: float = 0.0) -> Tensor:
    """``x_{t*}`` from an estimate ``init`` ``[B, ...]`` of the data: the exact forward
    transition ``q(x_{t*} | x_{t_e})`` (``Process.renoise``) from the time ``t_e`` at which
    ``alpha(t_e) init`` is distributed as ``x_{t_e}`` (``sigma/alpha = init_error``: the
    estimate is ``x0 + init_error z``), i.e. ``alpha(t*) init + sqrt(sigma(t*)^2 -
    alpha(t*)^2 init_error^2) z`` with ``z`` from each row's stream; ``init_error = 0`` is
    ``Process.add_noise(init, z, t*)``. Needs ``sigma(t*) / alpha(t*) >= init_error``."""
    c = den.process.at(float(t_start))
    a, s = float(c.alpha), float(c.sigma)
    var = s * s - (a * init_error) ** 2
    if var < -1e-9 * s * s:  # (round-off at t_start = accel.warm.t_start_for(..., c=1) is no error)
        raise ValueError(f"t_start={float(t_start):.6g} is below the estimate's error level: sigma/alpha = "
                         f"{s / a:.6g} < init_error = {init_error:.6g} (start later, e.g. "
                         f"diffinfer.accel.warm.t_start_for(process, init_error))")
    z = rng.randn(tuple(init.shape[1:]), dtype=init.dtype, device=init.device)
    return den.process.add_noise(init, z * (max(var, 0.0) ** 0.5 / s), float(t_start))


def sample(den: DenoiserBase, x_T: Tensor | None = None, shape: Sequence[int] | None = None,
           solver="dpmpp-2m", steps: int = 10, ts=None, seed=None, progress: bool = False,
           callback: Callable | None = None, return_trajectory: bool = False,
           dtype=None, device=None, init: Tensor | None = None, t_start: float | None = None,
           init_error: float = 0.0, **solver_options) -> SampleResult:
    """Draw samples by running ``solver`` over a time grid (``iterate``).

    Args:
        den: the model view (``Denoiser`` or any wrapper).
        x_T: starting noise ``[B, ...]``; or give ``shape`` (``[B, ...]``) and it is drawn
            as ``sigma(t_0) * z`` with per-sample streams.
        solver: a name from ``diffinfer.solvers.names()`` or a ``Solver``; extra keyword
            options go to it (e.g. ``eta=1.0``).
        steps / ts: a number of steps on the model's own grid (``den.default_ts(steps)``,
            e.g. a diffusers scheduler's) or ``grids.default(process, steps)``; or a grid.
        seed: int; row ``i`` uses stream ``(seed, i)`` for its initial and step noise, so a
            sample's noise is bitwise the same alone or in a batch. ``(seed, indices)`` picks rows.
        callback: ``callback(i, t_next, x, state)`` after each step.
        dtype / device: of the drawn noise (with ``shape``); default: the network's parameters'
            (float32 on the CPU for a model without parameters). With ``x_T`` they follow ``x_T``.
        init / t_start / init_error: a warm or mid-path start (SDEdit-style; Real-Time Iteration
            for diffusion policies): the estimate ``init`` ``[B, ...]`` of the data is noised
            to ``t_start`` in ``(0, ts[0]]`` with the exact forward transition
            (``noise_estimate``; ``init_error``: the estimate's error std per entry) and the
            solve runs on the grid truncated there (``truncate_grid``: ``steps`` / ``ts`` name
            the full grid, so fewer steps run). The noise comes from row ``i``'s stream first.

    The solve runs under ``torch.no_grad()`` (no autograd graph is kept across steps, so
    memory does not grow with the step count) unless ``den.needs_grad`` (gradient guidance,
    DPS, noise optimisation), when the caller's autograd mode is kept.
    Returns:
        ``SampleResult`` with samples, NFE, wall time and (optionally) the trajectory.
    """
    if not isinstance(den, DenoiserBase):
        raise TypeError(f"den must be a Denoiser (or wrapper), got {type(den).__name__}")
    if x_T is None and dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a real floating-point dtype (or None: the model's), got {dtype}")
    solver = solver_registry.get(solver, **solver_options)
    if ts is None and callable(getattr(den, "default_ts", None)):
        ts = den.default_ts(steps)
    ts = grids.resolve(den.process, steps, ts)
    if init is not None or t_start is not None:
        if init is None or t_start is None or x_T is not None:
            raise ValueError("a warm start needs init and t_start (and no x_T)")
        x_T, ts, rng = _warm_start(den, init, t_start, init_error, shape, ts, seed)
    else:
        rng = None
    if x_T is None:
        if dtype is None or device is None:
            m_device, m_dtype = model_placement(den)
            device = device if device is not None else (m_device if m_device is not None else "cpu")
            dtype = dtype if dtype is not None else (m_dtype if m_dtype is not None else torch.float32)
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
        if not x_T.is_floating_point():
            raise TypeError(f"x_T must be a real floating-point tensor, got dtype {x_T.dtype}")
        if x_T.numel() == 0:
            raise ValueError(f"x_T is empty (shape {tuple(x_T.shape)}): need at least one sample of positive size")
        if shape is not None and tuple(shape) != tuple(x_T.shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape={tuple(shape)}")
        if not bool(torch.isfinite(x_T).all()):
            raise ValueError("x_T contains NaN or Inf")
        x = x_T
        if rng is None:
            rng = make_rng(seed, x.shape[0], x.device) if (solver.stochastic or seed is not None) else None

    with contextlib.nullcontext() if den.needs_grad else torch.no_grad():
        return _run(den, solver, x, ts, rng, progress, callback, return_trajectory)


def _warm_start(den, init, t_start, init_error, shape, ts, seed) -> tuple[Tensor, Tensor, SampleRNG]:
    """Check a warm start's inputs; ``(x_{t_start}, truncated grid, the rows' streams)``."""
    if not isinstance(init, Tensor) or init.dim() < 2 or not init.is_floating_point() or init.numel() == 0:
        raise ValueError("init must be a non-empty real floating-point tensor shaped [B, ...]")
    if shape is not None and tuple(shape) != tuple(init.shape):
        raise ValueError(f"init has shape {tuple(init.shape)} but shape={tuple(shape)}")
    model_shape = getattr(den, "shape", None)
    if model_shape is not None and tuple(init.shape[1:]) != tuple(model_shape):
        raise ValueError(f"init has sample shape {tuple(init.shape[1:])}, the model takes {tuple(model_shape)}")
    if not bool(torch.isfinite(init).all()):
        raise ValueError("init contains NaN or Inf")
    t_start = float(t_start)
    if not 0.0 < t_start <= 1.0:  # also NaN
        raise ValueError(f"t_start must be in (0, 1], got {t_start}")
    init_error = float(init_error)
    if not init_error >= 0.0 or init_error == float("inf"):
        raise ValueError(f"init_error must be a finite std >= 0, got {init_error}")
    ts = truncate_grid(ts, t_start)
    rng = make_rng(seed, init.shape[0], init.device)
    return noise_estimate(den, init, t_start, rng, init_error), ts, rng


def _run(den, solver, x, ts, rng, progress, callback, return_trajectory) -> SampleResult:
    nfe0 = den.nfe
    start = time.perf_counter()
    traj = [x] if return_trajectory else None
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(ts) - 1, desc=solver.name, leave=False)
    state = None
    for i, x, state in iterate(den, solver, x, ts, rng):
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
