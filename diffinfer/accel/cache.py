"""Feature caching: reuse a network's deep features between full refreshes.

DeepCache (Ma, Fang & Wang 2023, "DeepCache: Accelerating Diffusion Models for Free") and
A-SDM's feature inheritance: adjacent denoising steps have nearly the same high-level
features, so the deep part of the network (a UNet's inner down / mid / up blocks, a DiT's
middle transformer blocks) is computed only at *refresh* calls and reused in between; the
other calls compute only the shallow branch (the outer UNet level, or the DiT's first and
last blocks).

- UNets (``diffinfer.nets.UNet``; diffusers ``UNet2DModel`` / ``UNet2DConditionModel``):
  *replay*. On a cached call the skipped blocks return what they returned at the row's last
  refresh; only the outer level runs, reading the cached output of the deepest skipped up
  block and a fresh skip connection (DeepCache, Alg. 1).
- ``diffinfer.nets.DiT``: *residual*. The middle blocks ``[start, stop)`` add the change
  they made at the last refresh, ``h_stop = h_start + (h_stop' - h_start')`` (the primes
  from the refresh), so the first blocks still see this call's input.
- Any network, whole (``network_plan``; a UNet's ``depth=0``): a cached call runs nothing of
  it and returns its output at the last refresh.

*Forecasting* (``order=m``; Liu et al. 2025, "From Reusing to Forecasting: Accelerating
Diffusion Models with TaylorSeers"): instead of the value at the last refresh, a cached call
gets the polynomial through the row's last ``m + 1`` refreshes evaluated at the call's time
(TaylorSeer's Taylor series from finite differences, written for uneven refresh times:
Lagrange extrapolation in ``t`` or in log-SNR, ``variable=``). ``order=0`` is plain reuse.

``FeatureCache(den, every=k | steps=[...] | threshold=delta)`` is a ``Denoiser -> Denoiser``
wrapper, so it works with every solver and driver. The skipped modules are found on the
network under ``den`` and switched for the duration of one ``predict`` (their instance
``forward`` replaced, nothing else changed). The schedule counts the *calls* of one run:

- ``every=k``: calls ``0, k, 2k, ...`` of the run are refreshes (``every=1``: every call, and
  the output is bitwise the uncached network's);
- ``steps=[...]``: these call indices (call 0 always: the cache starts empty);
- ``threshold=delta``: also refresh a row when the relative change
  ``||f - f_ref|| / ||f_ref||`` of the shallow feature entering the deep part (``f``; ``f_ref``
  its value at the row's last refresh) exceeds ``delta``. Rows decide separately; when any row
  refreshes the deep part runs on the batch and only those rows take the new features, so a
  row's result never depends on the other rows.

A *run* is a sequence of calls whose times do not increase. A call starts a new run (and
empties the cache) when its time is above the previous call's, or equal to it but not the same
grid point (a new solve, a re-noised branch), when the batch size, dtype or device changes, or
after ``reset()``. Drivers that resample or branch particles mid-run (SMC, ``loop.Step.den``)
call ``select(idx)``: the cached features are gathered by ``idx`` (network batches that are
``m`` stacked copies of the batch, as classifier-free guidance's ``[x, x]``, are gathered block
by block), so a particle continues with its own features. The cache wraps guidance, not the
other way round: ``FeatureCache(ClassifierFreeGuidance(den, ...))``.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..denoiser import Denoiser, DenoiserBase, Prediction
from ..grids.grid import GridPoint
from ..process import as_time

MODES = ("replay", "residual")
_UNSET = object()
VARIABLES = ("t", "logsnr")  # what the forecast polynomial is a polynomial in
MAX_ORDER = 3  # higher orders amplify the features' jitter in time (TaylorSeer uses 1-2)


# --- plans: which modules of which network -------------------------------------------------
@dataclass(frozen=True)
class CachePlan:
    """What a cached call skips: ``modules`` (in the order the forward calls them) of the
    network ``root``; ``mode`` ``'replay'`` (each returns its output at the last refresh) or
    ``'residual'`` (the run of modules adds its change at the last refresh; every module must
    map its first argument to a tensor of the same shape). ``outputs_used`` (replay): the
    indices of the modules whose outputs are read outside the skipped run (``None``: all);
    only these are forecast, the others are handed their latest refresh."""

    root: nn.Module
    modules: tuple[nn.Module, ...]
    mode: str = "replay"
    name: str = ""
    outputs_used: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown cache mode {self.mode!r}; valid: {', '.join(MODES)}")
        if not self.modules:
            raise ValueError("a cache plan needs at least one module to skip")


def network_plan(net: nn.Module) -> CachePlan:
    """Any network as one skipped module: a cached call runs nothing and returns the network's
    output at the last refresh, or its forecast (``order >= 1``; TaylorSeer on the last feature).
    The threshold signal is the network's input."""
    return CachePlan(net, (net,), "replay", f"whole {type(net).__name__}", (0,))


