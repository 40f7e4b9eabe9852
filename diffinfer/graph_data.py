"""Small random graph data sets from networkx, with node features, for graph-state models.

Every graph has ``n`` nodes, relabelled by a random permutation (so a model must learn the
structure, not the node order), and one node feature in ``{-1, +1}`` tied to the structure:

- ``community``: two communities (``networkx.random_partition_graph``, as GDSS's
  community-small: dense inside, ``p_in``; sparse between, ``p_out``); the feature is the
  node's community;
- ``grid``: a 2-D lattice (``networkx.grid_2d_graph``, ``r x c`` with ``r c = n``, the shape
  drawn among the factorisations); the feature is the checkerboard colour (edges join
  opposite colours).

``erdos_renyi`` draws the baseline of the same edge density. Graphs come as node features
``[B, n, 1]`` and 0/1 adjacencies ``[B, n, n]`` (float64); ``to_signed`` maps an adjacency to
``+-1`` entries off the diagonal for a diffusion model (``2 A - 1``, diagonal 0).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

KINDS = ("community", "grid")


def _networkx():
    try:
        import networkx
    except ImportError:  # pragma: no cover - the graphs extra
        raise ImportError("graph data sets need networkx: pip install 'diffinfer[graphs]'") from None
    return networkx


def _community(nx, n: int, rng: np.random.Generator, p_in: float, p_out: float):
    sizes = [n // 2, n - n // 2]
    g = nx.random_partition_graph(sizes, p_in, p_out, seed=int(rng.integers(2 ** 31)))
    feat = np.array([1.0 if v < sizes[0] else -1.0 for v in range(n)])
    return nx.to_numpy_array(g, nodelist=range(n)), feat


def _grid(nx, n: int, rng: np.random.Generator):
    shapes = [(r, n // r) for r in range(2, n) if n % r == 0]
    if not shapes:
        raise ValueError(f"grid graphs need a composite number of nodes, got n={n}")
    r, c = shapes[int(rng.integers(len(shapes)))]
    g = nx.grid_2d_graph(r, c)
    nodes = sorted(g.nodes())
    feat = np.array([1.0 if (i + j) % 2 == 0 else -1.0 for i, j in nodes])
    return nx.to_numpy_array(g, nodelist=nodes), feat


def graphs(kind: str, count: int, n: int = 12, seed: int = 0, p_in: float = 0.7,
           p_out: float = 0.05) -> tuple[Tensor, Tensor]:
    """``count`` graphs of ``kind`` (``KINDS``): ``(X [count, n, 1], A [count, n, n])``."""
    if kind not in KINDS:
        raise ValueError(f"unknown graph kind {kind!r}; valid: {', '.join(KINDS)}")
    if count < 1 or n < 4:
        raise ValueError(f"need count >= 1 and n >= 4, got count={count}, n={n}")
    nx = _networkx()
    rng = np.random.default_rng(int(seed))
    X = np.zeros((count, n, 1))
    A = np.zeros((count, n, n))
    for k in range(count):
        a, feat = _community(nx, n, rng, p_in, p_out) if kind == "community" else _grid(nx, n, rng)
        perm = rng.permutation(n)
        A[k] = a[np.ix_(perm, perm)]
        X[k, :, 0] = feat[perm]
    return torch.from_numpy(X), torch.from_numpy(A)


def density(A: Tensor) -> float:
    """The mean edge density of 0/1 adjacencies ``[B, n, n]`` (off-diagonal)."""
    n = A.shape[1]
    return float((A != 0).sum() / (A.shape[0] * n * (n - 1)))


def erdos_renyi(count: int, n: int, p: float, seed: int = 0) -> Tensor:
    """``count`` G(n, p) adjacencies ``[count, n, n]`` (networkx ``fast_gnp_random_graph``)."""
    nx = _networkx()
    rng = np.random.default_rng(int(seed))
    A = np.stack([nx.to_numpy_array(nx.fast_gnp_random_graph(n, p, seed=int(rng.integers(2 ** 31))),
                                    nodelist=range(n)) for _ in range(count)])
    return torch.from_numpy(A)


def to_signed(A: Tensor) -> Tensor:
    """0/1 adjacency -> ``2 A - 1`` off the diagonal, 0 on it (``[B, n, n]``)."""
    n = A.shape[-1]
    off = 1.0 - torch.eye(n, dtype=A.dtype, device=A.device)
    return (2.0 * A - 1.0) * off


def from_signed(A: Tensor) -> Tensor:
    """A model's (continuous, symmetric) adjacency -> 0/1 by its sign (diagonal 0)."""
    n = A.shape[-1]
    return ((A > 0).to(torch.float64)) * (1.0 - torch.eye(n, dtype=torch.float64, device=A.device))


__all__ = ["KINDS", "graphs", "density", "erdos_renyi", "to_signed", "from_signed"]
