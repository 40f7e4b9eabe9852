"""Warm and mid-path starts: solve from an estimate noised to an intermediate time.

A solve need not start from pure noise. Given an estimate ``x_hat`` of the data, noise it
to ``t*`` with the process's exact forward transition and solve only the steps below
``t*`` (``sample(den, init=x_hat, t_start=t*, init_error=s)``; ``loop.noise_estimate``,
``loop.truncate_grid``). This is the Real-Time Iteration scheme for diffusion policies
(Duan et al. 2025, "Real-Time Iteration Scheme for Diffusion Policy": the previous
action chunk, shifted, is the next chunk's initial guess) and the leap to an intermediate
step of VideoScene (Wang et al. 2025); SDEdit (Meng et al. 2022) is the same start
with a user's image.

**Which ``t*`` (derivation).** Let the estimate be ``x_hat = x0 + s e`` with
``e ~ N(0, I)`` independent of ``x0 ~ p0``. Then ``alpha(t_s) x_hat = alpha(t_s) x0 +
sigma(t_s) e`` is distributed *exactly* as the forward marginal at the time ``t_s`` where
``sigma(t_s) / alpha(t_s) = s``. For any ``t* >= t_s`` the forward transition
``q(x_{t*} | x_{t_s})`` (``Process.renoise``) gives ``x_{t*} = alpha(t*) x_hat +
sqrt(sigma(t*)^2 - alpha(t*)^2 s^2) z``, exactly distributed as ``p_{t*}``, so an exact
solver from there (the probability-flow ODE or the reverse SDE) returns exactly ``p0``. For
``t* < t_s`` part of the error is never removed. The smallest exact start is ``t* = t_s``
(``t_start_for(process, s, c=1)``), and there the conditional law given the estimate is the
Bayes posterior: the reverse SDE from ``x_{t_s} = alpha(t_s) x_hat`` samples
``p(x0 | x_{t_s}) = p(x0 | x_hat = x0 + s e)``, which for a Gaussian-mixture prior is the
closed-form posterior of a linear-Gaussian measurement with ``A = I`` and noise ``s``
(``toys.posterior.linear_gaussian_posterior``). For ``t* > t_s`` the output forgets part of
the estimate (its marginal stays exact). ``c > 1`` buys robustness to an underestimated
``s``.

**Chunked sequences** (``chunked``): each chunk is warm-started from the previous chunk
shifted by ``stride`` positions along the last axis, the new positions padded
(``shift_estimate``); only the steps below ``t*`` run. The padded positions make the
estimate's error non-Gaussian and position-dependent, so this is an approximation whose
quality ``bench/accel_warm_tiling.py`` measures; the exactness statements above are for the
Gaussian-error model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..denoiser import DenoiserBase
from ..loop import SampleResult, sample
from ..process import Process
from ..rng import stream_seed

PADS = ("edge", "zero")


def t_start_for(process: Process, error: float, c: float = 1.0) -> float:
    """The start time ``t*`` for an estimate with error std ``error`` per entry: where
    ``sigma(t*) / alpha(t*) = c * error`` (module docstring: ``c = 1`` is the smallest exact
    start, and the one whose conditional law is the posterior given the estimate)."""
    error, c = float(error), float(c)
    if not (math.isfinite(error) and error > 0.0):
        raise ValueError(f"error must be a finite std > 0 (an exact estimate needs no solve), got {error}")
    if not (math.isfinite(c) and c >= 1.0):
        raise ValueError(f"c must be >= 1 (below, part of the estimate's error is never removed), got {c}")
    lam = -2.0 * math.log(c * error)  # logsnr at t*
    t = float(process.t_from_logsnr(torch.tensor(lam, dtype=torch.float64)))
    top = float(process.logsnr(torch.tensor(process.t_max, dtype=torch.float64)))
    if lam < top or not math.isfinite(t):
        ratio = math.exp(-0.5 * top)
        raise ValueError(f"c * error = {c * error:.6g} exceeds the process's largest sigma/alpha = {ratio:.6g} "
                         f"(at t_max = {process.t_max}): start from noise instead")
    return min(max(t, 0.0), float(process.t_max))


def measure_error(estimate: Tensor, reference: Tensor) -> float:
    """The estimate's error std per entry, ``sqrt(mean((estimate - reference)^2))`` over
    all rows and entries (``[B, ...]`` each): the ``s`` of ``t_start_for``."""
    if estimate.shape != reference.shape:
        raise ValueError(f"estimate {tuple(estimate.shape)} and reference {tuple(reference.shape)} differ in shape")
    return float((estimate.double() - reference.double()).square().mean().sqrt())


def warm_start(den: DenoiserBase, init: Tensor, error: float, c: float = 1.0, **sample_options) -> SampleResult:
    """``sample`` from the estimate ``init`` ``[B, ...]`` with error std ``error``: ``t* =
    t_start_for(process, error, c)``, noised with the error accounted for (``init_error``),
    so the output law is exact for a Gaussian error of that size (module docstring)."""
    t_start = t_start_for(den.process, error, c)
    return sample(den, init=init, t_start=t_start, init_error=float(error), **sample_options)


def shift_estimate(x: Tensor, stride: int, pad: str | int | Callable = "edge") -> Tensor:
    """``x`` ``[B, ..., L]`` shifted ``stride`` positions left along the last axis, the
    ``stride`` new positions filled by ``pad``: ``"edge"`` (the last value repeated),
    ``"zero"``, an int ``p`` (the value ``p`` positions earlier: a period) or a callable
    ``pad(kept [B, ..., L - stride], stride) -> [B, ..., stride]``."""
    L = x.shape[-1]
    if not 0 < int(stride) < L:
        raise ValueError(f"stride must be in [1, {L - 1}] for sequences of length {L}, got {stride}")
    stride = int(stride)
    kept = x[..., stride:]  # [B, ..., L - stride]
    if callable(pad):
        new = pad(kept, stride)
    elif pad == "edge":
        new = kept[..., -1:].expand(*kept.shape[:-1], stride)
    elif pad == "zero":
        new = torch.zeros_like(kept[..., :stride])
    elif isinstance(pad, int) and not isinstance(pad, bool):
        if not 1 <= pad <= L - stride:
            raise ValueError(f"a periodic pad needs 1 <= period <= {L - stride}, got {pad}")
        seq = kept
        for _ in range(stride):  # x[n] = x[n - period], one position at a time
            seq = torch.cat([seq, seq[..., -pad].unsqueeze(-1)], dim=-1)
        new = seq[..., L - stride:]
    else:
        raise ValueError(f"unknown pad {pad!r}; valid: {', '.join(PADS)}, an int period or a callable")
    expected = tuple(kept.shape[:-1]) + (stride,)
    if tuple(new.shape) != expected:
        raise ValueError(f"pad returned shape {tuple(new.shape)}, expected {expected}")
    return torch.cat([kept, new.to(kept.dtype)], dim=-1)


@dataclass
class ChunkedResult:
    """``sequence``: ``[B, ..., L + (n - 1) stride]`` (the first chunk, then each later
    chunk's last ``stride`` positions); ``chunks``: the ``n`` chunks ``[B, ..., L]``;
    ``nfe``: network calls in all; ``t_start``: the warm chunks' start time."""

    sequence: Tensor
    chunks: list[Tensor]
    nfe: int
    t_start: float


def chunked(den: DenoiserBase, shape, n_chunks: int, stride: int, t_start: float, pad="edge",
            init_error: float = 0.0, first: Tensor | None = None, seed: int | None = 0,
            **sample_options) -> ChunkedResult:
    """A sequence longer than the model's window, chunk by chunk (Real-Time Iteration):
    chunk 0 is a full solve (or ``first`` ``[B, ..., L]``), chunk ``j`` starts at
    ``t_start`` from chunk ``j - 1`` shifted by ``stride`` (``shift_estimate`` with ``pad``),
    each chunk with its own streams ``stream_seed(seed, j)``. ``shape``: one chunk's
    ``[B, ..., L]``; ``sample_options``: ``solver``, ``steps``, ``ts``, ... for every chunk."""
    if int(n_chunks) < 1:
        raise ValueError(f"n_chunks must be >= 1, got {n_chunks}")
    seeds = [None if seed is None else stream_seed(seed, j) for j in range(int(n_chunks))]
    nfe0 = den.nfe
    if first is None:
        first = sample(den, shape=shape, seed=seeds[0], **sample_options).x
    elif tuple(first.shape) != tuple(shape):
        raise ValueError(f"first has shape {tuple(first.shape)} but shape={tuple(shape)}")
    chunks = [first]
    for j in range(1, int(n_chunks)):
        init = shift_estimate(chunks[-1], stride, pad)
        chunks.append(sample(den, init=init, t_start=t_start, init_error=init_error, seed=seeds[j],
                             **sample_options).x)
    seq = torch.cat([chunks[0]] + [ch[..., -int(stride):] for ch in chunks[1:]], dim=-1)
    return ChunkedResult(seq, chunks, den.nfe - nfe0, float(t_start))
