"""Low-rank learning: diffusion models learn a mixture of low-rank Gaussians by subspace clustering.

Wang, Zhang, Chen, Qu et al. 2024, "Diffusion Models Learn Low-Dimensional Distributions via
Subspace Clustering". Data ``x0 = U_k a``, ``a ~ N(0, I_d)``, component ``k`` of ``K`` with
equal weights and orthonormal bases ``U_k`` ``[D, d]`` (a MoLRG, ``toys.molrg(noise_var=0)``).
Under ``x_t = alpha x0 + sigma eps`` the ideal denoiser is (the paper's eq. 5, in our time
convention)

    E[x0 | x_t] = sum_k w_k(x_t) * alpha / (alpha^2 + sigma^2) * U_k U_k^T x_t,
    w_k = softmax_k( alpha^2 |U_k^T x_t|^2 / (2 sigma^2 (alpha^2 + sigma^2)) ),

and the paper parameterises the network the same way with learnable orthonormal ``U_k``
(``LowRankDenoiser``): minimising the denoising loss over ``N`` training points is then
subspace clustering of the points, and the subspaces are learned once each component has
about ``d`` points (the sample complexity is linear in the intrinsic dimension, not in
``D``); with fewer, the span of the points is all the data can tell.

The other end is the empirical (memorising) optimum: over all functions, the denoising loss on
``N`` points ``x_i`` is minimised by the posterior mean under the empirical distribution,

    D_N(x_t) = sum_i softmax_i( -|x_t - alpha x_i|^2 / (2 sigma^2) ) x_i,

whose probability-flow samples are copies of training points (``empirical_denoiser``). A
flexible network (``diffinfer.nets.MLPDenoiser``) approaches ``D_N`` when ``N`` is small and
the ideal denoiser when ``N`` is large; ``denoising_gap`` measures a model's distance to either,
``copy_fraction`` / ``off_subspace`` whether its samples copy training points or lie on the
true subspaces.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .denoiser import Denoiser
from .process import Process, as_time, expand_to

_F64 = torch.float64


def _coeffs(process: Process, t, x: Tensor) -> tuple[Tensor, Tensor]:
    """``alpha``, ``sigma`` at ``t`` (scalar or ``[B]``) cast and shaped for ``x`` ``[B, D]``."""
    c = process.at(as_time(t).to("cpu") if isinstance(t, Tensor) else t)
    return expand_to(c.alpha, x), expand_to(c.sigma, x)


def molrg_posterior_mean(x: Tensor, bases: Tensor, process: Process, t) -> Tensor:
    """The closed-form MoLRG denoiser (module docstring) for ``x`` ``[B, D]`` with bases
    ``[K, D, d]`` (orthonormal columns, equal component weights, zero means, unit variance
    inside each subspace, no noise off it); ``t`` scalar or ``[B]``; ``sigma(t) > 0``.
    Several models at once: ``x`` ``[B, E, D]`` with bases ``[E, K, D, d]`` (model ``e`` sees
    ``x[:, e]``)."""
    if x.dim() not in (2, 3) or bases.dim() != x.dim() + 1 or bases.shape[-2] != x.shape[-1] \
            or (x.dim() == 3 and bases.shape[0] != x.shape[1]):
        raise ValueError(f"need x [B, D] and bases [K, D, d] with the same D (or [B, E, D] and [E, K, D, d]), "
                         f"got {tuple(x.shape)}, {tuple(bases.shape)}")
    a, s = _coeffs(process, t, x)
    if bool((s <= 0).any()):
        raise ValueError("the MoLRG denoiser needs sigma(t) > 0 (at t = 0 the data are singular)")
    U = bases.to(x.dtype)
    proj = torch.einsum("...kdr,b...d->b...kr", U, x)  # [B, (E,) K, d]: U_k^T x
    v = a * a + s * s  # broadcastable to x
    logits = (a * a / (2 * s * s * v)) * proj.pow(2).sum(-1)  # [B, (E,) K]
    w = torch.softmax(logits, dim=-1)
    recon = torch.einsum("...kdr,b...kr->b...kd", U, proj)  # [B, (E,) K, D]: U_k U_k^T x
    return (a / v) * (w.unsqueeze(-1) * recon).sum(-2)


class LowRankDenoiser(nn.Module):
    """The paper's parameterised denoiser: ``molrg_posterior_mean`` with learnable bases
    ``U_k = qr(W_k).Q`` (orthonormal by construction; ``W_k`` ``[D, d]`` free). Predicts ``x0``;
    wrap it as ``Denoiser(model, process, prediction='x0')`` (``as_denoiser``)."""

    def __init__(self, dim: int, rank: int, n_components: int, process: Process, seed: int = 0,
                 init: Tensor | None = None):
        super().__init__()
        if not (1 <= rank <= dim and n_components >= 1):
            raise ValueError(f"need 1 <= rank <= dim and n_components >= 1, got rank={rank}, dim={dim}, "
                             f"n_components={n_components}")
        self.dim, self.rank, self.n_components, self.process = dim, rank, n_components, process
        if init is None:
            g = torch.Generator().manual_seed(int(seed))
            init = torch.randn(n_components, dim, rank, dtype=_F64, generator=g)
        if tuple(init.shape) != (n_components, dim, rank):
            raise ValueError(f"init must be [K, D, d] = [{n_components}, {dim}, {rank}], got {tuple(init.shape)}")
        self.weight = nn.Parameter(init.clone().to(_F64))

    @property
    def bases(self) -> Tensor:
        """Orthonormal bases ``[K, D, d]``."""
        return torch.linalg.qr(self.weight)[0]

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        shape = x.shape
        out = molrg_posterior_mean(x.reshape(shape[0], -1).to(_F64), self.bases, self.process, t)
        return out.reshape(shape).to(x.dtype)

    def as_denoiser(self) -> Denoiser:
        return Denoiser(self, self.process, prediction="x0")


def empirical_posterior_mean(x: Tensor, points: Tensor, process: Process, t) -> Tensor:
    """The memorising optimum ``D_N`` (module docstring) for ``x`` ``[B, D]`` and training points
    ``[N, D]``; ``t`` scalar or ``[B]``; ``sigma(t) > 0``."""
    if x.dim() != 2 or points.dim() != 2 or points.shape[1] != x.shape[1]:
        raise ValueError(f"need x [B, D] and points [N, D] with the same D, got {tuple(x.shape)}, "
                         f"{tuple(points.shape)}")
    a, s = _coeffs(process, t, x)
    if bool((s <= 0).any()):
        raise ValueError("the empirical denoiser needs sigma(t) > 0")
    p = points.to(x.dtype)
    # -|x - a p|^2 / (2 s^2), dropping |x|^2 (constant over i): (a x.p - a^2 |p|^2 / 2) / s^2
    logits = (a * (x @ p.T) - 0.5 * (a * a) * p.pow(2).sum(1)) / (s * s)  # [B, N]
    return torch.softmax(logits, dim=1) @ p


def empirical_denoiser(points: Tensor, process: Process) -> Denoiser:
    """``empirical_posterior_mean`` of ``points`` ``[N, D]`` as a ``Denoiser`` (prediction ``x0``)."""
    pts = torch.as_tensor(points)

    def model(x, t):
        return empirical_posterior_mean(x.reshape(x.shape[0], -1), pts, process, t).reshape(x.shape)
    return Denoiser(model, process, prediction="x0")


def subspace_error(learned: Tensor, true: Tensor) -> float:
    """Worst over true components of the best-matching learned subspace's projector distance,
    ``max_k min_l |U_l U_l^T - V_k V_k^T|_F / sqrt(2 d)``: 0 when every true subspace is
    learned, 1 when one is orthogonal to all learned ones. ``[L, D, d]``, ``[K, D, d]``."""
    P = learned @ learned.transpose(-1, -2)  # [L, D, D]
    Q = true @ true.transpose(-1, -2)  # [K, D, D]
    d = true.shape[-1]
    dist = (P.unsqueeze(0) - Q.unsqueeze(1)).flatten(2).norm(dim=-1) / math.sqrt(2 * d)  # [K, L]
    return float(dist.min(1).values.max())


def fit_lowrank(points: Tensor, rank: int, n_components: int, process: Process, steps: int = 400,
                batch: int = 256, lr: float = 0.2, seed: int = 0, t_max: float = 0.15, restarts: int = 4,
                progress: bool = False) -> LowRankDenoiser:
    """Train ``LowRankDenoiser`` on ``points`` ``[N, D]`` with ``diffinfer.train`` (x0-prediction
    denoising loss, ``t`` uniform on ``[process.t_min, t_max]``: at higher noise the loss says
    little about the subspaces; Adam with warm-up and cosine decay; last iterate).

    The loss is non-convex (it is subspace clustering): ``restarts`` models from independent
    random bases train side by side, batched, on the same batches (one optimiser; Adam's
    per-parameter steps keep them independent) and the one with the lowest loss on a fixed
    evaluation set (every training point at 8 times, one noise draw each) is returned."""
    from .train import TrainConfig, denoising_loss, fit
    if not (isinstance(restarts, int) and restarts >= 1):
        raise ValueError(f"restarts must be a positive int, got {restarts!r}")
    pts = torch.as_tensor(points, dtype=_F64)
    D = pts.shape[1]
    init = torch.stack([LowRankDenoiser(D, rank, n_components, process, seed=seed * 1009 + r).weight.detach()
                        for r in range(restarts)])  # [R, K, D, d]
    bank = _Bank(init, process)
    den = Denoiser(bank, process, prediction="x0")

    def loss_fn(m, g):  # every restart sees the same x_t: rows [B, R, D]
        idx = torch.randint(0, pts.shape[0], (batch,), generator=g)
        t = process.t_min + (t_max - process.t_min) * torch.rand(batch, dtype=_F64, generator=g)
        eps = torch.randn(batch, 1, D, dtype=_F64, generator=g).expand(batch, restarts, D)
        return restarts * denoising_loss(den, pts[idx].unsqueeze(1).expand(batch, restarts, D), t=t, eps=eps)

    cfg = TrainConfig(steps=steps, lr=lr, warmup=max(1, steps // 20), ema_decay=0.0, seed=seed,
                      checkpoint_every=0, clip=0.0)
    fit(bank, loss_fn, cfg, progress=progress, desc="low-rank")
    g = torch.Generator().manual_seed(seed + 1)
    x0 = pts.repeat(8, 1)  # every training point at 8 times
    t = torch.linspace(process.t_min, t_max, 8, dtype=_F64).repeat_interleave(pts.shape[0])
    eps = torch.randn(x0.shape, dtype=_F64, generator=g)
    c = process.at(t).broadcast(x0)
    with torch.no_grad():
        xt = (c.alpha * x0 + c.sigma * eps).unsqueeze(1).expand(-1, restarts, D)
        losses = (bank(xt, t) - x0.unsqueeze(1)).pow(2).mean(dim=(0, 2))  # [R]
    best = int(torch.argmin(losses))
    return LowRankDenoiser(D, rank, n_components, process, init=bank.weight.detach()[best])


class _Bank(nn.Module):
    """``R`` low-rank models side by side (weights ``[R, K, D, d]``) on inputs ``[B, R, D]``."""

    def __init__(self, init: Tensor, process: Process):
        super().__init__()
        self.process = process
        self.weight = nn.Parameter(init.clone())

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return molrg_posterior_mean(x, torch.linalg.qr(self.weight)[0], self.process, t)


def fit_network(points: Tensor, process: Process, hidden: int = 32, depth: int = 1, steps: int = 600,
                batch: int = 128, lr: float = 1e-2, seed: int = 0, t_max: float = 0.5,
                progress: bool = False) -> Denoiser:
    """Train a small ``nets.MLPDenoiser`` (x0 prediction, float32) on ``points`` ``[N, D]`` with
    ``diffinfer.train`` (``t`` uniform on ``[process.t_min, t_max]``); returns its ``Denoiser``.
    The flexible model that memorises a small training set (module docstring)."""
    from .nets.mlp import MLPDenoiser
    from .train import TrainConfig, denoising_loss, fit
    pts = torch.as_tensor(points).float()
    torch.manual_seed(int(seed))
    net = MLPDenoiser(pts.shape[1], hidden=hidden, depth=depth)
    den = Denoiser(net, process, prediction="x0")

    def loss_fn(m, g):
        idx = torch.randint(0, pts.shape[0], (batch,), generator=g)
        t = process.t_min + (t_max - process.t_min) * torch.rand(batch, dtype=_F64, generator=g)
        return denoising_loss(den, pts[idx], t=t, generator=g)

    cfg = TrainConfig(steps=steps, lr=lr, warmup=max(1, steps // 30), ema_decay=0.0, seed=seed, checkpoint_every=0)
    fit(net, loss_fn, cfg, progress=progress, desc="mlp")
    return den


def copy_fraction(samples: Tensor, points: Tensor, radius: float) -> float:
    """Fraction of ``samples`` ``[B, D]`` within ``radius`` of a training point ``[N, D]``."""
    return float((torch.cdist(samples.to(_F64), points.to(_F64)).min(1).values < radius).double().mean())


def off_subspace(samples: Tensor, bases: Tensor) -> Tensor:
    """Distance of each sample ``[B, D]`` to the nearest subspace ``[K, D, d]`` (``[B]``), relative
    to the sample's norm."""
    x = samples.to(_F64)
    resid = x.unsqueeze(1) - torch.einsum("kdr,ker,be->bkd", bases, bases, x)  # [B, K, D]
    return resid.norm(dim=-1).min(1).values / x.norm(dim=1).clamp_min(1e-12)


def denoising_gap(f, g, x0: Tensor, process: Process, ts, seed: int = 0) -> float:
    """``sqrt(mean |f(x_t, t) - g(x_t, t)|^2 / D)`` over ``x_t = alpha x0 + sigma eps`` at each
    time of ``ts`` (fresh noise from ``seed``): the RMS difference of two denoisers ``(x, t) ->
    x0_hat`` on the points of a clean set ``x0`` ``[B, D]``."""
    g_ = torch.Generator().manual_seed(int(seed))
    total = 0.0
    for t in ts:
        c = process.at(float(t))
        eps = torch.randn(x0.shape, dtype=x0.dtype, generator=g_)
        xt = float(c.alpha) * x0 + float(c.sigma) * eps
        tt = torch.full((x0.shape[0],), float(t), dtype=_F64)
        with torch.no_grad():
            total += float((f(xt, tt) - g(xt, tt)).pow(2).mean())
    return math.sqrt(total / len(ts))


__all__ = ["molrg_posterior_mean", "LowRankDenoiser", "empirical_posterior_mean", "empirical_denoiser",
           "subspace_error", "fit_lowrank", "fit_network", "copy_fraction", "off_subspace", "denoising_gap"]
