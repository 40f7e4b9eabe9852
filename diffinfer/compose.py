"""Composition of diffusion models by superposition, with the Ito density estimator.

Skreta et al. 2025, "The Superposition of Diffusion Models Using the Ito Density
Estimator" (SuperDiff). For the forward SDE ``dx = f x dt + g dW`` (``Process.sde``) and a
path integrated *backward* in ``t`` by Euler-Maruyama with the full noise ``g``, Ito's
lemma and the Fokker-Planck equation give the change of every model's log-density along
that path without any divergence (the Laplacian terms cancel):

    d log q_i(x_t) = <s_i(x_t), dx> + h [D f + f <x_t, s_i> - (g^2/2) |s_i|^2]

with ``h = t - t_next > 0``, ``s_i = grad log q_i`` the model's score and ``D`` the
dimension (SuperDiff, Theorem 1). The path follows the reverse SDE with the combined score
``kappa s_1 + (1 - kappa) s_2``:

- ``or``: ``kappa_i = softmax_i(log q_i(x_t) + log w_i)``: the exact score of the mixture
  ``w_1 q_1 + w_2 q_2``, so the path samples the mixture (SuperDiff, Proposition 1);
- ``and``: ``kappa`` solves ``log q_1 = log q_2`` after the step (a linear equation in
  ``kappa``), keeping the two log-densities equal (SuperDiff, Proposition 6).

``ito_log_density`` runs one model's own reverse SDE and returns the estimated
log-density change (converges to the exact change as the steps grow).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import grids
from .denoiser import DenoiserBase, summed_counter
from .likelihood import gaussian_prior
from .process import Process, expand_to
from .rng import SampleRNG
from .sample import initial_noise

Tensor = torch.Tensor
MODES = ("or", "and")


@dataclass
class SuperpositionResult:
    """``x``: samples ``[B, ...]``; ``log_q``: running log-density estimates of each
    model at ``t_end`` ``[B, 2]``; ``kappa``: the weights of model 1 per step
    ``[steps, B]``; ``t_end``: the last positive time of the path; ``nfe``."""

    x: Tensor
    log_q: Tensor
    kappa: Tensor
    t_end: float
    nfe: int
    x_end: Tensor


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).reshape(a.shape[0], -1).sum(1)


def sde_coefficients(process: Process, t) -> tuple[float, float]:
    """``(f, g^2)`` of the forward SDE at ``t`` as host floats (read once per step)."""
    f, g2 = process.sde(t)
    return float(f), float(g2)


def ito_increment(x: Tensor, dx: Tensor, h: float, score: Tensor, f: float, g2: float) -> Tensor:
    """``d log q(x_t)`` ``[B]`` along an Euler-Maruyama step ``dx`` of the reverse SDE
    from ``t`` to ``t - h``, with ``(f, g2) = sde_coefficients(process, t)`` (Ito density
    estimator, SuperDiff Theorem 1)."""
    dim = x[0].numel()
    return _dot(score, dx) + h * (dim * f + f * _dot(x, score) - 0.5 * g2 * _dot(score, score))


def _positive_grid(process: Process, steps: int, ts) -> tuple[Tensor, bool]:
    ts = grids.resolve(process, steps, ts)
    ends_at_zero = float(ts[-1]) == 0.0
    return (ts[:-1] if ends_at_zero else ts), ends_at_zero


def _em_drift(x: Tensor, h: float, score: Tensor, noise: Tensor, f: float, g2: float) -> Tensor:
    """The reverse-SDE Euler-Maruyama increment ``h (g^2 s - f x) + g sqrt(h) z``."""
    return h * (g2 * score - f * x) + math.sqrt(g2 * h) * noise


def superpose(den1: DenoiserBase, den2: DenoiserBase, shape, mode: str = "or", steps: int = 200, ts=None,
              seed: int = 0, weights=(0.5, 0.5), x_T: Tensor | None = None, dtype=torch.float32,
              device="cpu") -> SuperpositionResult:
    """Sample the superposition of two models that share a process (SuperDiff).

    Args:
        shape: ``[B, ...]``; ``mode``: ``or`` (mixture) or ``and`` (equal density).
        steps / ts: the grid; Euler-Maruyama runs over its positive points, and a grid
            ending at ``t = 0`` finishes with the combined denoised estimate.
        weights: mixture weights for ``or``.
        x_T: starting points (default ``sigma(t_0) z`` with per-sample streams).
    """
    if mode not in MODES:
        raise ValueError(f"unknown superposition mode {mode!r}; valid: {', '.join(MODES)}")
    process = den1.process
    if type(den2.process) is not type(process) or repr(den2.process) != repr(process):
        raise ValueError(f"both models must share one process, got {den1.process!r} and {den2.process!r}")
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (2,) or bool((w <= 0).any()):
        raise ValueError(f"weights must be two positive numbers, got {weights}")
    ts, ends_at_zero = _positive_grid(process, steps, ts)
    shape = tuple(int(s) for s in shape)
    rng = SampleRNG.from_seed(seed, batch=shape[0], device=device)
    x = initial_noise(den1, shape, ts, rng, dtype=dtype, device=device) if x_T is None else x_T
    log_q = gaussian_prior(process)(x, ts[0]).double().unsqueeze(1).repeat(1, 2)  # [B, 2]: both start at N(0, s^2)
    counter = summed_counter([den1, den2])
    nfe0 = counter.n
    kappas = []
    log_w = torch.log(w / w.sum())
    for i in range(ts.numel() - 1):
        t, h = ts[i], float(ts[i] - ts[i + 1])
        s1, s2 = den1.score(x, t), den2.score(x, t)
        f, g2 = sde_coefficients(process, t)
        base = _em_drift(x, h, s2, rng.randn_like(x), f, g2)  # dx with kappa = 0
        diff = s1 - s2
        if mode == "or":
            kappa = torch.softmax(log_q + log_w, 1)[:, 0]
        else:
            still = torch.zeros_like(x)
            c = (ito_increment(x, still, h, s1, f, g2) - ito_increment(x, still, h, s2, f, g2)).double()
            num = (log_q[:, 0] - log_q[:, 1]) + c + _dot(diff, base).double()
            den = h * g2 * _dot(diff, diff).double()
            kappa = torch.where(den > 1e-12, -num / den.clamp(min=1e-12), torch.full_like(num, 0.5))
        k = expand_to(kappa, x)
        dx = base + h * g2 * k * diff
        log_q = log_q + torch.stack([ito_increment(x, dx, h, s1, f, g2),
                                     ito_increment(x, dx, h, s2, f, g2)], 1).double()
        x = x + dx
        kappas.append(kappa)
    x_end = x
    if ends_at_zero:
        s1, s2 = den1.score(x, ts[-1]), den2.score(x, ts[-1])
        k = expand_to(kappas[-1], x) if mode == "and" else expand_to(torch.softmax(log_q + log_w, 1)[:, 0], x)
        a, s = process.coeffs(ts[-1], x)
        x = (x + s * s * (k * s1 + (1 - k) * s2)) / a  # Tweedie with the combined score
    nfe = counter.n - nfe0
    return SuperpositionResult(x=x, log_q=log_q, kappa=torch.stack(kappas), t_end=float(ts[-1]), nfe=nfe, x_end=x_end)


def ito_log_density(den: DenoiserBase, x_T: Tensor, steps: int = 200, ts=None, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Run the model's own reverse SDE from ``x_T`` (Euler-Maruyama over the grid's positive
    points) and return ``(x_end, delta)``: the end point and the Ito estimate of
    ``log q_{t_end}(x_end) - log q_{t_0}(x_T)`` ``[B]``."""
    process = den.process
    ts, _ = _positive_grid(process, steps, ts)
    rng = SampleRNG.from_seed(seed, batch=x_T.shape[0], device=x_T.device)
    x = x_T
    delta = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for i in range(ts.numel() - 1):
        t, h = ts[i], float(ts[i] - ts[i + 1])
        s = den.score(x, t)
        f, g2 = sde_coefficients(process, t)
        dx = _em_drift(x, h, s, rng.randn_like(x), f, g2)
        delta = delta + ito_increment(x, dx, h, s, f, g2).double()
        x = x + dx
    return x, delta