def unet_plan(net: nn.Module, depth: int = 1) -> CachePlan:
    """``diffinfer.nets.UNet``: keep the outer ``depth`` levels (``conv_in``, ``down[:depth]``,
    ``up[-depth:]``), skip ``down[depth:]``, ``mid`` and ``up[:-depth]`` (DeepCache's branch).
    ``depth=0`` keeps nothing: the whole network (``network_plan``)."""
    levels = len(net.down)
    if not 0 <= int(depth) <= levels:
        raise ValueError(f"depth must be in [0, {levels}] for this UNet ({levels} levels), got {depth}")
    d = int(depth)
    if d == 0:
        return network_plan(net)
    mods = tuple(net.down[d:]) + (net.mid,) + tuple(net.up[:levels - d])
    return CachePlan(net, mods, "replay", f"UNet depth {d}", (len(mods) - 1,))


def dit_plan(net: nn.Module, start: int | None = None, stop: int | None = None) -> CachePlan:
    """``diffinfer.nets.DiT``: the middle blocks ``[start, stop)`` (default ``[1, depth - 1)``,
    all blocks but the first and the last) reuse their residual."""
    depth = len(net.blocks)
    start = 1 if start is None else int(start)
    stop = depth - 1 if stop is None else int(stop)
    if not 0 <= start < stop <= depth:
        raise ValueError(f"need 0 <= start < stop <= {depth} (the DiT's depth), got start={start}, stop={stop}")
    return CachePlan(net, tuple(net.blocks[start:stop]), "residual", f"DiT blocks [{start}, {stop})")


def diffusers_unet_plan(model: nn.Module, depth: int = 1) -> CachePlan:
    """A diffusers ``UNet2DModel`` / ``UNet2DConditionModel``: skip ``down_blocks[depth:]``,
    ``mid_block`` and ``up_blocks[:-depth]``; the last up block(s) read the cached output of the
    one before and the fresh skip connections of ``conv_in`` and ``down_blocks[:depth]``.
    ``depth=0``: the whole model (``network_plan``)."""
    levels = len(model.down_blocks)
    if not 0 <= int(depth) <= levels:
        raise ValueError(f"depth must be in [0, {levels}] for this UNet ({levels} down blocks), got {depth}")
    d = int(depth)
    if d == 0:
        return network_plan(model)
    mid = (model.mid_block,) if getattr(model, "mid_block", None) is not None else ()
    mods = tuple(model.down_blocks[d:]) + mid + tuple(model.up_blocks[:levels - d])
    return CachePlan(model, mods, "replay", f"{type(model).__name__} depth {d}", (len(mods) - 1,))


def _network(den: DenoiserBase) -> nn.Module:
    """The ``nn.Module`` under ``den``: through wrappers' ``den``, a ``Denoiser``'s ``net`` and a
    diffusers adapter's ``model``."""
    seen = 0
    while isinstance(den, DenoiserBase) and not isinstance(den, Denoiser) and seen < 32:
        inner = getattr(den, "den", None)
        if inner is None:
            raise TypeError(f"cannot find the network under {type(den).__name__} (no .den); pass plan=")
        den, seen = inner, seen + 1
    if not isinstance(den, Denoiser):
        raise TypeError(f"expected a Denoiser (or a wrapper of one), got {type(den).__name__}")
    net = den.net
    net = getattr(net, "model", net)  # integrations.diffusers.DiffusersNet
    if not isinstance(net, nn.Module):
        raise TypeError(f"feature caching needs an nn.Module network, got {type(net).__name__}; pass plan=")
    return net


