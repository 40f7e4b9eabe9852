"""Per-element times: each element of a sample (a sequence position, an image row) carries
its own noise level, and fixed-grid solvers step a whole *time field*.

Wu et al., "AR-Diffusion: Auto-Regressive Diffusion Model for Text Generation" (NeurIPS
2023): the elements of a sequence are denoised at different rates, earlier ones ahead of
later ones (times non-decreasing along the sequence), so the start of a sequence is cleaner
than its end and generation becomes left-to-right without losing the parallel refinement
of diffusion. Their "anchor" schedule moves element ``l`` along one base schedule with a
delay proportional to ``l`` (``anchor``). Streaming (a finished front element leaves, a
fresh noisy one enters; Ruhe et al. 2024, "Rolling Diffusion Models") is ``stream``.

**Time field.** A tensor ``field`` ``[N + 1, *fshape]``: row ``k`` holds every element's time
after ``k`` global steps; ``fshape`` broadcasts against a sample's shape without the batch
(``[L]`` or ``[1, L]``: one time per sequence position for ``[B, 1, L]``; ``[H, 1]``: one per
image row for ``[B, C, H, W]``). Each element's column must be non-increasing in ``k``; an
element whose time does not change in a step is not moved in it (so an element held at
``t = 0`` throughout is clean context, and one held at ``t = 1`` waits).

**Why the law is right.** The noise is independent per element, so the marginals
``p_{t_1..t_L}`` satisfy one Fokker-Planck equation per element; the probability-flow ODE
``dx_l/dt_l = f(t_l) x_l - g^2(t_l)/2 score_l(x; t_1..t_L)`` therefore transports them along
any path of the time vector, and the data law is reached when every element is at ``0``.

**How a solver steps a field.** Elements with the same column form a group; a group's
column with its flat steps removed is an ordinary descending grid, and the group is solved
by the *ordinary* solver on that grid, with its own state (history, streams). One model
call per global step, at the whole field, gives every group its predictions. A field in
which all elements share one column is therefore one group, solved exactly as
``loop.sample`` solves it: bitwise the same (at a uniform step the model is called with the
group's grid point). The model must take per-element times: a ``Denoiser`` whose network
declares ``takes_time_field = True`` (``diffinfer.toys.gaussian_sequence`` for an exact one).

Solvers: the fixed-grid solvers whose update is elementwise with one model call per step
(``SUPPORTED``: ddim, euler, ddpm, dpmpp-2m, dpmpp-3m, dpmpp-2m-sde, unipc,
euler-maruyama). Refused with the reason: heun and pc (a second model call per step would
need the other groups at their own intermediate times), evodiff (its variance-optimal weight
mixes all entries of a sample), adaptive (no fixed grid).
"""
from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor

from . import solvers as solver_registry
from .denoiser import DenoiserBase, Prediction
from .grids.grid import Grid
from .rng import SampleRNG, make_rng
from .solvers import DDIM, DPMSolverPP, DPMSolverPP2MSDE, Euler, EulerMaruyama, Solver, UniPC

#: solver classes that step a time field (exact types: a subclass may mix entries, as EVODiff does)
SUPPORTED: tuple[type, ...] = (DDIM, Euler, DPMSolverPP, DPMSolverPP2MSDE, UniPC, EulerMaruyama)
_REFUSED = {
    "heun": "it evaluates the model twice per step, and the second call would need every other element "
            "at its own intermediate time",
    "pc": "its corrector calls the model again at the same time, which a group cannot do alone",
    "evodiff": "its variance-optimal weight is computed over all entries of a sample, so a group's step "
               "would be a different method",
    "adaptive": "it has no fixed grid (its step sizes are chosen per row)",
}


def check_solver(solver, **options) -> Solver:
    """The solver (a name or instance) if it can step a time field; else ``ValueError`` with
    the reason and the supported names."""
    s = solver_registry.get(solver, **options)
    if type(s) in SUPPORTED:
        return s
    valid = ", ".join(n for n in solver_registry.names() if type(solver_registry.get(n)) in SUPPORTED)
    why = _REFUSED.get(s.name, "it is not one of the elementwise fixed-grid solvers")
    raise ValueError(f"solver {s.name!r} cannot step a time field: {why}; valid: {valid}")


# --- time fields --------------------------------------------------------------------------

