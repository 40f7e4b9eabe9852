"""Any-size canvases from a fixed-size model: shifting tiles blended by fixed weights.

``Tiled(den, tile, stride, offsets, weights)`` is a ``Denoiser -> Denoiser`` wrapper for a
canvas larger than the model's training size: at each call it cuts the canvas into tiles
of the model's size (the last ``len(tile)`` axes), evaluates the model on all tiles in one
batched call (one NFE), and blends the tiles' predictions ``(x0, eps)`` by fixed per-tile
weights. The tile positions shift from step to step (``offsets="random"`` or
``"cyclic"``), so the seams, where a tile's prediction lacks context on one side, move and
do not print into the sample: the Fast Seamless Tiled Diffusion of Any-Size-Diffusion
(Zheng et al. 2023), which with ``stride = tile`` needs no overlap; ``stride < tile``
overlaps the tiles as in MultiDiffusion (Bar-Tal et al. 2023). ``offsets="fixed"`` keeps the
tiles in place (the naive baseline, with seams). Because it is a model wrapper, every solver
runs on it unchanged.

Tile starts along an axis of length ``L`` (tile ``w``, stride ``S``, offset ``o`` in
``[0, S)``): ``o + k S`` for every ``k`` whose tile meets the canvas, clipped into
``[0, L - w]`` (so the edges are always covered and a tile never leaves the canvas). The
offset at grid point ``k`` is drawn from ``stream_seed(seed, k)`` (random) or is ``k *
shift mod S`` (cyclic); at a time that is not a grid point it is drawn from the time's bits
(of the first row, for a time per row).
It depends on the step, never on the batch: a sample is the same alone or in a batch.

The blend is consistent: with the same weights on ``x0`` and ``eps``,
``alpha x0_blend + sigma eps_blend = x``. What is exact and what is not, for a stationary
Gaussian process whose window model is exact, is derived and measured in
``tests/test_accel_tiling.py`` and ``bench/accel_warm_tiling.py``: one tile covering the
canvas is the model itself; otherwise a tile's posterior mean misses the context beyond
its edges, an error that decays with the distance to the edge.
"""
from __future__ import annotations

import math
import struct

import torch
from torch import Tensor

from ..denoiser import DenoiserBase, Prediction
from ..grids.grid import GridPoint
from ..process import as_time
from ..rng import stream_seed

OFFSETS = ("random", "cyclic", "fixed")
WEIGHTS = ("uniform", "hann")


