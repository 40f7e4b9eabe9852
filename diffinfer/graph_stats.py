"""Graph-set distances: degree and clustering MMD (GraphRNN, You et al. 2018; the measures
GDSS, Jo et al. 2022, reports).

Each graph becomes a normalised histogram (node degrees ``0..n-1``; local clustering
coefficients in ``bins`` equal bins of ``[0, 1]``, computed by networkx); two sets of
histograms are compared by the squared MMD with the Gaussian total-variation kernel
``k(p, q) = exp(-TV(p, q)^2 / (2 sigma^2))``, ``TV = |p - q|_1 / 2``, as the biased (V-)statistic
GraphRNN reports (never negative; zero for identical sets). networkx is imported on use.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _networkx():
    try:
        import networkx
    except ImportError:  # pragma: no cover - the graphs extra
        raise ImportError("graph statistics need networkx: pip install 'diffinfer[graphs]'") from None
    return networkx


def to_networkx(adjacency: Tensor) -> list:
    """``[B, n, n]`` 0/1 symmetric adjacencies -> networkx graphs (self-loops dropped)."""
    nx = _networkx()
    A = torch.as_tensor(adjacency)
    if A.dim() != 3 or A.shape[1] != A.shape[2]:
        raise ValueError(f"adjacency must be [B, n, n], got {tuple(A.shape)}")
    A = (A != 0).cpu().numpy().copy()
    graphs = []
    for a in A:
        a[range(a.shape[0]), range(a.shape[0])] = False
        if not (a == a.T).all():
            raise ValueError("adjacency matrices must be symmetric")
        graphs.append(nx.from_numpy_array(a.astype(int)))
    return graphs


def degree_histograms(graphs: list, n_max: int) -> Tensor:
    """``[B, n_max]``: each graph's degree distribution."""
    out = torch.zeros(len(graphs), n_max, dtype=torch.float64)
    for k, g in enumerate(graphs):
        for _, d in g.degree():
            out[k, min(int(d), n_max - 1)] += 1.0
    return out / out.sum(1, keepdim=True).clamp(min=1.0)


def clustering_histograms(graphs: list, bins: int = 10) -> Tensor:
    """``[B, bins]``: each graph's distribution of local clustering coefficients (networkx)."""
    nx = _networkx()
    out = torch.zeros(len(graphs), bins, dtype=torch.float64)
    for k, g in enumerate(graphs):
        for c in nx.clustering(g).values():
            out[k, min(int(c * bins), bins - 1)] += 1.0
    return out / out.sum(1, keepdim=True).clamp(min=1.0)


def mmd_tv(p: Tensor, q: Tensor, sigma: float = 1.0) -> float:
    """Squared MMD (biased V-statistic) between histogram sets ``p [N, K]`` and ``q [M, K]``
    with the Gaussian total-variation kernel of width ``sigma``."""
    if p.dim() != 2 or q.dim() != 2 or p.shape[1] != q.shape[1] or len(p) == 0 or len(q) == 0:
        raise ValueError(f"need two non-empty histogram sets [N, K], [M, K]; got {tuple(p.shape)}, {tuple(q.shape)}")

    def k(a, b):
        tv = 0.5 * torch.cdist(a, b, p=1)
        return torch.exp(-tv.square() / (2.0 * sigma ** 2))

    return float(k(p, p).mean() + k(q, q).mean() - 2.0 * k(p, q).mean())


def graph_mmd(adj_a: Tensor, adj_b: Tensor, sigma_degree: float = 1.0, sigma_clustering: float = 0.1,
              bins: int = 10) -> dict[str, float]:
    """Degree and clustering MMD^2 between two sets of adjacencies ``[B, n, n]`` (0/1)."""
    ga, gb = to_networkx(adj_a), to_networkx(adj_b)
    n_max = max(int(torch.as_tensor(adj_a).shape[1]), int(torch.as_tensor(adj_b).shape[1]))
    return {"degree": mmd_tv(degree_histograms(ga, n_max), degree_histograms(gb, n_max), sigma_degree),
            "clustering": mmd_tv(clustering_histograms(ga, bins), clustering_histograms(gb, bins), sigma_clustering)}


__all__ = ["to_networkx", "degree_histograms", "clustering_histograms", "mmd_tv", "graph_mmd"]
