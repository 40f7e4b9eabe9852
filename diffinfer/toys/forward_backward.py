"""Scaled forward-backward recursions over a Markov chain's states (Rabiner 1989, "A
tutorial on hidden Markov models", section III.A): the one implementation behind the
Markov-chain and hidden-Markov oracles and the hidden-Markov posteriors. ``evidence``
``[B, L, S]`` holds ``P(observation_i | state_i)`` (1 where nothing is observed)."""
from __future__ import annotations

import torch
from torch import Tensor


def forward(initial: Tensor, transition: Tensor, evidence: Tensor, strict: bool = True,
            error: str = "the unmasked tokens have probability zero under the model") -> tuple[Tensor, Tensor]:
    """Filtered messages ``P(state_i | observations_<=i)`` ``[B, L, S]`` and the log
    evidence ``log P(observations)`` ``[B]``. Evidence of probability zero raises
    ``ValueError(error)`` (``strict``) or gives ``-inf``."""
    B, L, S = evidence.shape
    fwd = torch.empty(B, L, S, dtype=torch.float64)
    log_z = torch.zeros(B, dtype=torch.float64)
    f = initial.expand(B, S) * evidence[:, 0]
    for i in range(L):
        if i > 0:
            f = (f @ transition) * evidence[:, i]
        z = f.sum(-1, keepdim=True)  # [B, 1]
        if strict and (z <= 0).any():
            raise ValueError(error)
        f = f / torch.where(z > 0, z, torch.ones_like(z))
        log_z = log_z + torch.log(z[:, 0])
        fwd[:, i] = f
    return fwd, log_z


def backward(transition: Tensor, evidence: Tensor) -> Tensor:
    """Messages ``P(observations_>i | state_i)`` ``[B, L, S]``, normalised per position."""
    B, L, S = evidence.shape
    bwd = torch.empty(B, L, S, dtype=torch.float64)
    b = torch.ones(B, S, dtype=torch.float64)
    bwd[:, L - 1] = b
    for i in range(L - 2, -1, -1):
        b = (evidence[:, i + 1] * b) @ transition.T
        b = b / b.sum(-1, keepdim=True)
        bwd[:, i] = b
    return bwd


def smoothed(initial: Tensor, transition: Tensor, evidence: Tensor,
             error: str = "the unmasked tokens have probability zero under the model") -> Tensor:
    """``P(state_i | all observations)`` ``[B, L, S]`` (``error`` as in ``forward``)."""
    fwd, _ = forward(initial, transition, evidence, error=error)
    post = fwd * backward(transition, evidence)
    return post / post.sum(-1, keepdim=True)
