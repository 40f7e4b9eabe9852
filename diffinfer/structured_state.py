"""Structured states: a sample made of named parts (node features and a symmetric
adjacency), packed into one flat tensor per sample.

GDSS (Jo, Lee & Hwang 2022, "Score-based Generative Modeling of Graphs via the System of
Stochastic Differential Equations") diffuses a graph ``G = (X, A)`` -- node features
``X [n, f]`` and a symmetric adjacency ``A [n, n]`` -- jointly, with noise on ``A`` that is
symmetric (draw the upper triangle, mirror it; zero diagonal) and one network that
predicts both parts from both. Here such a state is a ``Layout`` of parts:

    layout = Layout(nodes=Dense(n, f), adj=Symmetric(n))
    x = layout.pack(nodes=X, adj=A)           # [B, D], D = n f + n (n - 1) / 2
    X, A = layout.unpack(x)                   # [B, n, f], [B, n, n] (A symmetric, zero diagonal)
    den = joint_denoiser(net, layout, process, prediction="eps")   # net(X, A, t) -> (X_hat, A_hat)

A ``Symmetric`` part stores only its strict upper triangle, so everything the library does
to a flat tensor -- the initial noise and every step's fresh noise (``rng.SampleRNG``), every
solver update, ``solvers.select``, guidance gradients -- acts on the free coordinates, and
the unpacked matrix is symmetric by construction: an i.i.d. ``N(0, 1)`` draw on the packed
state unpacks to GDSS's symmetric noise ``triu(Z, 1) + triu(Z, 1)^T``. No solver, rng or
loop code changes.

One process for the whole state. GDSS may give the two parts different SDEs. A part's
``scale`` (the packed state holds ``part / scale``) gives it ``x_t = alpha x0 + sigma scale
eps`` in its own units: a constant log-SNR offset ``-2 log scale`` against the shared
process, which is the only per-part difference a single time grid with scalar step weights
can integrate exactly. Parts with different schedule shapes (e.g. VP nodes and VE
adjacency) are ``diffinfer.part_processes``: one process per part, solved as a per-element
time field (``diffinfer.element_times``) in one solver process's coordinates.

The prediction a joint network returns for each part is in that part's units and of the
denoiser's prediction type (the ``eps`` of a ``Symmetric`` part is the symmetric matrix
of its upper triangle's noise); ``pack`` keeps the symmetric part of a prediction
(``(P + P^T) / 2``, exact for a symmetric one) and ignores its diagonal.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .denoiser import Denoiser, ModelOutputError
from .process import Process


class Dense:
    """A part stored as it is: a tensor of ``shape`` per sample (e.g. node features ``[n, f]``)."""

    def __init__(self, *shape: int, scale: float = 1.0):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if not shape or any(int(s) != s or int(s) < 1 for s in shape):
            raise ValueError(f"a Dense part needs positive integer sizes, got {shape}")
        self.shape = tuple(int(s) for s in shape)
        self.scale = _check_scale(scale)
        self.size = math.prod(self.shape)

    def pack(self, value: Tensor, strict: bool = True) -> Tensor:
        """``[B, *shape]`` -> ``[B, size]``."""
        return (value.reshape(value.shape[0], self.size) / self.scale) if self.scale != 1.0 \
            else value.reshape(value.shape[0], self.size)

    def unpack(self, flat: Tensor) -> Tensor:
        """``[B, size]`` -> ``[B, *shape]``."""
        out = flat.reshape((flat.shape[0],) + self.shape)
        return out * self.scale if self.scale != 1.0 else out

    def __repr__(self) -> str:
        return f"Dense{self.shape}" + (f"(scale={self.scale:g})" if self.scale != 1.0 else "")


class Symmetric:
    """A symmetric ``[n, n]`` matrix per sample (an adjacency), stored as its upper triangle:
    the strict one (``n (n - 1) / 2`` entries, zero diagonal, as GDSS's adjacency) or, with
    ``diagonal=True``, the one with the diagonal (``n (n + 1) / 2``)."""

    def __init__(self, n: int, diagonal: bool = False, scale: float = 1.0):
        if int(n) != n or int(n) < 1 or (not diagonal and int(n) < 2):
            raise ValueError(f"a Symmetric part needs n >= {1 if diagonal else 2}, got {n}")
        self.n, self.diagonal = int(n), bool(diagonal)
        self.shape = (self.n, self.n)
        self.scale = _check_scale(scale)
        rows, cols = torch.triu_indices(self.n, self.n, offset=0 if self.diagonal else 1)  # row-major
        self._rows, self._cols = rows, cols
        self.size = int(rows.numel())
        where = torch.full((self.n, self.n), self.size, dtype=torch.long)  # slot `size`: a zero (the diagonal)
        where[rows, cols] = torch.arange(self.size)
        where[cols, rows] = torch.arange(self.size)
        self._where = where.reshape(-1)  # [n n]: the stored entry each matrix entry reads

    def pack(self, value: Tensor, strict: bool = True) -> Tensor:
        """``[B, n, n]`` -> ``[B, size]``: the upper triangle. ``strict``: the input must be
        symmetric, with a zero diagonal unless ``diagonal`` (data); otherwise (a network's
        prediction) its symmetric part is kept and a diagonal not stored is dropped."""
        if strict:
            if not torch.equal(value, value.transpose(-1, -2)):
                gap = float((value - value.transpose(-1, -2)).abs().max())
                raise ValueError(f"a Symmetric part must be a symmetric matrix (max |A - A^T| = {gap:.3g})")
            if not self.diagonal and bool(torch.diagonal(value, dim1=-2, dim2=-1).any()):
                raise ValueError(f"Symmetric({self.n}) has a zero diagonal but the matrix has nonzero diagonal "
                                 f"entries (self-loops); use Symmetric({self.n}, diagonal=True) to keep them")
            sym = value
        else:
            sym = 0.5 * (value + value.transpose(-1, -2))
        flat = sym[:, self._rows.to(value.device), self._cols.to(value.device)]  # [B, size]
        return flat / self.scale if self.scale != 1.0 else flat

    def unpack(self, flat: Tensor) -> Tensor:
        """``[B, size]`` -> ``[B, n, n]`` symmetric (zero diagonal unless ``diagonal``)."""
        vals = flat * self.scale if self.scale != 1.0 else flat
        padded = torch.cat([vals, vals.new_zeros(vals.shape[0], 1)], dim=1)  # [B, size + 1]
        return padded[:, self._where.to(flat.device)].reshape(flat.shape[0], self.n, self.n)

    def __repr__(self) -> str:
        extra = ["diagonal=True"] if self.diagonal else []
        extra += [f"scale={self.scale:g}"] if self.scale != 1.0 else []
        return f"Symmetric({self.n}{''.join(', ' + e for e in extra)})"


PART_KINDS = (Dense, Symmetric)


def _check_scale(scale) -> float:
    scale = float(scale)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"a part's scale must be finite and > 0, got {scale}")
    return scale


class Layout:
    """Named parts in order, packed side by side into one flat ``[B, D]`` tensor.

    ``Layout(nodes=Dense(n, f), adj=Symmetric(n))``; ``pack`` takes the parts as keywords, a
    mapping or a sequence in order; ``unpack`` returns them as a tuple in order."""

    def __init__(self, **parts):
        if not parts:
            raise ValueError("a Layout needs at least one part, e.g. Layout(nodes=Dense(n, f), adj=Symmetric(n))")
        for name, part in parts.items():
            if name in ("values", "strict"):
                raise ValueError(f"{name!r} is reserved (an argument of Layout.pack); name the part otherwise")
            if not isinstance(part, PART_KINDS):
                raise TypeError(f"part {name!r} must be Dense(...) or Symmetric(...), got {type(part).__name__}")
        self.parts: dict[str, Dense | Symmetric] = dict(parts)
        self.names = tuple(parts)
        offsets = [0]
        for part in parts.values():
            offsets.append(offsets[-1] + part.size)
        self.offsets = tuple(offsets)  # part k is x[:, offsets[k]:offsets[k + 1]]
        self.size = offsets[-1]

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: part.shape for name, part in self.parts.items()}

    def _ordered(self, values, kw) -> list[Tensor]:
        if values is not None and kw:
            raise ValueError("give the parts either positionally or as keywords, not both")
        if values is None:
            values = kw
        if isinstance(values, Mapping):
            unknown = [k for k in values if k not in self.parts]
            missing = [k for k in self.names if k not in values]
            if unknown or missing:
                raise ValueError(f"parts {unknown or missing} {'unknown' if unknown else 'missing'}; "
                                 f"the layout has: {', '.join(self.names)}")
            values = [values[k] for k in self.names]
        elif isinstance(values, Tensor) or not isinstance(values, Sequence):
            raise TypeError(f"give the parts as a sequence or mapping of tensors, got {type(values).__name__}")
        values = list(values)
        if len(values) != len(self.names):
            raise ValueError(f"{len(values)} parts for a layout of {len(self.names)}: {', '.join(self.names)}")
        batch = None
        for name, v in zip(self.names, values):
            shape = self.parts[name].shape
            if not isinstance(v, Tensor) or v.dim() != len(shape) + 1 or tuple(v.shape[1:]) != shape:
                got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
                raise ValueError(f"part {name!r} must be [B, {', '.join(map(str, shape))}], got {got}")
            if batch is not None and v.shape[0] != batch:
                raise ValueError(f"parts have different batch sizes: {batch} and {v.shape[0]} ({name!r})")
            batch = v.shape[0]
        return values

    def pack(self, values=None, /, strict: bool = True, **parts) -> Tensor:
        """The parts (``[B, *shape]`` each) as one ``[B, D]`` tensor. ``strict``: a
        ``Symmetric`` part must be symmetric (else its symmetric part is taken)."""
        values = self._ordered(values, parts)
        dtype = torch.result_type(*values) if len(values) > 1 else values[0].dtype
        return torch.cat([self.parts[n].pack(v, strict).to(dtype) for n, v in zip(self.names, values)], dim=1)

    def unpack(self, x: Tensor) -> tuple[Tensor, ...]:
        """``[B, D]`` -> the parts, a tuple in order (``[B, *shape]`` each)."""
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.size:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"a packed state must be [B, {self.size}] for {self!r}, got {got}")
        return tuple(self.parts[n].unpack(x[:, a:b]) for n, a, b in zip(self.names, self.offsets, self.offsets[1:]))

    def as_dict(self, x: Tensor) -> dict[str, Tensor]:
        """``unpack`` by name."""
        return dict(zip(self.names, self.unpack(x)))

    def __repr__(self) -> str:
        return "Layout(" + ", ".join(f"{n}={p!r}" for n, p in self.parts.items()) + ")"


class JointNet(nn.Module):
    """A joint network on the parts as a network on the packed state:
    ``forward(x [B, D], t, **cond) = pack(net(*unpack(x), t, **cond), strict=False)``.

    ``net`` returns one prediction per part, a tuple in the layout's order (or a mapping by
    name), each shaped as its part. An ``nn.Module`` ``net`` is registered as a submodule, so
    its parameters (device, dtype, training) are this module's."""

    def __init__(self, net: Callable, layout: Layout):
        super().__init__()
        if not isinstance(layout, Layout):
            raise TypeError(f"layout must be a Layout, got {type(layout).__name__}")
        self.net, self.layout = net, layout

    def forward(self, x: Tensor, t, **cond) -> Tensor:
        out = self.net(*self.layout.unpack(x), t, **cond)
        if isinstance(out, Tensor) and len(self.layout.names) == 1:
            out = (out,)
        try:
            return self.layout.pack(out, strict=False)  # [B, D]
        except (TypeError, ValueError) as e:
            raise ModelOutputError(f"the joint network must return one prediction per part "
                                   f"({', '.join(f'{n}: {list(s)}' for n, s in self.layout.shapes.items())}): {e}") from None


def joint_denoiser(net: Callable, layout: Layout, process: Process, prediction: str = "eps",
                   **options) -> Denoiser:
    """A ``Denoiser`` on the packed state of ``layout`` from a joint network
    ``net(*parts, t, **cond) -> predictions`` (GDSS's score networks for ``X`` and ``A``
    together); ``options`` go to ``Denoiser`` (``time_input``, ``cond``, ``check``, ...).
    Sample with ``di.sample(den, shape=(B, layout.size), ...)`` and ``layout.unpack`` the result."""
    return Denoiser(JointNet(net, layout), process, prediction, **options)


__all__ = ["Dense", "Symmetric", "Layout", "JointNet", "joint_denoiser"]