def tile_starts(length: int, tile: int, stride: int, offset: int) -> list[int]:
    """Tile starts along one axis (module docstring): ``offset + k stride`` clipped into
    ``[0, length - tile]``, without repeats, ascending."""
    if tile > length:
        raise ValueError(f"the canvas ({length}) is smaller than the tile ({tile})")
    k = -((tile + offset) // stride)
    while offset + k * stride <= -tile:  # the first k whose tile meets the canvas
        k += 1
    starts = set()
    while offset + k * stride < length:
        starts.add(min(max(offset + k * stride, 0), length - tile))
        k += 1
    return sorted(starts)


def window(kind: str, size: int) -> Tensor:
    """Per-position blending weights of a tile axis ``[size]`` (float64, all positive):
    ``uniform`` (ones: plain averaging) or ``hann`` (``sin^2(pi (i + 1/2) / size)``, a taper
    that lets the tile centres dominate)."""
    if kind == "uniform":
        return torch.ones(size, dtype=torch.float64)
    if kind == "hann":
        i = torch.arange(size, dtype=torch.float64)
        return torch.sin(math.pi * (i + 0.5) / size) ** 2
    raise ValueError(f"unknown weights {kind!r}; valid: {', '.join(WEIGHTS)}")


def _sizes(v) -> tuple[int, ...]:
    return (int(v),) if isinstance(v, int) else tuple(int(u) for u in v)


class Tiled(DenoiserBase):
    """``den`` evaluated tile by tile on a larger canvas (module docstring).

    Args:
        den: the model of the tile size (any ``DenoiserBase``).
        tile: the tile's size along the last ``len(tile)`` axes (an int: the last axis).
        stride: the distance between tile starts, ``1 <= stride <= tile``; default half a
            tile. ``stride = tile`` is FSTD's overlap-free tiling (half the tiles; the seams
            only move).
        offsets: ``random`` (default), ``cyclic`` or ``fixed`` (``OFFSETS``).
        weights: ``hann`` (default) or ``uniform`` (``WEIGHTS``), per tile position, the
            same for every tile. With overlap, ``hann`` lets each position be predicted
            mostly by the tiles it sits in the middle of; on the Gaussian-process oracle
            this is what makes tiling exact to within the sampling floor, while uniform
            weights are not (``tests/test_accel_tiling.py``).
        seed: the random offsets' seed.
    """

    def __init__(self, den: DenoiserBase, tile, stride=None, offsets: str = "random", weights: str = "hann",
                 seed: int = 0):
        self._wrap(den)
        tile = _sizes(tile)
        stride = tuple(max(1, w // 2) for w in tile) if stride is None else _sizes(stride)
        if len(stride) != len(tile) or not all(1 <= s <= w for s, w in zip(stride, tile)):
            raise ValueError(f"stride must give 1 <= stride <= tile per axis, got stride={stride}, tile={tile}")
        if offsets not in OFFSETS:
            raise ValueError(f"unknown offsets {offsets!r}; valid: {', '.join(OFFSETS)}")
        self.tile, self.stride, self.offsets, self.weights, self.seed = tile, stride, offsets, weights, int(seed)
        w = window(weights, tile[0])
        for size in tile[1:]:  # the outer product over the tiled axes
            w = w.unsqueeze(-1) * window(weights, size)
        self._w = w  # [*tile] float64

    # --- where the tiles go ------------------------------------------------------------
    def _step_key(self, t) -> int:
        if isinstance(t, GridPoint):
            return int(t.k)
        tv = as_time(t).reshape(-1)
        return struct.unpack("<q", struct.pack("<d", float(tv[0])))[0] & (2**62 - 1)

    def offset(self, t) -> tuple[int, ...]:
        """The tile offsets (one per tiled axis) used at time ``t`` (a grid point or a time)."""
        if self.offsets == "fixed":
            return (0,) * len(self.tile)
        k = self._step_key(t)
        if self.offsets == "cyclic":  # a golden-ratio walk through [0, S)
            return tuple((k * max(1, round(0.618034 * s))) % s for s in self.stride)
        g = torch.Generator().manual_seed(stream_seed(self.seed, k))
        return tuple(int(torch.randint(0, s, (), generator=g)) for s in self.stride)

    def starts(self, canvas, t) -> list[tuple[int, ...]]:
        """Every tile's start (one tuple per tile) on a canvas of size ``canvas`` at ``t``."""
        axes = [tile_starts(int(L), w, s, o) for L, w, s, o in zip(canvas, self.tile, self.stride, self.offset(t))]
        out: list[tuple[int, ...]] = [()]
        for a in axes:
            out = [p + (v,) for p in out for v in a]
        return out

    # --- the model view --------------------------------------------------------------------
    def predict(self, x: Tensor, t) -> Prediction:
        n = len(self.tile)
        if x.dim() < n + 1:
            raise ValueError(f"x must be [B, ..., {', '.join(map(str, self.tile))}] or larger, got {tuple(x.shape)}")
        canvas = tuple(x.shape[-n:])
        starts = self.starts(canvas, t)
        B, T = x.shape[0], len(starts)

        def cut(s):
            return tuple(slice(a, a + w) for a, w in zip(s, self.tile))

        tiles = torch.stack([x[(Ellipsis,) + cut(s)] for s in starts], dim=1)  # [B, T, ..., *tile]
        tiles = tiles.reshape(B * T, *tiles.shape[2:])
        rows = torch.arange(B, device=x.device).repeat_interleave(T)
        den = self.den.select(rows) if T > 1 else self.den
        tt = t
        if not isinstance(t, (GridPoint, float, int)):
            tv = as_time(t)
            if tv.dim() > 0 and tv.numel() == B:
                tt = tv.reshape(B).repeat_interleave(T)
        p = den.predict(tiles, tt)
        if T == 1:  # one tile covers the canvas: the model's own answer
            return p
        x0_t = p.x0.reshape(B, T, *p.x0.shape[1:])
        eps_t = p.eps.reshape(B, T, *p.eps.shape[1:])
        w = self._w.to(device=x.device, dtype=x.dtype)  # [*tile]
        x0 = torch.zeros_like(x)
        eps = torch.zeros_like(x)
        norm = torch.zeros(canvas, dtype=x.dtype, device=x.device)
        for j, s in enumerate(starts):
            c = cut(s)
            x0[(Ellipsis,) + c] += w * x0_t[:, j]
            eps[(Ellipsis,) + c] += w * eps_t[:, j]
            norm[c] += w
        return Prediction(x0 / norm, eps / norm)

    def select(self, idx: Tensor) -> "Tiled":
        return Tiled(self.den.select(idx), self.tile, self.stride, self.offsets, self.weights, self.seed)

    def __repr__(self) -> str:
        return (f"Tiled({self.den!r}, tile={self.tile}, stride={self.stride}, offsets={self.offsets!r}, "
                f"weights={self.weights!r})")
