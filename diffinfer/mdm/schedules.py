"""The masked (absorbing-state) forward process and its schedules.

A token is still clean at time ``t`` with probability ``alpha(t)``; ``t = 0`` is data
(``alpha = 1``) and ``t = 1`` is noise (every token masked), as in docs/architecture.md.
Austin et al. 2021 (D3PM, absorbing state); Sahoo et al. 2024 (MDLM) and Ou et al. 2024 (RADD)
use the log-linear schedule; Chang et al. 2022 (MaskGIT) the cosine one.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..registry import Registry
from ..rng import SampleRNG


class MaskSchedule:
    """``alpha(t)``: probability that a token is unmasked at time ``t`` in ``[0, 1]``."""

    name = "base"

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def masked_fraction(self, t) -> Tensor:
        return 1 - self.alpha(torch.as_tensor(t, dtype=torch.float64))

    def revealed_fraction(self, t) -> Tensor:
        """Share of the tokens masked at ``t = 1`` that are revealed by time ``t``,
        ``(alpha(t) - alpha(1)) / (alpha(0) - alpha(1))`` (1 at ``t = 0``)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        a0, a1 = self.alpha(torch.zeros((), dtype=torch.float64)), self.alpha(torch.ones((), dtype=torch.float64))
        return (self.alpha(t) - a1) / (a0 - a1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearSchedule(MaskSchedule):
    """``alpha(t) = 1 - t`` (LLaDA, Nie et al. 2025): equal numbers of tokens per step."""

    name = "linear"

    def alpha(self, t):
        return 1 - t


class CosineSchedule(MaskSchedule):
    """``alpha(t) = 1 - cos(pi (1 - t) / 2)`` (MaskGIT, Chang et al. 2022; the cosine schedule of
    Shi et al. 2024, MD4): decoding from ``t = 1`` over ``s`` of ``S`` uniform steps, the masked
    fraction is ``cos(pi s / (2 S))``, so few tokens are revealed first and many last."""

    name = "cosine"

    def alpha(self, t):
        return 1 - torch.cos(math.pi / 2 * (1 - t))


class LogLinearSchedule(MaskSchedule):
    """MDLM / RADD: total noise ``sigma(t) = -log(1 - (1 - eps) t)``, so
    ``alpha(t) = exp(-sigma(t)) = 1 - (1 - eps) t``."""

    name = "loglinear"

    def __init__(self, eps: float = 1e-3):
        self.eps = eps

    def sigma(self, t):
        return -torch.log1p(-(1 - self.eps) * t)

    def alpha(self, t):
        return torch.exp(-self.sigma(t))


SCHEDULES = Registry("mask schedule", {"linear": LinearSchedule, "cosine": CosineSchedule,
                                      "loglinear": LogLinearSchedule})


def get_schedule(schedule) -> MaskSchedule:
    """A ``MaskSchedule`` from itself or its name (``linear``, ``cosine``, ``loglinear``)."""
    if isinstance(schedule, MaskSchedule):
        return schedule
    return SCHEDULES.factory(schedule)()


def _grid_time(step: Tensor, steps: Tensor) -> Tensor:
    """``t_s = 1 - s / steps`` on the uniform time grid, clamped to ``[0, 1]`` (float64)."""
    return (1 - step.double() / steps.double()).clamp(0, 1)


def revealed_counts(n_masked: Tensor, step: Tensor, steps: Tensor, schedule="linear") -> Tensor:
    """How many of ``n_masked`` tokens (masked at ``t = 1``) are revealed by ``step`` of ``steps``
    on the uniform time grid (long; the arguments broadcast against each other).

    With ``n_masked >= steps`` every step reveals at least one token: one token per step, and
    the other ``n_masked - steps`` by the schedule, ``step + round((n_masked - steps) *
    revealed_fraction(t_step))`` (rounded half up), so no step is a model call that commits
    nothing. (For the linear schedule this equals ``round(n_masked * step / steps)``, LLaDA's
    equal split.) With fewer tokens than steps: ``round(n_masked * revealed_fraction(t_step))``."""
    n, step, steps = torch.broadcast_tensors(torch.as_tensor(n_masked), torch.as_tensor(step), torch.as_tensor(steps))
    step = torch.minimum(step, steps).clamp_min(0)
    frac = get_schedule(schedule).revealed_fraction(_grid_time(step, steps))
    spread = step + torch.floor((n - steps).double() * frac + 0.5).long()
    plain = torch.floor(n.double() * frac + 0.5).long()
    return torch.where(n >= steps, spread, plain)


def reveal_probabilities(step: Tensor, steps: Tensor, schedule="linear") -> Tensor:
    """MDLM / RADD ancestral step ``t_s -> t_{s+1}``: a masked token is revealed with probability
    ``(alpha(t_{s+1}) - alpha(t_s)) / (1 - alpha(t_s))``, 1 at the last step (``s >= steps - 1``);
    ``step`` and ``steps`` broadcast (float64)."""
    sched = get_schedule(schedule)
    a_s, a_n = sched.alpha(_grid_time(step, steps)), sched.alpha(_grid_time(step + 1, steps))
    p = ((a_n - a_s) / (1 - a_s).clamp_min(1e-12)).clamp(0, 1)
    return torch.where(step + 1 >= steps, torch.ones_like(p), p)


def transfer_counts(n_masked: Tensor, steps: int, schedule="linear") -> Tensor:
    """How many of ``n_masked`` ``[B]`` tokens to reveal at each of ``steps`` steps on the
    uniform time grid ``t_s = 1 - s / steps``: ``[B, steps]``, each row summing to its count,
    the differences of ``revealed_counts`` (so every step reveals at least one token when the
    count is at least ``steps``). With the linear schedule this is LLaDA's equal split (remainder
    spread by rounding); with the cosine one the masked fraction follows ``cos(pi s / (2 steps))``:
    few tokens first, more later."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    s = torch.arange(steps + 1)  # [S+1]
    cum = revealed_counts(n_masked[:, None], s[None, :], torch.tensor(steps), schedule)  # [B, S+1]
    cum[:, -1] = n_masked
    return cum.diff(dim=1).clamp_min(0)


def reveal_probability(step: int, steps: int, schedule="linear") -> float:
    """``reveal_probabilities`` for one ``step`` of ``steps``."""
    return float(reveal_probabilities(torch.tensor(step), torch.tensor(steps), schedule))


def forward_mask(tokens: Tensor, t, mask_id: int, schedule="linear", rng: SampleRNG | None = None,
                 frozen: Tensor | None = None) -> Tensor:
    """Mask each token of ``tokens`` ``[B, L]`` independently with probability
    ``1 - alpha(t)`` (``t`` a float or ``[B]``); ``frozen`` ``[B, L]`` positions are never masked.
    Row ``b`` draws from its own stream of ``rng`` (default: a fresh ``SampleRNG`` seed 0)."""
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [B, L], got shape {tuple(tokens.shape)}")
    B, L = tokens.shape
    t = torch.as_tensor(t, dtype=torch.float64).expand(B)  # [B]
    if ((t < 0) | (t > 1)).any() or torch.isnan(t).any():
        raise ValueError("t must lie in [0, 1]")
    rng = rng if rng is not None else SampleRNG.from_seed(0, batch=B)
    u = rng.rand((L,), dtype=torch.float64)  # [B, L]
    mask = u < get_schedule(schedule).masked_fraction(t)[:, None]
    if frozen is not None:
        mask &= ~frozen
    return torch.where(mask, torch.full_like(tokens, mask_id), tokens)
