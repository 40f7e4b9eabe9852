"""MMD few-step finetuning (MMD-DDM).

Aiello, Valsesia & Magli 2023, "Fast Inference in Denoising Diffusion Models via MMD
Finetuning": fix a sampler with few steps (here any deterministic solver on a grid of
``steps`` points, e.g. a fitted one), draw a batch of its samples from fresh noise keeping
the autograd graph through every step, and update the network's weights to lower the
maximum mean discrepancy between those samples and a batch of data,

    MMD^2(P, Q) = E k(x, x') + E k(y, y') - 2 E k(x, y),   x, x' ~ P,  y, y' ~ Q,

estimated without bias by the U-statistic (Gretton et al. 2012, eq. 3), with a sum of
Gaussian kernels of several bandwidths. The network learns to make *its own few-step
sampler* land on the data law, instead of the probability-flow ODE that few steps only
approximate. Steps are recomputed in the backward pass (``torch.utils.checkpoint``,
``diffinfer.scaling.noise_opt.CheckpointedSteps``), so memory holds one step's
activations. Kernels act on ``features(x)`` (default the flattened sample); the paper
uses Inception features for images.

``gaussian_mmd2`` is the closed form of the same MMD^2 between two Gaussians (the oracle
the estimator is tested against).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..denoiser import Denoiser
from .network import replace_network

#: default bandwidths, as multiples of the data's median pairwise distance
BANDWIDTH_SCALES = (0.125, 0.25, 0.5, 1.0, 2.0)


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def _bandwidths(bandwidths) -> Tensor:
    h = torch.as_tensor(bandwidths, dtype=torch.float64).reshape(-1)
    if h.numel() == 0 or not bool((h > 0).all()) or not bool(torch.isfinite(h).all()):
        raise ValueError(f"bandwidths must be positive and finite, got {bandwidths}")
    return h


def mmd2(x: Tensor, y: Tensor, bandwidths: Sequence[float], unbiased: bool = True, paired: bool = False) -> Tensor:
    """``sum_h MMD^2_h(x, y)`` with ``k_h(a, b) = exp(-|a - b|^2 / (2 h^2))`` between sample
    sets ``x`` ``[N, ...]`` and ``y`` ``[M, ...]`` (a 0-d tensor, differentiable in both).

    ``unbiased``: the U-statistic (diagonals of the within-set sums left out), whose
    expectation is exactly the population MMD^2; else the biased V-statistic.
    ``paired``: row ``i`` of ``x`` depends on row ``i`` of ``y`` (e.g. a sample generated
    with the label of data row ``i``), so the cross term leaves out the pairs ``(i, i)``
    too (``N == M``); the rows of each set must still be independent of each other."""
    x, y = _flat(x), _flat(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} vs {y.shape[1]}")
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError("MMD needs at least 2 samples per set")
    h2 = (2.0 * _bandwidths(bandwidths) ** 2).to(x.dtype).view(-1, 1, 1)  # [H, 1, 1]

    def gram(a: Tensor, b: Tensor) -> Tensor:  # [H, Na, Nb]
        d2 = (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1) - 2.0 * a @ b.T).clamp_min(0.0)
        return torch.exp(-d2.unsqueeze(0) / h2)

    if paired and n != m:
        raise ValueError(f"paired sets need equal sizes, got {n} and {m}")
    kxx, kyy, kxy = gram(x, x), gram(y, y), gram(x, y)
    if paired:
        cross = (kxy.sum((1, 2)) - kxy.diagonal(dim1=1, dim2=2).sum(1)) / (n * (n - 1))
    else:
        cross = kxy.mean((1, 2))
    if unbiased:
        term_x = (kxx.sum((1, 2)) - kxx.diagonal(dim1=1, dim2=2).sum(1)) / (n * (n - 1))
        term_y = (kyy.sum((1, 2)) - kyy.diagonal(dim1=1, dim2=2).sum(1)) / (m * (m - 1))
    else:
        term_x, term_y = kxx.mean((1, 2)), kyy.mean((1, 2))
    return (term_x + term_y - 2.0 * cross).sum()


def gaussian_mmd2(mean_a: Tensor, cov_a: Tensor, mean_b: Tensor, cov_b: Tensor, bandwidth: float) -> float:
    """The population MMD^2 (Gaussian kernel of ``bandwidth``) between ``N(mean_a, cov_a)``
    and ``N(mean_b, cov_b)``: with ``E k(u, v) = det(I + S / h^2)^{-1/2}
    exp(-d^T (h^2 I + S)^{-1} d / 2)`` for independent Gaussians ``u, v`` whose difference
    has mean ``d`` and covariance ``S``."""
    h2 = float(bandwidth) ** 2
    ma, mb = torch.as_tensor(mean_a, dtype=torch.float64), torch.as_tensor(mean_b, dtype=torch.float64)
    ca, cb = torch.as_tensor(cov_a, dtype=torch.float64), torch.as_tensor(cov_b, dtype=torch.float64)
    eye = torch.eye(ma.numel(), dtype=torch.float64)

    def expected_kernel(d: Tensor, s: Tensor) -> float:
        quad = d @ torch.linalg.solve(h2 * eye + s, d)
        return float(torch.exp(-0.5 * quad) / torch.sqrt(torch.linalg.det(eye + s / h2)))

    zero = torch.zeros_like(ma)
    return expected_kernel(zero, 2 * ca) + expected_kernel(zero, 2 * cb) - 2 * expected_kernel(ma - mb, ca + cb)


def median_distance(x: Tensor) -> float:
    """The median pairwise Euclidean distance of the rows of ``x`` ``[N, ...]``."""
    x = _flat(x).double()
    d = torch.cdist(x, x)
    return float(d[~torch.eye(x.shape[0], dtype=torch.bool)].median())


def default_bandwidths(data: Tensor, scales: Sequence[float] = BANDWIDTH_SCALES) -> list[float]:
    """``scales`` times the median pairwise distance of ``data``'s rows (the median
    heuristic, Gretton et al. 2012, widened to several scales so both the coarse layout and
    the fine structure of the law count)."""
    med = median_distance(data)
    if not med > 0:
        raise ValueError("the data's median pairwise distance is 0; give bandwidths")
    return [s * med for s in scales]


@dataclass
class FinetuneResult:
    """``den``: the finetuned model (a copy; the input model is unchanged); ``losses``: the
    MMD^2 of each training batch (before its update); ``seconds``; ``bandwidths``."""

    den: Denoiser
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    bandwidths: list[float] = field(default_factory=list)


def _data_batch(data, n: int, g: torch.Generator):
    """``(x [n, ...], cond dict)`` from a tensor (rows drawn with replacement) or a
    callable ``data(n, generator) -> x`` or ``(x, cond)``."""
    if isinstance(data, Tensor):
        return data[torch.randint(0, data.shape[0], (n,), generator=g)], {}
    out = data(n, g)
    if isinstance(out, tuple):
        return out[0], dict(out[1])
    return out, {}


def mmd_finetune(den: Denoiser, data, shape: Sequence[int], solver="ddim", steps: int = 4,
                 ts: Tensor | None = None, iterations: int = 200, batch: int = 256, lr: float = 1e-4,
                 bandwidths: Sequence[float] | None = None, features: Callable[[Tensor], Tensor] | None = None,
                 seed: int = 0, clip: float = 1.0, final_lr_fraction: float = 0.1, use_checkpoint: bool = True, dtype=torch.float32,
                 log: Callable[[str], None] | None = None, log_every: int = 50) -> FinetuneResult:
    """Finetune ``den``'s network so that ``solver``'s ``steps``-step samples (on ``ts``
    when given) match ``data`` in MMD (MMD-DDM; module docstring).

    Args:
        den: the model (a ``Denoiser``; its network is copied, the original is untouched).
        data: data rows ``[N, *shape]`` (batches drawn with replacement), or a callable
            ``data(n, generator)`` returning ``x [n, *shape]`` or ``(x, cond)``; ``cond``
            (e.g. ``{"label": y}``) is bound to the model for the generated batch, so a
            class-conditional model generates the same labels as the data batch (the MMD
            then leaves out the dependent pairs, ``mmd2(paired=True)``).
        shape: one sample's shape.
        solver: a deterministic solver name or instance (the steps are recomputed in the
            backward pass and must repeat exactly).
        iterations, batch, lr, clip: Adam steps, rows per batch (generated and data),
            learning rate (cosine decay to ``lr * final_lr_fraction``), gradient-norm clip
            (0: none).
        bandwidths: Gaussian kernel bandwidths in feature space (default
            ``default_bandwidths`` of 512 data rows' features).
        features: ``features(x) -> [B, F]`` the kernel compares (default: flattened
            samples), e.g. a fixed encoder.
        seed: every batch's noise, data rows and conditions come from one generator.
    """
    from .. import solvers
    from ..grids import resolve
    from ..scaling.noise_opt import differentiable_sample
    solver = solvers.get(solver)
    if solver.stochastic:
        raise ValueError(f"MMD finetuning needs a deterministic solver; {solver.name!r} is stochastic")
    if int(iterations) < 0 or not lr > 0 or int(batch) < 2:
        raise ValueError(f"need iterations >= 0, lr > 0 and batch >= 2, got {iterations}, {lr}, {batch}")
    ts = resolve(den.process, steps, ts)
    features = features or _flat
    g = torch.Generator().manual_seed(int(seed))
    if bandwidths is None:
        ref, _ = _data_batch(data, 512, torch.Generator().manual_seed(int(seed) + 1))
        with torch.no_grad():
            bandwidths = default_bandwidths(features(ref.to(dtype)))
    bandwidths = [float(h) for h in _bandwidths(bandwidths)]
    net = copy.deepcopy(den.net)
    net.requires_grad_(True).train()
    params = [p for p in net.parameters() if p.is_floating_point()]
    opt = torch.optim.Adam(params, lr=lr)
    model = replace_network(den, net)
    scale = float(den.process.sigma(ts[0]))
    losses, start = [], time.perf_counter()
    for k in range(int(iterations)):
        for group in opt.param_groups:  # cosine decay to lr * final_lr_fraction
            group["lr"] = lr * (final_lr_fraction + (1 - final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * k / max(1, int(iterations)))))
        y, cond = _data_batch(data, int(batch), g)
        x_T = torch.randn((int(batch), *shape), generator=g, dtype=dtype) * scale
        with torch.enable_grad():
            x = differentiable_sample(model.bind(**cond) if cond else model, x_T, solver, ts=ts,
                                      use_checkpoint=use_checkpoint)
            loss = mmd2(features(x), features(y.to(dtype)), bandwidths, paired=bool(cond))
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"MMD loss became {float(loss.detach())} at iteration {k}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and (k + 1) % log_every == 0:
            recent = losses[-log_every:]
            log(f"    mmd finetune {k + 1}/{iterations}: MMD^2 {sum(recent) / len(recent):.4g}")
    net.eval().requires_grad_(False)
    return FinetuneResult(replace_network(den, net), losses, time.perf_counter() - start, bandwidths)


__all__ = ["mmd2", "gaussian_mmd2", "median_distance", "default_bandwidths", "BANDWIDTH_SCALES",
           "FinetuneResult", "mmd_finetune"]
