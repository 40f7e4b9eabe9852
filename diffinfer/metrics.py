"""Sample-quality metrics: distances between sample sets and exact scores under toys.

- ``sliced_wasserstein``: mean over random directions of the 1-D Wasserstein-p distance
  (Rabin et al. 2011; Bonneel et al. 2015).
- ``mmd_rbf``: unbiased squared maximum mean discrepancy with a Gaussian kernel whose
  bandwidth is the median pairwise distance (Gretton et al. 2012, JMLR).
- ``mean_log_density``: exact mean ``log p(x)`` under a toy with a closed-form density.
- ``frechet_distance``: ``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2})`` between Gaussian
  fits of two feature sets (Heusel et al. 2017, the FID formula).
- ``precision_recall_knn``: improved precision and recall from k-NN balls
  (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric").
- ``unigram_entropy``, ``kl_divergence``, ``total_variation``: for discrete distributions.
- ``psnr``: peak signal-to-noise ratio per row (dB), for images in ``[-1, 1]`` by default.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

_F64 = torch.float64


def _flat(x) -> Tensor:
    x = torch.as_tensor(x)
    return x.reshape(x.shape[0], -1).to(_F64)


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256, p: int = 2, seed: int = 0) -> float:
    """Sliced Wasserstein-p distance between two sample sets ``[N, ...]`` and ``[M, ...]``.

    Unequal sizes are compared through matched quantiles (the 1-D optimal coupling)."""
    x, y = _flat(x), _flat(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} vs {y.shape[1]}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], n_projections, dtype=_F64, generator=g)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ dirs.to(x.device), dim=0)  # [N, P]
    py, _ = torch.sort(y @ dirs.to(y.device), dim=0)  # [M, P]
    n = max(px.shape[0], py.shape[0])
    q = (torch.arange(n, dtype=_F64) + 0.5) / n
    qx = px[(q * px.shape[0]).long().clamp(max=px.shape[0] - 1)]
    qy = py[(q * py.shape[0]).long().clamp(max=py.shape[0] - 1)]
    return float(((qx - qy).abs() ** p).mean() ** (1.0 / p))


def mmd_rbf(x: Tensor, y: Tensor, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 with ``k(a, b) = exp(-|a - b|^2 / (2 h^2))``; ``h`` = median distance
    of the pooled samples unless given."""
    x, y = _flat(x), _flat(y)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("MMD needs at least 2 samples per set")
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    if bandwidth is None:
        off = d2[~torch.eye(z.shape[0], dtype=torch.bool)]
        bandwidth = float(off.median().sqrt())
    k = torch.exp(-d2 / (2.0 * bandwidth ** 2))
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2.0 * kxy.mean())


def mean_log_density(toy, x: Tensor) -> float:
    """Mean exact ``log p(x)`` under a toy with ``log_prob`` (nats)."""
    return float(toy.log_prob(x).mean())


def _sqrtm_psd(a: Tensor) -> Tensor:
    evals, evecs = torch.linalg.eigh(0.5 * (a + a.T))
    return (evecs * evals.clamp(min=0).sqrt()) @ evecs.T


def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """Frechet distance between Gaussian fits of two feature sets ``[N, F]``, ``[M, F]``."""
    a, b = _flat(feats_a), _flat(feats_b)
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T).reshape(a.shape[1], a.shape[1]), torch.cov(b.T).reshape(b.shape[1], b.shape[1])
    root_a = _sqrtm_psd(ca)
    cross = _sqrtm_psd(root_a @ cb @ root_a)  # (C_a^{1/2} C_b C_a^{1/2})^{1/2} has the trace of (C_a C_b)^{1/2}
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(ca) + torch.trace(cb) - 2.0 * torch.trace(cross))


def precision_recall_knn(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision (fraction of ``fake`` inside some real sample's k-NN ball) and
    recall (fraction of ``real`` inside some fake sample's k-NN ball)."""
    real, fake = _flat(real), _flat(fake)

    def coverage(ref: Tensor, query: Tensor) -> float:
        if ref.shape[0] <= k:
            raise ValueError(f"need more than k={k} reference samples")
        d_ref = torch.cdist(ref, ref)
        radii = d_ref.kthvalue(k + 1, dim=1).values  # [N] (the 0-th neighbour is the point itself)
        inside = torch.cdist(query, ref) <= radii.unsqueeze(0)
        return float(inside.any(dim=1).double().mean())

    return coverage(real, fake), coverage(fake, real)


def unigram_entropy(tokens, vocab_size: int | None = None) -> float:
    """Entropy (nats) of the token frequency distribution of a sequence or batch of
    sequences (a string counts its characters)."""
    if isinstance(tokens, str):
        tokens = torch.tensor([ord(c) for c in tokens])
    tokens = torch.as_tensor(tokens).reshape(-1).long()
    counts = torch.bincount(tokens, minlength=vocab_size or 0).to(_F64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def kl_divergence(p: Tensor, q: Tensor) -> float:
    """Exact ``KL(p || q)`` (nats) between two discrete distributions of the same shape."""
    p, q = torch.as_tensor(p, dtype=_F64).reshape(-1), torch.as_tensor(q, dtype=_F64).reshape(-1)
    p, q = p / p.sum(), q / q.sum()
    support = p > 0
    if bool((q[support] == 0).any()):
        return math.inf
    return float((p[support] * (p[support].log() - q[support].log())).sum())


def total_variation(p: Tensor, q: Tensor) -> float:
    """``0.5 * sum |p - q|`` between two discrete distributions (normalised here)."""
    p, q = torch.as_tensor(p, dtype=_F64).reshape(-1), torch.as_tensor(q, dtype=_F64).reshape(-1)
    return float(0.5 * (p / p.sum() - q / q.sum()).abs().sum())


def psnr(x: Tensor, ref: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio per row (dB) for images in ``[-1, 1]``."""
    mse = ((x - ref) ** 2).reshape(x.shape[0], -1).mean(1)
    return 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(1e-12))