def anchor(base_ts, length: int, shift: float) -> Tensor:
    """AR-Diffusion's anchor schedule ``[N + 1, length]`` on a base grid ``base_ts`` ``[n + 1]``
    (descending, e.g. ``grids.resolve(process, n, None)``): element ``l`` at global step ``k``
    is at ``base_ts`` at index ``clamp(k - l * shift, 0, n)`` (linear interpolation between
    base points for a fractional index), ``N = n + ceil((length - 1) * shift)``. Element 0
    runs the base grid from step 0; each later one starts ``shift`` steps after the one
    before, so times are non-decreasing along the sequence. ``shift = 0`` is the base grid
    for every element (an ordinary solve)."""
    base = torch.as_tensor(base_ts, dtype=torch.float64).reshape(-1)
    n = base.numel() - 1
    if n < 1 or not bool((base[1:] < base[:-1]).all()):
        raise ValueError("base_ts must be a strictly descending grid of at least 2 times")
    if not (length >= 1 and math.isfinite(shift) and shift >= 0):
        raise ValueError(f"need length >= 1 and a finite shift >= 0, got length={length}, shift={shift}")
    total = n + math.ceil((length - 1) * shift - 1e-12)
    k = torch.arange(total + 1, dtype=torch.float64)[:, None]
    u = (k - shift * torch.arange(length, dtype=torch.float64)[None, :]).clamp(0, n)  # [N + 1, L] base index
    lo = u.floor().long().clamp(max=n - 1)
    w = u - lo
    return torch.where(w == 0, base[lo], torch.where(w == 1, base[lo + 1], (1 - w) * base[lo] + w * base[lo + 1]))


def validate_field(field, element_shape: Sequence[int] | None = None) -> Tensor:
    """``field`` as a float64 CPU tensor ``[N + 1, *fshape]`` after checking it: finite, in
    ``[0, 1]``, every element's column non-increasing, at least one step moving an element,
    ``fshape`` broadcastable to ``element_shape`` (a sample's shape without the batch)."""
    f = torch.as_tensor(field, dtype=torch.float64).detach().cpu()
    if f.dim() < 2 or f.shape[0] < 2:
        raise ValueError(f"a time field is [N + 1, *element shape] with N >= 1, got shape {tuple(f.shape)}")
    if not bool(((f >= 0) & (f <= 1)).all()):  # also NaN
        raise ValueError("a time field's times must lie in [0, 1] (and not be NaN)")
    if bool((f[1:] > f[:-1]).any()):
        k = int((f[1:] > f[:-1]).reshape(f.shape[0] - 1, -1).any(1).nonzero()[0]) + 1
        raise ValueError(f"an element's time must never increase, but it does at step {k}")
    if not bool((f[1:] < f[:-1]).any()):
        raise ValueError("the time field never moves any element")
    if element_shape is not None:
        try:
            torch.broadcast_shapes(tuple(f.shape[1:]), tuple(element_shape))
        except RuntimeError:
            raise ValueError(f"a time field's element shape {tuple(f.shape[1:])} does not broadcast to the "
                             f"sample's {tuple(element_shape)}") from None
        if len(f.shape) - 1 > len(element_shape):
            raise ValueError(f"a time field's element shape {tuple(f.shape[1:])} has more dimensions than the "
                             f"sample's {tuple(element_shape)}")
    return f


# --- the groups a field falls into ------------------------------------------------------------

@dataclass
class Group:
    """Elements sharing one time column: ``where`` (bool, the sample's element shape; ``None``
    for all of them), ``grid`` (the column without its flat steps), ``local`` (global step ->
    index in ``grid``, or ``-1`` where the group does not move)."""

    where: Tensor | None
    grid: Grid | None
    local: tuple[int, ...]


def groups(process, field: Tensor, element_shape: Sequence[int]) -> list[Group]:
    """The groups of ``field`` (validated) for samples with ``element_shape``: one per distinct
    column, in order of first appearance; groups that never move are left out."""
    E = tuple(element_shape)
    fshape = tuple(field.shape[1:])
    cols = field.reshape(field.shape[0], -1)  # [N + 1, P]
    uniq, inverse = torch.unique(cols, dim=1, return_inverse=True)
    order = sorted(range(uniq.shape[1]), key=lambda u: int((inverse == u).nonzero()[0]))
    out = []
    for u in order:
        col = uniq[:, u]
        moves = (col[1:] < col[:-1]).tolist()
        if not any(moves):
            continue
        ts, local = [float(col[0])], []
        for k, m in enumerate(moves):
            local.append(len(ts) - 1 if m else -1)
            if m:
                ts.append(float(col[k + 1]))
        pad = (1,) * (len(E) - len(fshape))
        where = None if uniq.shape[1] == 1 else torch.broadcast_to((inverse == u).reshape(pad + fshape), E)
        out.append(Group(where, Grid.of(process, torch.tensor(ts, dtype=torch.float64)), tuple(local)))
    return out


