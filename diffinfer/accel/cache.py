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
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..denoiser import Denoiser, DenoiserBase, Prediction
from ..grids.grid import GridPoint
from ..process import as_time

MODES = ("replay", "residual")


# --- plans: which modules of which network -------------------------------------------------
@dataclass(frozen=True)
class CachePlan:
    """What a cached call skips: ``modules`` (in the order the forward calls them) of the
    network ``root``; ``mode`` ``'replay'`` (each returns its output at the last refresh) or
    ``'residual'`` (the run of modules adds its change at the last refresh; every module must
    map its first argument to a tensor of the same shape)."""

    root: nn.Module
    modules: tuple[nn.Module, ...]
    mode: str = "replay"
    name: str = ""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown cache mode {self.mode!r}; valid: {', '.join(MODES)}")
        if not self.modules:
            raise ValueError("a cache plan needs at least one module to skip")


def unet_plan(net: nn.Module, depth: int = 1) -> CachePlan:
    """``diffinfer.nets.UNet``: keep the outer ``depth`` levels (``conv_in``, ``down[:depth]``,
    ``up[-depth:]``), skip ``down[depth:]``, ``mid`` and ``up[:-depth]`` (DeepCache's branch)."""
    levels = len(net.down)
    if not 1 <= int(depth) <= levels:
        raise ValueError(f"depth must be in [1, {levels}] for this UNet ({levels} levels), got {depth}")
    d = int(depth)
    mods = tuple(net.down[d:]) + (net.mid,) + tuple(net.up[:levels - d])
    return CachePlan(net, mods, "replay", f"UNet depth {d}")


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
    one before and the fresh skip connections of ``conv_in`` and ``down_blocks[:depth]``."""
    levels = len(model.down_blocks)
    if not 1 <= int(depth) <= levels:
        raise ValueError(f"depth must be in [1, {levels}] for this UNet ({levels} down blocks), got {depth}")
    d = int(depth)
    mid = (model.mid_block,) if getattr(model, "mid_block", None) is not None else ()
    mods = tuple(model.down_blocks[d:]) + mid + tuple(model.up_blocks[:levels - d])
    return CachePlan(model, mods, "replay", f"{type(model).__name__} depth {d}")


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
                    "(or pass plan=CachePlan(...))")


# --- the cache store ---------------------------------------------------------------------------
def _map(fn: Callable[[Tensor], Tensor], obj: Any) -> Any:
    """``fn`` on every tensor of a nested tuple / list (a module's output)."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map(fn, o) for o in obj)
    return obj


def _map2(fn, a: Any, b: Any) -> Any:
    if isinstance(a, Tensor):
        return fn(a, b)
    if isinstance(a, (tuple, list)):
        return type(a)(_map2(fn, x, y) for x, y in zip(a, b))
    return a


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


@dataclass
class _Store:
    """The cached features of one run: ``outputs[j]`` (replay: module ``j``'s output) or
    ``delta`` (residual), ``ref`` (the shallow feature at each row's last refresh, for
    ``threshold``), all ``[R, ...]`` with ``R = copies * rows`` network rows."""

    outputs: list | None = None
    delta: Tensor | None = None
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
        return self.outputs is None and self.delta is None

    @property
    def net_rows(self) -> int:
        """Rows of the network batch the features were computed on (0 if empty)."""
        if self.delta is not None:
            return self.delta.shape[0]
        if self.outputs is None:
            return 0
        first = self.outputs[0]
        while not isinstance(first, Tensor):
            first = first[0]
        return first.shape[0]

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

        new.outputs = None if self.outputs is None else [_map(take, o) for o in self.outputs]
        new.delta = None if self.delta is None else take(self.delta)
        new.ref = None if self.ref is None else take(self.ref)
        return new


class _Call:
    """One network call under the plan: installs the stubs, decides the refresh rows at the
    first skipped module, records or replays."""

    def __init__(self, plan: CachePlan, store: _Store, force: bool, threshold: float | None, stats: CacheStats):
        self.plan, self.store, self.force, self.threshold, self.stats = plan, store, force, threshold, stats
        self.mask: Tensor | None = None   # [R] rows that refresh; None until decided
        self.decided = False
        self.all_rows = False
        self.any_rows = False
        self.forwards = 0
        self.new_outputs: list = []
        self.x_in: Tensor | None = None   # residual: the input of the first skipped module

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
        s = self.store
        if not self.any_rows:
            return s.outputs[j]
        out = original(*args, **kwargs)
        if not self.all_rows:
            out = _map2(lambda new, old: _rows_where(self.mask, new, old), out, s.outputs[j])
        self.new_outputs.append(_map(lambda v: v.detach(), out))
        return out

    def _residual(self, j, last, x, original, args, kwargs):
        s = self.store
        if j == 0:
            self.x_in = x
        if not self.any_rows:
            return x + s.delta if j == 0 else x
        out = original(*args, **kwargs)
        if j == last:
            delta = (out - self.x_in).detach()
            if not self.all_rows:
                delta = _rows_where(self.mask, delta, s.delta)
                out = _rows_where(self.mask, out, self.x_in + s.delta)
            self.new_delta = delta
        return out

    def commit(self) -> None:
        s = self.store
        if not self.decided:
            raise RuntimeError(f"the network ran without reaching the cached modules ({self.plan.name}); "
                               "is the plan built on this network?")
        if self.any_rows:
            if self.plan.mode == "replay":
                s.outputs = self.new_outputs
            else:
                s.delta = self.new_delta
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
        plan: a ``CachePlan``; default ``plan_for(network, **plan_options)``.
        plan_options: ``depth`` (UNets) or ``start`` / ``stop`` (DiT).

    ``stats`` counts full and cached network calls; ``reset()`` empties the cache.
    """

    def __init__(self, den: DenoiserBase, every: int | None = None, steps: Sequence[int] | None = None,
                 threshold: float | None = None, plan: CachePlan | None = None, **plan_options):
        self._wrap(den)
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
        same, t_now, point = self._continues(x, t)
        if not same:
            self._store = _Store(rows=x.shape[0], dtype=x.dtype, device=x.device)
        s = self._store
        call = _Call(self.plan, s, self.scheduled(s.n), self.threshold, self.stats)
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
        return f"FeatureCache({self.den!r}, {sched}{thr}, plan={self.plan.name!r})"


def feature_cache(den: DenoiserBase, every: int | None = None, steps: Sequence[int] | None = None,
                  threshold: float | None = None, **plan_options) -> FeatureCache:
    """``FeatureCache(den, ...)`` (see there)."""
    return FeatureCache(den, every=every, steps=steps, threshold=threshold, **plan_options)


__all__ = ["FeatureCache", "feature_cache", "CachePlan", "CacheStats", "plan_for", "unet_plan", "dit_plan",
           "diffusers_unet_plan", "SUPPORTED", "MODES"]