SUPPORTED = ("diffinfer.nets.UNet", "diffinfer.nets.DiT", "diffusers UNet2DModel", "diffusers UNet2DConditionModel")


def plan_for(net: nn.Module, **options) -> CachePlan:
    """The default plan for a supported network (``SUPPORTED``); ``options`` go to its builder
    (``depth`` for UNets, ``start`` / ``stop`` for the DiT)."""
    from ..nets.dit import DiT
    from ..nets.unet import UNet
    if isinstance(net, UNet):
        return unet_plan(net, **options)
    if isinstance(net, DiT):
        return dit_plan(net, **options)
    if type(net).__name__ in ("UNet2DModel", "UNet2DConditionModel") and hasattr(net, "down_blocks"):
        return diffusers_unet_plan(net, **options)
    raise TypeError(f"no feature-cache plan for {type(net).__name__}; supported: {', '.join(SUPPORTED)} "
                    "(or pass plan=network_plan(net) to cache its output, or plan=CachePlan(...))")


# --- the cache store ---------------------------------------------------------------------------
def _mapn(fn, *objs: Any) -> Any:
    """``fn`` over matching tensors of nested tuples / lists of the same structure."""
    if isinstance(objs[0], Tensor):
        return fn(*objs)
    if isinstance(objs[0], (tuple, list)):
        return type(objs[0])(_mapn(fn, *parts) for parts in zip(*objs))
    return objs[0]


def _leaf(obj: Any) -> Tensor:
    while not isinstance(obj, Tensor):
        obj = obj[0]
    return obj


def _rows_of(obj: Any) -> int:
    return _leaf(obj).shape[0]


def _device_of(obj: Any) -> torch.device:
    return _leaf(obj).device


def _first_tensor(args: tuple, kwargs: dict) -> Tensor:
    if args and isinstance(args[0], Tensor):
        return args[0]
    for key in ("hidden_states", "sample", "x"):
        if isinstance(kwargs.get(key), Tensor):
            return kwargs[key]
    raise TypeError("a cached module's first argument must be its input tensor")