class _Given(DenoiserBase):
    """A model view that answers one precomputed prediction (a group's share of the step's one
    joint model call); counts nothing."""

    def __init__(self, process, counter):
        self.process, self._counter, self.pred = process, counter, None

    def predict(self, x: Tensor, t) -> Prediction:
        return self.pred


def _share(pred: Prediction, where: Tensor | None, x: Tensor, grid: Grid, j: int) -> Prediction:
    """The group's entries of a joint prediction (``eps`` derived on demand from the group's
    own coefficients where the model gave only ``x0``)."""
    if where is None:
        return pred
    x0 = pred.x0[:, where]  # [B, n]
    if pred._eps is not None:  # given by the model (eps / score / velocity outputs)
        return Prediction(x0, pred._eps[:, where])
    c = grid.host(j)
    return Prediction(x0, derive=(x, c.alpha, c.sigma))


class FieldSolve:
    """The groups of a time field with their solver states; ``step(den, x, k)`` takes global
    step ``k`` (one model call) and returns the new sample."""

    def __init__(self, den: DenoiserBase, solver, x: Tensor, field, rng: SampleRNG | None = None, **options):
        self.solver = check_solver(solver, **options)
        self.field = validate_field(field, x.shape[1:])
        self.groups = groups(den.process, self.field, x.shape[1:])
        for g in self.groups:
            g.where = None if g.where is None else g.where.to(x.device)
        self.given = _Given(den.process, den._counter)
        self.states = [self.solver.init(self.given, x if g.where is None else x[:, g.where], g.grid, rng)
                       for g in self.groups]
        pad = (1,) * (x.dim() - self.field.dim())
        self._shape = (1,) + pad + tuple(self.field.shape[1:])

    @property
    def steps(self) -> int:
        return self.field.shape[0] - 1

    def time(self, k: int, x: Tensor, moving: list[int]):
        """What the model is called with at step ``k``: a moving group's grid point when every
        element is at the same time (the ordinary path), else the field ``[1, ..., *fshape]``."""
        row = self.field[k]
        if bool((row == row.reshape(-1)[0]).all()):
            g = self.groups[moving[0]]
            return g.grid.point(g.local[k])
        return row.reshape(self._shape).to(x.device)

    def step(self, den: DenoiserBase, x: Tensor, k: int) -> Tensor:
        moving = [u for u, g in enumerate(self.groups) if g.local[k] >= 0]
        if not moving:
            return x
        pred = den.predict(x, self.time(k, x, moving))
        out = None
        for u in moving:
            g, j = self.groups[u], self.groups[u].local[k]
            xg = x if g.where is None else x[:, g.where]
            self.given.pred = _share(pred, g.where, xg, g.grid, j)
            xg, self.states[u] = self.solver.step(self.given, xg, j, self.states[u])
            if g.where is None:
                out = xg
            else:
                out = x.clone() if out is None else out
                out[:, g.where] = xg
        self.given.pred = None
        return out


def iterate_field(den: DenoiserBase, solver, x: Tensor, field, rng: SampleRNG | None = None,
                  **options) -> Iterator[tuple[int, Tensor]]:
    """Run ``solver`` over the time field ``field`` ``[N + 1, *fshape]`` from ``x`` (at
    ``field[0]``), yielding ``(k, x)`` after global step ``k`` (``x`` then at ``field[k + 1]``)."""
    run = FieldSolve(den, solver, x, field, rng, **options)
    for k in range(run.steps):
        x = run.step(den, x, k)
        yield k, x


@dataclass
class FieldResult:
    """``x``: samples ``[B, ...]``; ``nfe``: model calls; ``wall_time``: seconds; ``field``: the time field."""

    x: Tensor
    nfe: int
    wall_time: float
    field: Tensor


