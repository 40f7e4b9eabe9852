"""Orderings of particles by their state, for sorted (SQMC-style) resampling.

Gerber & Chopin 2015, "Sequential quasi-Monte Carlo" (JRSS-B), section 4: before
systematic resampling, put the particles in the order of their positions along a
Hilbert space-filling curve. Systematic resampling gives every particle ``floor`` or
``ceil`` of ``N w_i`` copies in any order; in a locality-preserving order, also every
*contiguous run* of particles (a region of space the curve covers in one piece) gets
``floor`` or ``ceil`` of ``N`` times its total weight, so the resampled set matches the
weighted one region by region to ``O(1/N)`` instead of ``O(1/sqrt(N))`` (multinomial).

The state ``x`` ``[N, D]`` is first put in weighted principal coordinates: centred at the
weighted mean, rotated onto the weighted covariance's eigenvectors (at most
``MAX_AXES`` of them, largest first) and scaled to unit variance along each; then mapped
into the unit cube by the standard normal CDF (Gerber & Chopin use a componentwise
logistic map of standardised coordinates; the rotation makes the map independent of the
coordinate system) and quantised to ``bits`` bits per axis.

* ``hilbert_order``: the Hilbert index of the quantised point (Skilling 2004,
  "Programming the Hilbert curve", AIP Conf. Proc. 707: axes -> transposed index, then
  the bits interleaved), particles sorted by it;
* ``principal_order``: the particles sorted by their coordinate on the first principal
  axis alone (the one-dimensional case of the above, cheaper; exact locality when the
  weighted particles vary along one direction).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

_F64 = torch.float64
#: at most this many principal axes enter the Hilbert index (``D * bits <= 62``, int64)
MAX_AXES = 8
#: at most this many bits per axis
MAX_BITS = 16


def hilbert_index(cells: Tensor, bits: int) -> Tensor:
    """The position ``[N]`` (int64) along the ``D``-dimensional Hilbert curve of order
    ``bits`` of integer grid cells ``cells`` ``[N, D]`` with entries in ``[0, 2^bits)``
    (Skilling 2004: ``AxestoTranspose``, then the transposed index's bits interleaved,
    most significant first). A bijection of the ``2^(D bits)`` cells onto
    ``0 .. 2^(D bits) - 1``; consecutive indices are neighbouring cells."""
    if cells.dim() != 2:
        raise ValueError(f"cells must be [N, D], got shape {tuple(cells.shape)}")
    n, d = cells.shape
    bits = int(bits)
    if bits < 1 or d * bits > 63:
        raise ValueError(f"need bits >= 1 and D * bits <= 63, got D={d}, bits={bits}")
    x = cells.to(torch.int64).clone()  # [N, D]
    if bool(((x < 0) | (x >= 1 << bits)).any()):
        raise ValueError(f"cells must lie in [0, 2^{bits})")
    q = 1 << (bits - 1)
    while q > 1:  # undo excess work (Skilling's "inverse undo")
        p = q - 1
        for i in range(d):
            high = (x[:, i] & q) != 0  # [N]
            if i == 0:
                x[:, 0] = torch.where(high, x[:, 0] ^ p, x[:, 0])
                continue
            t = (x[:, 0] ^ x[:, i]) & p  # exchange the low bits of axes 0 and i where bit q of axis i is 0
            x0, xi = x[:, 0].clone(), x[:, i].clone()
            x[:, 0] = torch.where(high, x0 ^ p, x0 ^ t)
            x[:, i] = torch.where(high, xi, xi ^ t)
        q >>= 1
    for i in range(1, d):  # Gray encode
        x[:, i] ^= x[:, i - 1]
    t = torch.zeros(n, dtype=torch.int64, device=x.device)
    q = 1 << (bits - 1)
    while q > 1:
        t = torch.where((x[:, d - 1] & q) != 0, t ^ (q - 1), t)
        q >>= 1
    x ^= t.unsqueeze(1)
    index = torch.zeros(n, dtype=torch.int64, device=x.device)
    for b in range(bits - 1, -1, -1):  # interleave: bit b of axes 0, 1, ..., D-1
        for i in range(d):
            index = (index << 1) | ((x[:, i] >> b) & 1)
    return index


def principal_coordinates(x: Tensor, w: Tensor, axes: int = MAX_AXES) -> Tensor:
    """``x`` ``[N, ...]`` in standardised weighted principal coordinates ``[N, k]``
    (float64, CPU; ``k = min(axes, D)``): ``(x - mean) V_k / s_k`` with ``mean`` and the
    covariance's eigenvectors ``V`` and standard deviations ``s`` under the weights ``w``
    ``[N]`` (normalised, summing to 1). Axes without spread keep scale 1."""
    n = x.shape[0]
    xf = x.detach().reshape(n, -1).to("cpu", _F64)  # [N, D]
    wf = w.detach().to("cpu", _F64).reshape(n)
    centred = xf - wf @ xf  # [N, D]
    _, s, vh = torch.linalg.svd(centred * wf.sqrt().unsqueeze(1), full_matrices=False)  # s: weighted sd per axis
    k = min(int(axes), vh.shape[0])
    scale = s[:k]
    scale = torch.where(scale > 1e-12 * float(s.max()), scale, torch.ones_like(scale))
    return (centred @ vh[:k].T) / scale  # [N, k]


def hilbert_order(x: Tensor, w: Tensor, axes: int = MAX_AXES) -> Tensor:
    """The permutation ``[N]`` (long) sorting the particles ``x`` ``[N, ...]`` along the
    Hilbert curve of their standardised weighted principal coordinates (module docstring);
    ties (particles in one cell, e.g. copies) stay in index order."""
    z = principal_coordinates(x, w, axes)  # [N, k]
    k = z.shape[1]
    if k == 0:
        return torch.arange(x.shape[0])
    bits = min(MAX_BITS, 62 // k)
    u = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))  # [N, k] in [0, 1]
    cells = (u * (1 << bits)).floor().clamp(0, (1 << bits) - 1).to(torch.int64)
    if k == 1:
        key = cells[:, 0]
    else:
        key = hilbert_index(cells, bits)
    return torch.argsort(key, stable=True)


def principal_order(x: Tensor, w: Tensor) -> Tensor:
    """The permutation ``[N]`` (long) sorting the particles by their coordinate on the
    first weighted principal axis (ties in index order)."""
    z = principal_coordinates(x, w, axes=1)  # [N, 1]
    if z.shape[1] == 0:
        return torch.arange(x.shape[0])
    return torch.argsort(z[:, 0], stable=True)
