"""The ``Grid`` record: a schedule's coefficients, computed once on the host.

A solver runs on a descending time grid ``ts`` ``[N+1]``. ``Grid(process, ts)`` evaluates
the process there once (``Process.at``, float64) and keeps every coefficient a step needs
as Python floats (``grid.alpha[k]``, ``grid.lam[k]``, ...), so step weights are host
arithmetic and a step reads no tensor. What a step multiplies a sample by on the device
(the grid's times for the network, the ``sigma`` ratios of the data-prediction update) is
cast once per device and dtype (``grid.on(x)``). ``grid.point(k)`` is the handle a solver
passes to ``Denoiser.predict``: the denoiser answers from the grid's host coefficients
(see docs/architecture.md, "one model view").

``Grid.of(process, ts)`` keeps the newest grids per process, so sampling again on the same
grid reuses its evaluation and casts (a process is treated as immutable).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..process import Coefficients, Process, as_time

#: the host columns of a grid (Python floats, entry ``k`` at ``ts[k]``)
HOST_COLUMNS = ("t", "alpha", "sigma", "d_alpha", "d_sigma", "lam", "f", "g2")


class GridPoint(NamedTuple):
    """Point ``k`` of ``grid``: what solvers pass to ``predict`` as the time."""

    grid: "Grid"
    k: int

    @property
    def time(self) -> Tensor:
        """The point's time as a float64 0-d tensor (what ``as_time`` returns for it)."""
        return self.grid.ts[self.k]


class DeviceGrid(NamedTuple):
    """A grid's per-device casts for a sample's dtype and device (0-d tensors)."""

    t: tuple[Tensor, ...]            # [N+1] the grid's times (float32 for half-precision samples)
    sigma_ratio: tuple[Tensor, ...]  # [N]   sigma(ts[k+1]) / sigma(ts[k])
    batched: dict                    # batch size B -> the times expanded to [B] (views, made once)

    def batch_times(self, batch: int) -> tuple[Tensor, ...]:
        """The grid's times as ``[B]`` views for a batch of ``batch`` rows (made once per size)."""
        found = self.batched.get(batch)
        if found is None:
            found = self.batched[batch] = tuple(t.expand(batch) for t in self.t)
        return found


class Grid:
    """The coefficients of ``process`` on the time grid ``ts`` ``[N+1]`` (module docstring).

    Attributes: ``process``; ``ts`` (float64 CPU tensor); ``coefficients`` (the
    ``Coefficients`` record over all points, float64 tensors); and the host columns
    ``t``, ``alpha``, ``sigma``, ``d_alpha``, ``d_sigma``, ``lam`` (half log-SNR), ``f``,
    ``g2`` as tuples of Python floats. Immutable.
    """

    MEMO_SIZE = 8

    def __init__(self, process: Process, ts):
        ts = as_time(ts).detach()
        if ts.dim() != 1 or ts.numel() < 2:
            raise ValueError(f"a time grid must be 1-d with at least 2 points, got shape {tuple(ts.shape)}")
        ts = ts.cpu().clone()
        c = process.at(ts)
        d = self.__dict__
        d["process"], d["ts"], d["coefficients"], d["_casts"], d["_memo"] = process, ts, c, {}, {}
        columns = torch.stack([getattr(c, name) for name in HOST_COLUMNS]).tolist()  # [8, N+1]
        for name, col in zip(HOST_COLUMNS, columns):
            d[name] = tuple(col)
        d["_points"] = points = tuple(GridPoint(self, k) for k in range(ts.numel()))
        # each point's coefficients as host floats (what a denoiser converts a prediction with)
        d["_host"] = tuple(Coefficients(process, p, a, s, da, ds) for p, a, s, da, ds
                           in zip(points, d["alpha"], d["sigma"], d["d_alpha"], d["d_sigma"]))

    @classmethod
    def of(cls, process: Process, ts) -> "Grid":
        """The grid of ``process`` on ``ts``, kept per process (newest ``MEMO_SIZE`` grids)."""
        if isinstance(ts, Grid):
            if ts.process is not process:
                raise ValueError(f"a grid of {ts.process!r} was given for {process!r}")
            return ts
        ts = as_time(ts)
        if ts.dim() != 1 or ts.requires_grad:
            return cls(process, ts)  # raises with the shape / not kept
        memo = process.__dict__.setdefault("_grid_memo", {})
        key = tuple(ts.tolist())
        grid = memo.get(key)
        if grid is None:
            if len(memo) >= cls.MEMO_SIZE:
                del memo[next(iter(memo))]  # the oldest
            grid = memo[key] = cls(process, ts)
        return grid

    def __setattr__(self, name, value):
        raise AttributeError("Grid is immutable")

    @property
    def steps(self) -> int:
        return len(self.t) - 1

    def point(self, k: int) -> GridPoint:
        return self._points[k]

    def host(self, k: int) -> Coefficients:
        """The coefficient record of point ``k`` as Python floats (``t`` is the ``GridPoint``)."""
        return self._host[k]

    def at(self, k: int) -> Coefficients:
        """The coefficient record of point ``k`` (0-d float64 tensors)."""
        c = self.coefficients
        return Coefficients(self.process, self.ts[k], c.alpha[k], c.sigma[k], c.d_alpha[k], c.d_sigma[k])

    def on(self, x: Tensor) -> DeviceGrid:
        """The casts a step on ``x``'s dtype and device uses, made once per dtype and device."""
        key = (x.dtype, x.device)
        found = self._casts.get(key)
        if found is None:
            s = self.coefficients.sigma
            t_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32  # never bf16 times
            found = self._casts[key] = DeviceGrid(
                self.ts.to(device=x.device, dtype=t_dtype).unbind(),
                (s[1:] / s[:-1]).to(device=x.device, dtype=x.dtype).unbind(), {})
        return found

    def memo(self, key, compute):
        """``compute()`` once per ``key`` on this grid: host values derived from the grid
        alone (a solver's step weights), kept so a second solve on the grid reuses them."""
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = compute()
        return found

    def __len__(self) -> int:
        return len(self.t)

    def __repr__(self) -> str:
        return f"Grid({self.process!r}, N+1={len(self)})"