def initial_noise(den: DenoiserBase, field: Tensor, shape: Sequence[int], rng: SampleRNG,
                  dtype=torch.float32, device="cpu") -> Tensor:
    """``sigma(field[0]) * z`` per entry, ``z`` from each row's stream (``[B, *shape[1:]]``)."""
    z = rng.randn(tuple(shape[1:]), dtype=dtype, device=device)
    s = den.process.sigma(field[0]).reshape((1,) * (len(shape) - field.dim()) + tuple(field.shape[1:]))
    return z * s.to(device=device, dtype=dtype)


def sample_field(den: DenoiserBase, field, x_T: Tensor | None = None, shape: Sequence[int] | None = None,
                 solver="dpmpp-2m", seed=None, dtype=torch.float32, device="cpu", **options) -> FieldResult:
    """Samples over a time field (``iterate_field``): from ``x_T`` (at ``field[0]``: noise, and
    the known values of elements held at ``t = 0``) or from ``sigma(field[0]) * z`` for
    ``shape``; row ``i`` draws its noise from stream ``(seed, i)``."""
    if x_T is None and shape is None:
        raise ValueError("give x_T or shape")
    if x_T is not None and not (isinstance(x_T, Tensor) and x_T.dim() >= 2 and x_T.is_floating_point()):
        raise ValueError("x_T must be a real floating-point tensor shaped [B, ...]")
    f = validate_field(field, tuple(shape)[1:] if x_T is None else x_T.shape[1:])
    check_solver(solver, **options)
    if x_T is None:
        rng = make_rng(seed, shape[0], device)
        x = initial_noise(den, f, shape, rng, dtype, device)
    else:
        x = x_T
        s = check_solver(solver, **options)
        rng = make_rng(seed, x.shape[0], x.device) if (s.stochastic or seed is not None) else None
    nfe0, start = den.nfe, time.perf_counter()
    with torch.no_grad():
        for _, x in iterate_field(den, solver, x, f, rng, **options):
            pass
    return FieldResult(x, den.nfe - nfe0, time.perf_counter() - start, f)


# --- streaming ----------------------------------------------------------------------------

@dataclass
class _Element:
    x: Tensor       # [B, *C, 1]
    state: object   # the solver's state on the base grid
    start: int      # the global step it entered at


def stream(den: DenoiserBase, base_ts, shift: int, count: int, batch: int, channels: Sequence[int] = (1,),
           solver="dpmpp-2m", context: int = 1, history: Tensor | None = None, seed=None,
           dtype=torch.float32, device="cpu", **options) -> Iterator[Tensor]:
    """Generate a sequence element by element, yielding each finished element ``[B, *channels]``.

    The anchor schedule (``anchor``) with integer ``shift`` run on a sliding window: a new
    element enters at ``base_ts[0]`` as ``sigma * z`` (from each row's stream) every ``shift``
    global steps, each element runs the ``n`` steps of ``base_ts`` (which must end at ``t = 0``),
    and the front element leaves when it reaches ``0``. The model sees the last ``context``
    finished elements (clean, ``t = 0``) and the active ones, along the last axis:
    ``[B, *channels, W]`` with a time field. ``history`` ``[B, *channels, H]`` (clean values)
    seeds the context: a rolling forecast. One model call per global step. With a
    deterministic solver, a Markov model of order ``p <= context`` whose noisiest time
    carries no signal (``alpha(base_ts[0]) = 0``, rectified flow) and the same initial noise,
    this is the full-sequence solve on ``anchor(base_ts, count, shift)`` up to round-off."""
    s = check_solver(solver, **options)
    base = torch.as_tensor(base_ts, dtype=torch.float64).reshape(-1)
    n = base.numel() - 1
    if n < 1 or not bool((base[1:] < base[:-1]).all()) or float(base[-1]) != 0.0:
        raise ValueError("base_ts must be a strictly descending grid ending at t = 0")
    if int(shift) != shift or shift < 1:
        raise ValueError(f"a stream's shift must be an integer >= 1, got {shift}")
    if count < 1 or batch < 1 or context < 0:
        raise ValueError(f"need count >= 1, batch >= 1, context >= 0; got {count}, {batch}, {context}")
    shift, channels = int(shift), tuple(int(c) for c in channels)
    grid = Grid.of(den.process, base)
    rng = make_rng(seed, batch, device)
    given = _Given(den.process, den._counter)
    ctx: collections.deque = collections.deque(maxlen=context)  # the last finished elements, [B, *C, 1] each
    if history is not None:
        if history.shape[:-1] != (batch,) + channels:
            raise ValueError(f"history must be [B, *channels, H] = [{batch}, {', '.join(map(str, channels))}, H], "
                             f"got {tuple(history.shape)}")
        ctx.extend(history.to(device=device, dtype=dtype).split(1, dim=-1))
    active: list[_Element] = []
    sigma0 = float(den.process.sigma(base[0]))
    emitted, entered, k = 0, 0, 0
    with torch.no_grad():
        while emitted < count:
            if entered < count and k == entered * shift:  # a new noisy element enters at base_ts[0]
                x = rng.randn(channels + (1,), dtype=dtype, device=device) * sigma0
                active.append(_Element(x, s.init(given, x, grid, rng), k))
                entered += 1
            window = list(ctx) + [e.x for e in active]
            times = [0.0] * (len(window) - len(active)) + [grid.t[k - e.start] for e in active]
            xw = torch.cat(window, dim=-1)  # [B, *C, W]
            if all(t == times[0] for t in times):
                t_model = grid.point(k - active[0].start)
            else:
                t_model = torch.tensor(times, dtype=torch.float64, device=device).reshape((1,) * (xw.dim() - 1) + (-1,))
            pred = den.predict(xw, t_model)
            off = len(window) - len(active)
            for m, e in enumerate(active):
                j = k - e.start
                sl = slice(off + m, off + m + 1)
                given.pred = (pred if len(window) == 1 else
                              _share_slice(pred, sl, e.x, grid, j))
                e.x, e.state = s.step(given, e.x, j, e.state)
            given.pred = None
            k += 1
            while active and k - active[0].start == n:  # the front element is clean: it leaves
                done = active.pop(0)
                ctx.append(done.x)
                emitted += 1
                yield done.x[..., 0]