def _rows_where(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """Rows of ``new`` where ``mask`` ``[R]``, else of ``old``."""
    return torch.where(mask.reshape((-1,) + (1,) * (new.dim() - 1)), new, old)


@dataclass
class CacheStats:
    """Calls of the wrapped network: ``full`` (the deep part ran: every row or some rows
    refreshed), ``cached`` (no row refreshed), ``rows_refreshed`` (network rows that took new
    features). Shared by ``select`` copies."""

    full: int = 0
    cached: int = 0
    rows_refreshed: int = 0

    @property
    def calls(self) -> int:
        return self.full + self.cached


def lagrange_weights(times: Tensor, valid: Tensor, t: float) -> Tensor:
    """Weights ``w [S, R]`` of the polynomial through each row's valid nodes, evaluated at ``t``:
    ``sum_k w[k, r] f_k[r]`` is the extrapolation of row ``r``'s values ``f_k`` at ``times[k, r]``
    (``valid [S, R]``; invalid nodes get weight 0). One node: weight 1 (plain reuse)."""
    S = times.shape[0]
    w = valid.to(times.dtype).clone()  # [S, R]
    for k in range(S):
        for j in range(S):
            if j != k:
                both = valid[j] & valid[k]  # [R]; an invalid slot may repeat a valid one's time
                gap = torch.where(both, times[k] - times[j], torch.ones_like(times[k]))
                w[k] = w[k] * torch.where(both, (t - times[j]) / gap, torch.ones_like(gap))
    return w


@dataclass
class _Store:
    """The cached features of one run: ``history[k]`` is the value at the ``k``-th most recent
    refresh (replay: the list of the modules' outputs; residual: the change ``delta``), with
    ``times[k]`` ``[R]`` the call time of that refresh per network row and ``filled`` ``[R]`` how
    many of the ``len(history)`` slots hold a refresh for that row; ``ref`` (the shallow feature
    at each row's last refresh, for ``threshold``). Tensors are ``[R, ...]`` with
    ``R = copies * rows`` network rows."""

    history: list = field(default_factory=list)
    times: list = field(default_factory=list)
    filled: Tensor | None = None
    ref: Tensor | None = None
    rows: int = 0           # the wrapper's batch
    copies: int = 1         # network rows per wrapper row (2 under CFG's [x, x])
    n: int = 0              # calls so far in this run
    last_t: float | None = None
    last_point: tuple | None = None  # (grid, k) of the last call, if a grid point
    dtype: torch.dtype | None = None
    device: torch.device | None = None

    @property
    def empty(self) -> bool:
        return not self.history

    @property
    def net_rows(self) -> int:
        """Rows of the network batch the features were computed on (0 if empty)."""
        return 0 if self.empty else _rows_of(self.history[0])

    def weights(self, t: float) -> Tensor | None:
        """Each row's forecast weights ``[S, R]`` over the stored refreshes at time ``t`` (the
        polynomial through the row's refreshes; TaylorSeer's forecast), or ``None`` with one
        slot (plain reuse of the latest refresh)."""
        if len(self.history) == 1:
            return None
        times = torch.stack(self.times)  # [S, R]
        valid = torch.arange(len(self.history), device=times.device)[:, None] < self.filled[None, :]  # [S, R]
        return lagrange_weights(times, valid, t)

    def forecast(self, t: float, part=lambda value: value) -> Any:
        """The cached value at time ``t``, or of ``part(value)`` (one module's output)."""
        w = self.weights(t)
        return self.combine(w, part)

    def combine(self, w: Tensor | None, part=lambda value: value) -> Any:
        """``sum_k w[k] part(history[k])`` row by row (``w`` from ``weights``; ``None``: the latest)."""
        if w is None:
            return part(self.history[0])

        def combine(*values: Tensor) -> Tensor:
            shape = (-1,) + (1,) * (values[0].dim() - 1)
            out = values[0] * w[0].to(values[0].dtype).reshape(shape)
            for k in range(1, len(values)):
                out = out + values[k] * w[k].to(values[k].dtype).reshape(shape)
            return out

        return _mapn(combine, *(part(v) for v in self.history))

    def push(self, value: Any, t: float, mask: Tensor | None, slots: int) -> None:
        """Record a refresh at time ``t`` of the rows ``mask`` ``[R]`` (``None``: every row),
        keeping at most ``slots`` refreshes per row (older ones drop out)."""
        R = _rows_of(value)
        now = torch.full((R,), float(t), dtype=torch.float64, device=_device_of(value))
        if not self.empty:
            # a row whose latest refresh is at this same time (Heun's corrector, then the next
            # predictor) replaces it: two nodes at one time have no polynomial through them
            again = (self.times[0] == now) & (self.filled > 0)  # [R]
            if bool(again.any()):
                hit = again if mask is None else (again & mask)
                self.history[0] = _mapn(lambda a, b: _rows_where(hit, a, b), value, self.history[0])
                mask = (~again) if mask is None else (mask & ~again)
                if not bool(mask.any()):
                    return
        if mask is None or self.empty:
            self.history = [value] + self.history[:slots - 1]
            self.times = [now] + self.times[:slots - 1]
            filled = torch.zeros(R, dtype=torch.long, device=now.device) if self.filled is None else self.filled
            self.filled = (filled + 1).clamp(max=len(self.history))
            return
        # rows in ``mask`` shift their slots down by one; the others keep theirs
        if len(self.history) < slots:
            self.history = self.history + [self.history[-1]]
            self.times = self.times + [self.times[-1]]
        for k in range(len(self.history) - 1, 0, -1):
            self.history[k] = _mapn(lambda a, b: _rows_where(mask, a, b), self.history[k - 1], self.history[k])
            self.times[k] = torch.where(mask, self.times[k - 1], self.times[k])
        self.history[0] = _mapn(lambda a, b: _rows_where(mask, a, b), value, self.history[0])
        self.times[0] = torch.where(mask, now, self.times[0])
        self.filled = torch.where(mask, (self.filled + 1).clamp(max=len(self.history)), self.filled)

    def gather(self, idx: Tensor) -> "_Store":
        """The store of wrapper rows ``idx`` (repeats allowed; blockwise for stacked copies)."""
        new = _Store(rows=int(idx.numel()), copies=self.copies, n=self.n, last_t=self.last_t,
                     last_point=self.last_point, dtype=self.dtype, device=self.device)
        if self.empty:
            return new
        idx = idx.reshape(-1).long()
        net_idx = torch.cat([idx + c * self.rows for c in range(self.copies)])  # [copies * len(idx)]

        def take(v: Tensor) -> Tensor:
            return v[net_idx.to(v.device)]

        new.history = [_mapn(take, v) for v in self.history]
        new.times = [take(v) for v in self.times]
        new.filled = take(self.filled)
        new.ref = None if self.ref is None else take(self.ref)
        return new


class _Call:
    """One network call at time ``t`` under the plan: installs the stubs, decides the refresh
    rows at the first skipped module, records or replays the forecast of the cached value."""

    def __init__(self, plan: CachePlan, store: _Store, t: float, force: bool, threshold: float | None,
                 slots: int, stats: CacheStats):
        self.plan, self.store, self.t, self.force, self.threshold = plan, store, t, force, threshold
        self.slots, self.stats = slots, stats
        self.mask: Tensor | None = None   # [R] rows that refresh; None until decided
        self.decided = False
        self.all_rows = False
        self.any_rows = False
        self.forwards = 0
        self.new_outputs: list = []
        self.new_delta: Tensor | None = None
        self.x_in: Tensor | None = None   # residual: the input of the first skipped module
        self._w = _UNSET  # the forecast weights, computed when first needed

    def cached(self, j: int | None = None) -> Any:
        """The store's value (residual: the change; replay: module ``j``'s output) forecast to
        this call's time. Replay modules whose output stays inside the skipped run (not in the
        plan's ``outputs_used``) get their latest refresh, not a forecast."""
        s = self.store
        if j is not None and self.plan.outputs_used is not None and j not in self.plan.outputs_used:
            return s.history[0][j]
        if self._w is _UNSET:
            self._w = s.weights(self.t)
        return s.combine(self._w, (lambda v: v) if j is None else (lambda v: v[j]))

    # the decision, made when the first skipped module is reached (its input is the signal)
    def _decide(self, signal: Tensor) -> None:
        R = signal.shape[0]
        s = self.store
        if self.force or s.empty or s.net_rows != R:
            mask = torch.ones(R, dtype=torch.bool, device=signal.device)
        else:
            mask = torch.zeros(R, dtype=torch.bool, device=signal.device)
        if self.threshold is not None and s.ref is not None and s.ref.shape == signal.shape and not bool(mask.all()):
            f, ref = signal.detach().reshape(R, -1).double(), s.ref.reshape(R, -1).double()
            change = (f - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-30)  # [R]
            mask = mask | (change > self.threshold)
        self.mask = mask
        self.all_rows = bool(mask.all())
        self.any_rows = self.all_rows or bool(mask.any())
        self.decided = True
        if self.threshold is not None:
            f = signal.detach()
            s.ref = f if (self.all_rows or s.ref is None) else _rows_where(mask, f, s.ref)

    def stub(self, j: int, original: Callable) -> Callable:
        last = len(self.plan.modules) - 1

        def forward(*args, **kwargs):
            x = _first_tensor(args, kwargs)
            if j == 0:
                if self.forwards > 1:
                    raise RuntimeError("feature caching needs one network call per prediction; this model view "
                                       "called the network twice (put FeatureCache outside guidance, which "
                                       "batches both branches into one call)")
                self._decide(x)
            if self.plan.mode == "replay":
                return self._replay(j, original, args, kwargs)
            return self._residual(j, last, x, original, args, kwargs)

        return forward

    def _replay(self, j, original, args, kwargs):
        if not self.any_rows:
            return self.cached(j)
        out = original(*args, **kwargs)
        if not self.all_rows:
            out = _mapn(lambda new, old: _rows_where(self.mask, new, old), out, self.cached(j))
        self.new_outputs.append(_mapn(lambda v: v.detach(), out))
        return out

    def _residual(self, j, last, x, original, args, kwargs):
        if j == 0:
            self.x_in = x
        if not self.any_rows:
            return x + self.cached() if j == 0 else x
        out = original(*args, **kwargs)
        if j == last:
            self.new_delta = (out - self.x_in).detach()
            if not self.all_rows:
                out = _rows_where(self.mask, out, self.x_in + self.cached())
        return out

    def commit(self) -> None:
        s = self.store
        if not self.decided:
            raise RuntimeError(f"the network ran without reaching the cached modules ({self.plan.name}); "
                               "is the plan built on this network?")
        if self.any_rows:
            value = self.new_outputs if self.plan.mode == "replay" else self.new_delta
            s.push(value, self.t, None if self.all_rows else self.mask, self.slots)
            self.stats.full += 1
            self.stats.rows_refreshed += int(self.mask.sum()) if not self.all_rows else int(self.mask.numel())
        else:
            self.stats.cached += 1

    @contextlib.contextmanager
    def installed(self):
        mods = self.plan.modules

        def count(_module, _args):
            self.forwards += 1

        handle = self.plan.root.register_forward_pre_hook(count)
        try:
            for j, m in enumerate(mods):
                if "forward" in m.__dict__:
                    raise RuntimeError(f"module {type(m).__name__} already has its forward replaced "
                                       "(two feature caches active on one network?)")
                m.forward = self.stub(j, type(m).forward.__get__(m))
            yield self
        finally:
            for m in mods:
                m.__dict__.pop("forward", None)
            handle.remove()


# --- the wrapper -------------------------------------------------------------------------------
class FeatureCache(DenoiserBase):
    """Reuse the deep features of ``den``'s network between refreshes (DeepCache).

    Args:
        den: a ``Denoiser`` over a supported network (``SUPPORTED``), or a wrapper of one
            (guidance, thresholding) that calls the network once per prediction.
        every: refresh every ``every``-th call of a run (1: always; bitwise the uncached model).
        steps: refresh at these call indices of a run (0 is always one).
        threshold: also refresh rows whose shallow feature changed by more than this relative
            amount since their last refresh.
        order: forecast order. ``0`` (default) reuses the cached value (DeepCache); ``m >= 1``
            extrapolates it to the call's time with the polynomial through the last ``m + 1``
            refreshes (TaylorSeer).
        variable: what that polynomial is a polynomial in: ``'t'`` (the process time) or
            ``'logsnr'`` (finite at every call).
        plan: a ``CachePlan``; default ``plan_for(network, **plan_options)``.
        plan_options: ``depth`` (UNets) or ``start`` / ``stop`` (DiT).

    ``stats`` counts full and cached network calls; ``reset()`` empties the cache.
    """

    def __init__(self, den: DenoiserBase, every: int | None = None, steps: Sequence[int] | None = None,
                 threshold: float | None = None, order: int = 0, variable: str = "t", plan: CachePlan | None = None,
                 **plan_options):
        self._wrap(den)
        if int(order) != order or not 0 <= int(order) <= MAX_ORDER:
            raise ValueError(f"forecast order must be an integer in [0, {MAX_ORDER}], got {order}")
        if every is None and steps is None and threshold is None:
            raise ValueError("give a refresh schedule: every=k, steps=[...] or threshold=delta")
        if every is not None and steps is not None:
            raise ValueError("give either every= or steps=, not both")
        if every is not None and int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if steps is not None and any(int(k) < 0 for k in steps):
            raise ValueError(f"refresh steps must be call indices >= 0, got {list(steps)}")
        if threshold is not None and not float(threshold) >= 0.0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.every = None if every is None else int(every)
        self.steps = None if steps is None else frozenset(int(k) for k in steps) | {0}
        self.threshold = None if threshold is None else float(threshold)
        self.order = int(order)
        if variable not in VARIABLES:
            raise ValueError(f"unknown forecast variable {variable!r}; valid: {', '.join(VARIABLES)}")
        self.variable = variable
        self.plan = plan if plan is not None else plan_for(_network(den), **plan_options)
        self.stats = CacheStats()
        self._store = _Store()

    # the refresh schedule
    def scheduled(self, n: int) -> bool:
        """Whether call ``n`` of a run is a scheduled refresh."""
        if n == 0:
            return True
        if self.every is not None:
            return n % self.every == 0
        if self.steps is not None:
            return n in self.steps
        return False

    def reset(self) -> None:
        """Empty the cache: the next call starts a run."""
        self._store = _Store()

    @property
    def check_divergence(self):
        """The wrapped model's divergence check (gradient guidance), so the loop still runs it."""
        return getattr(self.den, "check_divergence", None)

    def bind(self, **cond):
        raise TypeError("FeatureCache must wrap guidance, not be wrapped by it: use "
                        "FeatureCache(ClassifierFreeGuidance(den.bind(...), ...), every=...)")

    @property
    def cond(self):
        raise TypeError("FeatureCache must wrap guidance, not be wrapped by it: use "
                        "FeatureCache(ClassifierFreeGuidance(den.bind(...), ...), every=...)")

    def _continues(self, x: Tensor, t) -> tuple[bool, float, tuple | None]:
        """Whether this call continues the stored run, this call's time and grid point."""
        if isinstance(t, GridPoint):
            t_now, point = float(t.grid.t[t.k]), (t.grid, t.k)
        else:
            t_now, point = float(as_time(t).max()), None
        s = self._store
        same = (s.last_t is not None and s.rows == x.shape[0] and s.dtype == x.dtype and s.device == x.device
                and (t_now < s.last_t or (t_now == s.last_t and point is not None and s.last_point is not None
                                          and point[0] is s.last_point[0] and point[1] == s.last_point[1])))
        return same, t_now, point

    def predict(self, x: Tensor, t) -> Prediction:
        if self.order and isinstance(t, Tensor) and t.numel() > 1 and bool((t != t.reshape(-1)[0]).any()):
            raise ValueError("forecasting (order >= 1) needs one time per call; this call has per-row times "
                             "(use order=0)")
        same, t_now, point = self._continues(x, t)
        if not same:
            self._store = _Store(rows=x.shape[0], dtype=x.dtype, device=x.device)
        s = self._store
        at = t_now if self.variable == "t" else float(self.process.logsnr(torch.tensor(t_now, dtype=torch.float64)))
        if not math.isfinite(at):
            raise ValueError(f"the forecast variable {self.variable!r} is {at} at t = {t_now}; use variable='t'")
        call = _Call(self.plan, s, at, self.scheduled(s.n), self.threshold, self.order + 1, self.stats)
        with call.installed():
            pred = self.den.predict(x, t)
        call.commit()
        if not s.empty:
            R = s.net_rows
            if R % x.shape[0]:
                raise RuntimeError(f"the network batch ({R} rows) is not a multiple of the batch ({x.shape[0]})")
            s.copies = R // x.shape[0]
        s.n += 1
        s.last_t, s.last_point = t_now, point
        return pred

    def select(self, idx: Tensor) -> "FeatureCache":
        """The same cached model for rows ``idx``: the wrapped model selected and the cached
        features gathered by ``idx`` (so resampled / branched particles keep their own)."""
        new = object.__new__(FeatureCache)
        new.__dict__.update(self.__dict__)
        new.den = self.den.select(idx)
        new._store = self._store.gather(idx) if self._store.rows else _Store()
        return new

    def __repr__(self) -> str:
        sched = (f"every={self.every}" if self.every is not None else
                 f"steps={sorted(self.steps)}" if self.steps is not None else "")
        thr = f", threshold={self.threshold}" if self.threshold is not None else ""
        order = f", order={self.order}" if self.order else ""
        return f"FeatureCache({self.den!r}, {sched}{thr}{order}, plan={self.plan.name!r})"


def feature_cache(den: DenoiserBase, every: int | None = None, steps: Sequence[int] | None = None,
                  threshold: float | None = None, order: int = 0, **plan_options) -> FeatureCache:
    """``FeatureCache(den, ...)`` (see there)."""
    return FeatureCache(den, every=every, steps=steps, threshold=threshold, order=order, **plan_options)


__all__ = ["FeatureCache", "feature_cache", "CachePlan", "CacheStats", "plan_for", "network_plan", "unet_plan", "dit_plan",
           "diffusers_unet_plan", "SUPPORTED", "MODES"]