def _share_slice(pred: Prediction, sl: slice, x: Tensor, grid: Grid, j: int) -> Prediction:
    """Positions ``sl`` (last axis) of a joint prediction, as ``_share``."""
    x0 = pred.x0[..., sl]
    if pred._eps is not None:
        return Prediction(x0, pred._eps[..., sl])
    c = grid.host(j)
    return Prediction(x0, derive=(x, c.alpha, c.sigma))


def forecast(den: DenoiserBase, history: Tensor, horizon: int, base_ts, shift: int = 1, solver="dpmpp-2m",
             context: int | None = None, seed=None, **options) -> Tensor:
    """Forecast samples ``[B, *C, horizon]`` after clean ``history`` ``[B, *C, H]``.

    ``shift >= 1``: rolling (``stream`` seeded with the last ``context`` values of the history,
    default all of them); ``shift = 0``: the plain forecast, every horizon element on
    ``base_ts`` at once beside the history held at ``t = 0`` (``sample_field``). With an exact
    model both sample the model's predictive law."""
    if history.dim() < 2 or history.shape[-1] < 1 or not history.is_floating_point():
        raise ValueError(f"history must be a real tensor [B, *C, H] with H >= 1, got {tuple(history.shape)}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    B, C, H = history.shape[0], tuple(history.shape[1:-1]), history.shape[-1]
    context = H if context is None else int(context)
    if shift:
        out = stream(den, base_ts, shift, horizon, B, C, solver, context, history, seed, history.dtype,
                     history.device, **options)
        return torch.stack(list(out), dim=-1)
    base = torch.as_tensor(base_ts, dtype=torch.float64).reshape(-1)
    h = history[..., -context:] if context else history[..., :0]
    field = torch.cat([torch.zeros(base.numel(), h.shape[-1], dtype=torch.float64),
                       base[:, None].expand(-1, horizon)], dim=1)  # [n + 1, context + horizon]
    rng = make_rng(seed, B, history.device)
    z = initial_noise(den, field[:, h.shape[-1]:], (B, *C, horizon), rng, history.dtype, history.device)
    x = sample_field(den, field, x_T=torch.cat([h, z], dim=-1), solver=solver, seed=rng, **options).x
    return x[..., h.shape[-1]:]


__all__ = ["SUPPORTED", "check_solver", "anchor", "validate_field", "groups", "Group", "FieldSolve",
           "iterate_field", "sample_field", "FieldResult", "initial_noise", "stream", "forecast"]
